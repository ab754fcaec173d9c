import { z } from 'zod';

/**
 * JSON a client sends that is stored as is in MongoDB (run metadata, input messages, approval
 * args, agent definitions). MongoDB (and FerretDB more strictly) refuses field names that start
 * with `$` or contain `.` or NUL, FerretDB also an array directly inside an array, and nesting is
 * bounded: such a value is refused at the API with 400 naming its path, never met at commit time
 * (a refused write after the conversation lock was a 500 that held the lock).
 */
export const storedJsonLimits = {
  /**
   * Levels of arrays and objects inside one stored value. The OpenAPI document states the bound
   * with one schema per level, and a schema-driven fuzzer's work grows steeply with it: 8 keeps
   * `npm test`'s schemathesis run short while leaving room for real arguments and tool schemas.
   */
  maxDepth: 8,
  maxKeyLength: 256,
} as const;

/** A field name MongoDB stores: not empty, no leading `$`, no `.`, no NUL. */
export const storedKeySchema = z
  .string()
  .min(1)
  .max(storedJsonLimits.maxKeyLength)
  .regex(/^[^$.\u0000][^.\u0000]*$/, 'a key must not be empty, start with $, or contain . or NUL');

/** The scalars, as options of a union (not a union of their own: see `buildLevels`). */
const scalarOptions = () => [z.string(), z.number(), z.boolean(), z.null()] as const;

/**
 * `levels[n]`: a JSON value whose keys pass `key`, at most n levels of arrays and objects deep,
 * and no array directly inside an array (FerretDB refuses nested arrays). One schema per level
 * (not a recursive one), so that the bound holds and the generated JSON Schema states it too
 * (each level has an `id`: the OpenAPI document holds it once, among its components). Level 0 is scalars only: an array or object
 * there is too deep.
 */
function buildLevels(key: z.ZodType<string>, name: string): z.ZodType<unknown>[] {
  const tooDeep = `nested more than ${storedJsonLimits.maxDepth} levels deep`;
  // Each level is named (`id`): the OpenAPI document holds it once among its components.
  const levels: z.ZodType<unknown>[] = [z.union(scalarOptions(), { error: tooDeep }).meta({ id: `${name}0` })];
  /** `elements[n]`: what an array at level n+1 holds: scalars and objects, never arrays. */
  const elements: z.ZodType<unknown>[] = [levels[0]!];
  // Flat unions, the scalars inlined: zod stops at the first option that passes, but a nested
  // union that fails as a whole (the scalars, for every object and array) builds and finalizes
  // an issue per option before the next option is tried. Every `llm.request` and `tool.request`
  // carries an agent's tool schemas and scripted arguments: 88 → 51 µs per workload request (issue 9).
  for (let depth = 1; depth <= storedJsonLimits.maxDepth; depth += 1) {
    const object = z.record(key, levels[depth - 1]!);
    elements.push(z.union([...scalarOptions(), object], { error: `an array inside an array cannot be stored, or ${tooDeep}` }).meta({ id: `${name}Element${depth}` }));
    levels.push(z.union([...scalarOptions(), z.array(elements[depth - 1]!), object]).meta({ id: `${name}${depth}` }));
  }
  return levels;
}

const checkedKeys = buildLevels(storedKeySchema, 'StoredJsonLevel');

/** Any JSON value MongoDB stores as is (see `storedJsonLimits`). */
export const storedJsonValueSchema: z.ZodType<unknown> = checkedKeys[storedJsonLimits.maxDepth]!;

/** A value inside a stored JSON object (one level less). */
export const storedJsonMemberSchema: z.ZodType<unknown> = checkedKeys[storedJsonLimits.maxDepth - 1]!;

/** A JSON object MongoDB stores as is (e.g. tool call args). */
export const storedJsonObjectSchema = z.record(storedKeySchema, storedJsonMemberSchema);

/**
 * JSON of an agent definition (a tool's `inputSchema`, a scripted step's `args`): any key but one
 * holding NUL (JSON Schema keywords such as `$ref`; the store escapes keys, `stored-keys.ts`), the
 * same depth bound and no array directly inside an array.
 */
// NUL is the one character BSON cannot carry in a key (found by schemathesis: a 500).
const anyKey = z.string().max(storedJsonLimits.maxKeyLength).regex(/^[^\u0000]*$/, 'a key must not contain NUL');
const escapedKeys = buildLevels(anyKey, 'DefinitionJsonLevel');
export const definitionJsonMemberSchema: z.ZodType<unknown> = escapedKeys[storedJsonLimits.maxDepth - 1]!;
export const definitionJsonObjectSchema = z.record(anyKey, definitionJsonMemberSchema);
