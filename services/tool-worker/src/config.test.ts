import { describe, expect, it } from 'vitest';
import { ConfigError } from '@abide/shared';
import { loadToolWorkerConfig } from './config.ts';

describe('tool-worker config', () => {
  it('parses the egress list and the tenant secrets directory', () => {
    const config = loadToolWorkerConfig({
      TOOL_EGRESS_ALLOW: 'api.example.com, *.example.org:443 ,127.0.0.1:*',
      TENANT_SECRETS_DIR: '/var/run/abide/tenant-secrets',
      WEATHER_TOKEN: 'tool-secret',
    });
    expect(config.TOOL_EGRESS_ALLOW).toEqual(['api.example.com', '*.example.org:443', '127.0.0.1:*']);
    expect(config.TENANT_SECRETS_DIR).toBe('/var/run/abide/tenant-secrets');
    expect(config).not.toHaveProperty('WEATHER_TOKEN');
  });

  it('refuses an invalid egress entry, naming the variable', () => {
    expect(() => loadToolWorkerConfig({ TOOL_EGRESS_ALLOW: 'https://api.example.com/' })).toThrow(ConfigError);
    expect(() => loadToolWorkerConfig({ TOOL_EGRESS_ALLOW: 'https://api.example.com/' })).toThrow(/TOOL_EGRESS_ALLOW/);
  });

  it('parses the MCP settings: stdio servers by id (JSON), pool bound and idle timeout', () => {
    const config = loadToolWorkerConfig({
      MCP_STDIO_SERVERS: '{"files":{"command":"/usr/bin/mcp-files","args":["--root","/data"]}}',
      MCP_MAX_CONNECTIONS: '8',
      MCP_IDLE_TIMEOUT: '90s',
    });
    expect(config.MCP_STDIO_SERVERS).toEqual({ files: { command: '/usr/bin/mcp-files', args: ['--root', '/data'], env: {} } });
    expect(config.MCP_MAX_CONNECTIONS).toBe(8);
    expect(config.MCP_IDLE_TIMEOUT).toBe(90_000);
    expect(loadToolWorkerConfig({}).MCP_STDIO_SERVERS).toEqual({});
    expect(() => loadToolWorkerConfig({ MCP_STDIO_SERVERS: 'files=/bin/sh' })).toThrow(/MCP_STDIO_SERVERS/);
    expect(() => loadToolWorkerConfig({ MCP_STDIO_SERVERS: '{"bad id":{"command":"x"}}' })).toThrow(/MCP_STDIO_SERVERS/);
  });
});
