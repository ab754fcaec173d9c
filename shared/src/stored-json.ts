import { z } from 'zod';

/**
 * JSON a client sends that is stored as is in MongoDB (run metadata, input messages, approval
 * args, agent definitions). MongoDB (and FerretDB more strictly) refuses field names that start
 * with `$` or contain `.` or NUL, and bounds nesting: such a value is refused at the API with 400
 * naming its path, never met at commit time (DESIGN §5: nothing a tenant sends may fail a write).
 */
export const storedJsonLimits = {
  /** Levels of arrays and objects inside one stored value. */
  maxDepth: 16,
  maxKeyLength: 256,
} as const;

/** A field name MongoDB stores: not empty, no leading `$`, no `.`, no NUL. */
export const storedKeySchema = z
  .string()
  .min(1)
  .max(storedJsonLimits.maxKeyLength)
  .regex(/^[^$.\u0000][^.\u0000]*$/, 'a key must not be empty, start with $, or contain . or NUL');

const scalarSchema = z.union([z.string(), z.number(), z.boolean(), z.null()]);

/**
 * `levels[n]`: a JSON value with stored keys, at most n levels of arrays and objects deep. One
 * schema per level (not a recursive one), so that the bound holds and the generated JSON Schema
 * states it too (`z.toJSONSchema` shares the levels as `$defs`). Level 0 is scalars only: an
 * array or object there is too deep.
 */
const levels: z.ZodType<unknown>[] = [z.union([z.string(), z.number(), z.boolean(), z.null()], { error: `nested more than ${storedJsonLimits.maxDepth} levels deep` })];
for (let depth = 1; depth <= storedJsonLimits.maxDepth; depth += 1) {
  const inner = levels[depth - 1]!;
  levels.push(z.union([scalarSchema, z.array(inner), z.record(storedKeySchema, inner)]));
}

/** Any JSON value MongoDB stores as is (see `storedJsonLimits`). */
export const storedJsonValueSchema: z.ZodType<unknown> = levels[storedJsonLimits.maxDepth]!;

/** A value inside a stored JSON object (one level less). */
export const storedJsonMemberSchema: z.ZodType<unknown> = levels[storedJsonLimits.maxDepth - 1]!;

/** A JSON object MongoDB stores as is (e.g. tool call args). */
export const storedJsonObjectSchema = z.record(storedKeySchema, storedJsonMemberSchema);
