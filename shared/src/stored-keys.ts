/**
 * Reversible escaping of object keys for MongoDB-compatible storage (issue 8, finding 15).
 *
 * A model's tool-call arguments, a tool's result, an agent's JSON Schema and run metadata are
 * free JSON written by a tenant, a model or a tool; FerretDB (and MongoDB for some operations)
 * rejects field names that start with `$` or contain `.`. Rather than refuse such values (a tool
 * may legitimately return `{"$set": 1, "a.b": 2}`, and the model must see exactly that), every
 * document Abide stores is written with its keys escaped and read back unescaped:
 * `%` → `%25`, `.` → `%2E`, a leading `$` → `%24`. Abide's own field names contain none of
 * these characters, so queries on them are unaffected.
 */

const needsEscape = /[%.]|^\$/;
const escaped = /%(25|2E|24)/g;
const unescapes: Record<string, string> = { '25': '%', '2E': '.', '24': '$' };

function escapeKey(key: string): string {
  if (!needsEscape.test(key)) return key;
  return key.replace(/%/g, '%25').replace(/\./g, '%2E').replace(/^\$/, '%24');
}

function unescapeKey(key: string): string {
  return key.includes('%') ? key.replace(escaped, (_match, code: string) => unescapes[code]!) : key;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (typeof value !== 'object' || value === null) return false;
  const prototype = Object.getPrototypeOf(value);
  return prototype === Object.prototype || prototype === null;
}

function mapKeys(value: unknown, map: (key: string) => string): unknown {
  if (Array.isArray(value)) return value.map((item) => mapKeys(item, map));
  // Dates, ObjectIds and other BSON values are stored as they are.
  if (!isPlainObject(value)) return value;
  const result: Record<string, unknown> = {};
  for (const [key, item] of Object.entries(value)) result[map(key)] = mapKeys(item, map);
  return result;
}

/** The document with every key escaped for storage. */
export function encodeStoredKeys<Value>(value: Value): Value {
  return mapKeys(value, escapeKey) as Value;
}

/** The document with every key as it was before `encodeStoredKeys`. */
export function decodeStoredKeys<Value>(value: Value): Value {
  return mapKeys(value, unescapeKey) as Value;
}
