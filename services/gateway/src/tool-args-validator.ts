import { hashJson } from '@abide/shared';
import { Ajv, type CodeOptions, type Options, type ValidateFunction } from 'ajv';
import { RE2JS } from 're2js';

/**
 * Bounds on a tool's `inputSchema` (checked at `PUT /v1/agents`, before anything compiles it):
 * serialized size, nesting depth of objects and arrays, and the length of one `pattern`.
 */
export const toolSchemaLimits = {
  maxSchemaBytes: 65_536,
  maxSchemaDepth: 32,
  maxPatternChars: 1_024,
} as const;

export type ToolArgsValidatorOptions = {
  /** Compiled validators kept at once (all tenants together). @default 512 */
  maxEntries?: number;
  /** Approximate bytes the kept validators may hold (all tenants together). @default 64 MiB */
  maxBytes?: number;
};

/** The draft-07 meta-schema ids a tool schema may name in `$schema` (any other is refused). */
const draft07Ids = new Set(['http://json-schema.org/draft-07/schema#', 'http://json-schema.org/draft-07/schema']);

/** Memory an Ajv instance and its bookkeeping take besides the schema and the generated code (rough). */
const perInstanceBytes = 16_384;

/** Why a tool schema cannot be used; `path` is where inside the schema (`.properties.code.pattern`). */
export class ToolSchemaError extends Error {
  override readonly name = 'ToolSchemaError';
  readonly path: string;
  constructor(path: string, message: string) {
    super(message);
    this.path = path;
  }
}

/**
 * Compiles a JSON Schema `pattern` with RE2 (the re2js port): matching takes time linear in the
 * input, so a tenant's `^(a|a)+$` cannot stall the event loop the way a backtracking V8 RegExp
 * does. RE2 refuses lookaround and backreferences; such a pattern is refused at `PUT /v1/agents`.
 */
export function compileLinearPattern(pattern: string): { test(input: string): boolean; toString(): string } {
  const compiled = RE2JS.compile(RE2JS.translateRegExp(pattern));
  // Ajv keys compiled patterns by `toString()`: it must name the pattern, or two patterns would share one.
  const key = `re2:${pattern}`;
  return { test: (input) => compiled.test(input), toString: () => key };
}

const re2Engine: NonNullable<CodeOptions['regExp']> = Object.assign((pattern: string) => compileLinearPattern(pattern), { code: 'compileLinearPattern' });

/** Options of every Ajv instance that compiles a tenant schema: RE2 for patterns, no meta-schema, no remote refs. */
const tenantAjvOptions: Options = {
  strict: false,
  allErrors: true,
  validateFormats: false,
  // Checked once against the meta-schema by `metaAjv` (which never compiles a tenant schema).
  validateSchema: false,
  meta: false,
  code: { regExp: re2Engine },
};

/** Keywords whose value is one schema, a list of schemas, or a map of name → schema (draft-07 and 2019/2020 names). */
const schemaKeywords = ['additionalProperties', 'additionalItems', 'contains', 'propertyNames', 'not', 'if', 'then', 'else', 'unevaluatedProperties', 'unevaluatedItems', 'items'];
const schemaListKeywords = ['allOf', 'anyOf', 'oneOf', 'prefixItems', 'items'];
const schemaMapKeywords = ['properties', 'definitions', '$defs', 'dependentSchemas', 'dependencies'];

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/** Nesting depth of objects and arrays (stops counting past `limit`). */
function depthOf(value: unknown, limit: number, depth = 0): number {
  if (depth > limit || typeof value !== 'object' || value === null) return depth;
  let deepest = depth + 1;
  for (const child of Object.values(value)) deepest = Math.max(deepest, depthOf(child, limit, depth + 1));
  return deepest;
}

/**
 * The checks Ajv does not do for us, walked over the schema positions only (so data in `enum`
 * or `const` is never mistaken for a keyword): every `pattern` and `patternProperties` key must
 * compile with RE2, and every `$ref` must be local (`#…`).
 */
function checkSchemaPositions(schema: unknown, path: string): void {
  if (!isObject(schema)) return;
  const ref = schema.$ref;
  if (ref !== undefined && (typeof ref !== 'string' || !ref.startsWith('#'))) {
    throw new ToolSchemaError(`${path}.$ref`, 'only local references (starting with #) are allowed');
  }
  const checkPattern = (pattern: string, at: string) => {
    if (pattern.length > toolSchemaLimits.maxPatternChars) throw new ToolSchemaError(at, `pattern longer than ${toolSchemaLimits.maxPatternChars} characters`);
    try {
      compileLinearPattern(pattern);
    } catch (error) {
      // Converted: the tenant learns which pattern and why (RE2 has no lookaround or backreferences).
      throw new ToolSchemaError(at, `pattern ${JSON.stringify(pattern)} is not supported: ${(error as Error).message} (patterns run on RE2: no lookaround, no backreferences)`);
    }
  };
  if (typeof schema.pattern === 'string') checkPattern(schema.pattern, `${path}.pattern`);
  if (isObject(schema.patternProperties)) {
    for (const [pattern, child] of Object.entries(schema.patternProperties)) {
      checkPattern(pattern, `${path}.patternProperties[${JSON.stringify(pattern)}]`);
      checkSchemaPositions(child, `${path}.patternProperties[${JSON.stringify(pattern)}]`);
    }
  }
  for (const keyword of schemaKeywords) if (isObject(schema[keyword])) checkSchemaPositions(schema[keyword], `${path}.${keyword}`);
  for (const keyword of schemaListKeywords) {
    const list = schema[keyword];
    if (Array.isArray(list)) list.forEach((child, index) => checkSchemaPositions(child, `${path}.${keyword}.${index}`));
  }
  for (const keyword of schemaMapKeywords) {
    const map = schema[keyword];
    if (isObject(map)) for (const [name, child] of Object.entries(map)) checkSchemaPositions(child, `${path}.${keyword}.${name}`);
  }
}

