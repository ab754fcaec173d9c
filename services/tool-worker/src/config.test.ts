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
});
