import { describe, expect, it } from 'vitest';
import { ConfigError } from '@abide/shared';
import { loadToolWorkerConfig } from './config.ts';

describe('tool-worker config', () => {
  it('parses the egress list and keeps the worker’s own variables out of the tools’ environment', () => {
    const { config, toolEnvironment } = loadToolWorkerConfig({
      TOOL_EGRESS_ALLOW: 'api.example.com, *.example.org:443 ,127.0.0.1',
      NATS_PASSWORD: 'nats-secret',
      WEATHER_TOKEN: 'tool-secret',
    });
    expect(config.TOOL_EGRESS_ALLOW).toEqual(['api.example.com', '*.example.org:443', '127.0.0.1']);
    expect(toolEnvironment.WEATHER_TOKEN).toBe('tool-secret');
    expect(toolEnvironment.NATS_PASSWORD).toBeUndefined();
    expect(toolEnvironment.TOOL_EGRESS_ALLOW).toBeUndefined();
  });

  it('refuses an invalid egress entry, naming the variable', () => {
    expect(() => loadToolWorkerConfig({ TOOL_EGRESS_ALLOW: 'https://api.example.com/' })).toThrow(ConfigError);
    expect(() => loadToolWorkerConfig({ TOOL_EGRESS_ALLOW: 'https://api.example.com/' })).toThrow(/TOOL_EGRESS_ALLOW/);
  });
});