type CacheEntry = { validate: ValidateFunction; bytes: number };

/**
 * Validates tool arguments against a tool's `inputSchema` (JSON Schema draft-07) with Ajv, per
 * tenant and with bounded memory (DESIGN §8: agent definitions are attacker input):
 * - every schema is compiled in an Ajv instance of its own that no other schema touches, so an
 *   `$id` never collides and a `$ref` can only reach its own schema (and only `#…` is allowed);
 * - `pattern` and `patternProperties` run on RE2 (linear time), never on V8's backtracking engine;
 * - compiled validators are kept in one LRU keyed by (tenant, schema hash), bounded by count and by
 *   approximate bytes; an evicted validator is recompiled on its next use.
 * Formats are not validated (no format vocabulary is installed); unknown keywords are ignored.
 */
export function createToolArgsValidator(options: ToolArgsValidatorOptions = {}) {
  const maxEntries = options.maxEntries ?? 512;
  const maxBytes = options.maxBytes ?? 64 * 1_048_576;
  // Holds only the draft-07 meta-schema: tenant schemas are its data, never compiled here.
  const metaAjv = new Ajv({ strict: false, allErrors: true, validateFormats: false });
  const cache = new Map<string, CacheEntry>();
  let cachedBytes = 0;

  /** Bounds, meta-schema and the positions Ajv does not check; throws a `ToolSchemaError`. */
  function checkStatically(schema: Record<string, unknown>, serialized: string): void {
    if (Buffer.byteLength(serialized) > toolSchemaLimits.maxSchemaBytes) throw new ToolSchemaError('', `larger than ${toolSchemaLimits.maxSchemaBytes} bytes`);
    if (depthOf(schema, toolSchemaLimits.maxSchemaDepth) > toolSchemaLimits.maxSchemaDepth) throw new ToolSchemaError('', `nested deeper than ${toolSchemaLimits.maxSchemaDepth} levels`);
    if (schema.$schema !== undefined && (typeof schema.$schema !== 'string' || !draft07Ids.has(schema.$schema))) {
      throw new ToolSchemaError('.$schema', 'only JSON Schema draft-07 is supported');
    }
    checkSchemaPositions(schema, '');
    if (!metaAjv.validateSchema(schema)) throw new ToolSchemaError('', `not a valid JSON Schema: ${metaAjv.errorsText(metaAjv.errors, { dataVar: 'schema' })}`);
  }

  function evict(): void {
    while (cache.size > maxEntries || (cachedBytes > maxBytes && cache.size > 1)) {
      const oldest = cache.keys().next().value as string;
      cachedBytes -= cache.get(oldest)!.bytes;
      cache.delete(oldest);
    }
  }

  function compile(tenantId: string, schema: Record<string, unknown>): ValidateFunction {
    const serialized = JSON.stringify(schema);
    const key = `${tenantId}\u0000${hashJson(schema)}`;
    const cached = cache.get(key);
    if (cached) {
      // Most recently used last: the map's insertion order is the LRU order.
      cache.delete(key);
      cache.set(key, cached);
      return cached.validate;
    }
    checkStatically(schema, serialized);
    let validate: ValidateFunction;
    try {
      validate = new Ajv(tenantAjvOptions).compile(schema);
    } catch (error) {
      // Converted: Ajv's message (an unresolvable `#` ref, a bad keyword value) names the problem.
      throw new ToolSchemaError('', (error as Error).message);
    }
    const bytes = perInstanceBytes + 2 * (serialized.length + validate.toString().length);
    cache.set(key, { validate, bytes });
    cachedBytes += bytes;
    evict();
    return validate;
  }

  return {
    /** A `ToolSchemaError` describing why `schema` cannot be used, or undefined when it can. */
    checkSchema(tenantId: string, schema: Record<string, unknown>): ToolSchemaError | undefined {
      try {
        compile(tenantId, schema);
        return undefined;
      } catch (error) {
        if (error instanceof ToolSchemaError) return error;
        throw error;
      }
    },
    /** Problems with `args` under `schema` (empty when valid). Throws a `ToolSchemaError` if the schema cannot be used. */
    validate(tenantId: string, schema: Record<string, unknown>, args: unknown): string[] {
      const validate = compile(tenantId, schema);
      if (validate(args)) return [];
      return (validate.errors ?? []).slice(0, 5).map((error) => `args${error.instancePath.replace(/\//g, '.')}: ${error.message ?? 'is invalid'}`);
    },
    /** What the cache holds (for tests and metrics). */
    stats(): { entries: number; bytes: number } {
      return { entries: cache.size, bytes: cachedBytes };
    },
  };
}
export type ToolArgsValidator = ReturnType<typeof createToolArgsValidator>;
