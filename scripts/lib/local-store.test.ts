import { describe, expect, it } from 'vitest';
import { localStoreFromEnv } from './servers.ts';

describe('ABIDE_LOCAL_STORE', () => {
  it('defaults to FerretDB on SQLite, and names PostgreSQL as the other store', () => {
    expect(localStoreFromEnv({})).toBe('sqlite');
    expect(localStoreFromEnv({ ABIDE_LOCAL_STORE: '  ' })).toBe('sqlite');
    expect(localStoreFromEnv({ ABIDE_LOCAL_STORE: 'postgres' })).toBe('postgres');
    expect(localStoreFromEnv({ ABIDE_LOCAL_STORE: ' sqlite ' })).toBe('sqlite');
  });

  it('refuses anything else instead of silently starting the default', () => {
    expect(() => localStoreFromEnv({ ABIDE_LOCAL_STORE: 'postgresql' })).toThrow(/ABIDE_LOCAL_STORE must be one of sqlite, postgres, got "postgresql"/);
    expect(() => localStoreFromEnv({ ABIDE_LOCAL_STORE: 'mongod' })).toThrow(/must be one of/);
  });
});
