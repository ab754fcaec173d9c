import { ConfigError } from '@abide/shared';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadGatewayConfig } from './config.ts';

const keyOne = 'key-one-0123456789abcdef';
const keyTwo = 'key-two-0123456789abcdef';

describe('loadGatewayConfig', () => {
  it('parses keys and fills defaults', () => {
    const config = loadGatewayConfig({ ABIDE_API_KEYS: `${keyOne}:t1, ${keyTwo}:t2` });
    expect(config.apiKeys.get(keyOne)).toBe('t1');
    expect(config.apiKeys.get(keyTwo)).toBe('t2');
    expect(config.GATEWAY_PORT).toBe(8080);
    expect(config.MAX_BODY_BYTES).toBe(1_048_576);
    expect(config.REQUEST_TIMEOUT).toBe(30_000);
    expect(config.HEADERS_TIMEOUT).toBe(10_000);
    expect(config.KEEP_ALIVE_TIMEOUT).toBe(72_000);
    expect(Object.isFrozen(config)).toBe(true);
  });

  it('names the variable of a bad value', () => {
    expect(() => loadGatewayConfig({ ABIDE_API_KEYS: `${keyOne}:t1`, GATEWAY_PORT: 'eighty' })).toThrow(/GATEWAY_PORT/);
    expect(() => loadGatewayConfig({})).toThrow(ConfigError);
    expect(() => loadGatewayConfig({})).toThrow(/ABIDE_API_KEYS/);
    expect(() => loadGatewayConfig({ ABIDE_API_KEYS_FILE: '/nonexistent/keys' })).toThrow(/ABIDE_API_KEYS_FILE/);
  });

  it('refuses keys shorter than 16 characters, naming the entry by position and printing no part of it', () => {
    const short = 'abcd';
    let error: unknown;
    try {
      loadGatewayConfig({ ABIDE_API_KEYS: `${keyOne}:t1,${short}:t2` });
    } catch (caught) {
      error = caught;
    }
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as Error).message).toMatch(/ABIDE_API_KEYS: entry 2 must be key:tenant \(key at least 16 characters/);
    expect((error as Error).message).not.toContain(short);
    expect(() => loadGatewayConfig({ ABIDE_API_KEYS: '0123456789abcde:t1' })).toThrow(/entry 1/);
  });

  it('names a bad line of the keys file without its text', () => {
    const file = join(mkdtempSync(join(tmpdir(), 'abide-keys-')), 'keys');
    const secretish = 'very-secret-key-0123456789';
    writeFileSync(file, `# keys\n${keyOne}:t1\n${secretish}:bad tenant\n`);
    let message = '';
    try {
      loadGatewayConfig({ ABIDE_API_KEYS_FILE: file });
    } catch (error) {
      message = (error as Error).message;
    }
    expect(message).toMatch(/ABIDE_API_KEYS_FILE: entry 2 must be key:tenant/);
    expect(message).not.toContain(secretish.slice(0, 4));
  });
});
