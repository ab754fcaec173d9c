import { describe, expect, it } from 'vitest';
import { decodeStoredKeys, encodeStoredKeys } from './stored-keys.ts';

function storedKeys(value: unknown): string[] {
  if (Array.isArray(value)) return value.flatMap(storedKeys);
  if (typeof value !== 'object' || value === null || value instanceof Date) return [];
  return Object.entries(value).flatMap(([key, item]) => [key, ...storedKeys(item)]);
}

describe('stored keys (finding 15)', () => {
  const hostile = {
    result: { $set: 1, 'a.b': 2, nested: [{ $where: 'x', '..': { '$': true } }] },
    literal: { '%2E': 'percent', '%24x': 'y', 'a$b': 3, '100%': 4 },
    at: new Date('2026-11-29T00:00:00.000Z'),
  };

  it('stores no key that starts with $ or contains a dot', () => {
    const encoded = encodeStoredKeys(hostile);
    for (const key of storedKeys(encoded)) {
      expect(key.startsWith('$'), key).toBe(false);
      expect(key.includes('.'), key).toBe(false);
    }
    expect(encoded.at).toBeInstanceOf(Date);
  });

  it('reads back exactly what was written, literal escape sequences included', () => {
    expect(decodeStoredKeys(encodeStoredKeys(hostile))).toEqual(hostile);
  });

  it('wraps arrays inside arrays (FerretDB cannot store them) and NUL in keys, and reads them back exactly', () => {
    const value = { matrix: [[1, 2], [3, [4, [5]]], []], mixed: [{ '%a': [1] }, [{ 'k\u0000': [[true]] }]], 'n\u0000ul': 1 };
    const encoded = encodeStoredKeys(value) as unknown as { matrix: unknown[] };
    const hasInnerArray = (item: unknown): boolean =>
      Array.isArray(item) ? item.some((inner) => Array.isArray(inner) || hasInnerArray(inner)) : typeof item === 'object' && item !== null && Object.values(item).some(hasInnerArray);
    expect(hasInnerArray(encoded)).toBe(false);
    for (const key of storedKeys(encoded)) expect(key.includes('\u0000'), key).toBe(false);
    expect(decodeStoredKeys(encoded)).toEqual(value);
  });

  it('leaves ordinary keys alone (queries on Abide fields are unaffected)', () => {
    const plain = { _id: 'run_1:2', runId: 'run_1', state: { status: 'running', nextDeadlineAt: null } };
    expect(encodeStoredKeys(plain)).toEqual(plain);
  });
});
