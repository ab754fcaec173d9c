/**
 * Reversible escaping of object keys for MongoDB-compatible storage (issue 8, finding 15).
 *
 * A model's tool-call arguments, a tool's result, an agent's JSON Schema and run metadata are
 * free JSON written by a tenant, a model or a tool; FerretDB (and MongoDB for some operations)
 * rejects field names that start with `$` or contain `.`. Rather than refuse such values (a tool
 * may legitimately return `{"$set": 1, "a.b": 2}`, and the model must see exactly that), every
 * document Abide stores is written with its keys escaped and read back unescaped:
 * `%` → `%25`, `.` → `%2E`, a leading `$` → `%24`, NUL → `%00`. Abide's own field names contain
 * none of these characters, so queries on them are unaffected.
 *
 * FerretDB also cannot store an array directly inside an array (`[[1, 2]]`, common in tool
 * results): such an inner array is stored wrapped as `{ "%a": [...] }` and unwrapped on read.
 * `%a` can never be a tenant's key once escaped (its `%` would read `%25`), so the wrapper is
 * unambiguous.
 */

const needsEscape = /[%.\0]|^\$/;
const escaped = /%(25|2E|24|00)/g;
const unescapes: Record<string, string> = { '25': '%', '2E': '.', '24': '$', '00': '\0' };
const innerArrayKey = '%a';

function escapeKey(key: string): string {
  if (!needsEscape.test(key)) return key;
  return key.replace(/%/g, '%25').replace(/\./g, '%2E').replace(/\0/g, '%00').replace(/^\$/, '%24');
}

function unescapeKey(key: string): string {
  return key.includes('%') ? key.replace(escaped, (_match, code: string) => unescapes[code]!) : key;
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (typeof value !== 'object' || value === null) return false;
  const prototype = Object.getPrototypeOf(value);
  return prototype === Object.prototype || prototype === null;
}

function isWrappedInnerArray(value: unknown): value is { [innerArrayKey]: unknown[] } {
  if (!isPlainObject(value)) return false;
  const keys = Object.keys(value);
  return keys.length === 1 && keys[0] === innerArrayKey && Array.isArray(value[innerArrayKey]);
}

function mapKeys(value: unknown, map: (key: string) => string, encoding: boolean): unknown {
  if (Array.isArray(value)) {
    return value.map((item) => {
      if (encoding && Array.isArray(item)) return { [innerArrayKey]: mapKeys(item, map, encoding) };
      if (!encoding && isWrappedInnerArray(item)) return mapKeys(item[innerArrayKey], map, encoding);
      return mapKeys(item, map, encoding);
    });
  }
  // Dates, ObjectIds and other BSON values are stored as they are.
  if (!isPlainObject(value)) return value;
  const result: Record<string, unknown> = {};
  for (const [key, item] of Object.entries(value)) result[map(key)] = mapKeys(item, map, encoding);
  return result;
}

/** The document with every key escaped (and every array inside an array wrapped) for storage. */
export function encodeStoredKeys<Value>(value: Value): Value {
  return mapKeys(value, escapeKey, true) as Value;
}

/** The document exactly as it was before `encodeStoredKeys`. */
export function decodeStoredKeys<Value>(value: Value): Value {
  return mapKeys(value, unescapeKey, false) as Value;
}
