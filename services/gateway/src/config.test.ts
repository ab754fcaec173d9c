import { ConfigError } from '@abide/shared';
import { describe, expect, it } from 'vitest';
import { loadGatewayConfig } from './config.ts';

describe('loadGatewayConfig', () => {
  it('parses keys and fills defaults', () => {
    const config = loadGatewayConfig({ ABIDE_API_KEYS: 'key-one:t1, key-two:t2' });
    expect(config.apiKeys.get('key-one')).toBe('t1');
    expect(config.apiKeys.get('key-two')).toBe('t2');
    expect(config.GATEWAY_PORT).toBe(8080);
    expect(config.MAX_BODY_BYTES).toBe(1_048_576);
    expect(Object.isFrozen(config)).toBe(true);
  });

  it('names the variable of a bad value', () => {
    expect(() => loadGatewayConfig({ ABIDE_API_KEYS: 'key-one:t1', GATEWAY_PORT: 'eighty' })).toThrow(/GATEWAY_PORT/);
    expect(() => loadGatewayConfig({})).toThrow(ConfigError);
    expect(() => loadGatewayConfig({})).toThrow(/ABIDE_API_KEYS/);
    expect(() => loadGatewayConfig({ ABIDE_API_KEYS_FILE: '/nonexistent/keys' })).toThrow(/ABIDE_API_KEYS_FILE/);
  });
});
