import { hashJson } from '@abide/shared';
import { Ajv, type ValidateFunction } from 'ajv';

/** Compiled validators kept at once (keyed by the schema's hash); the cache is cleared when full. */
const maxCachedValidators = 256;

/**
 * Validates tool arguments against a tool's `inputSchema` (JSON Schema) with Ajv. Formats are
 * not validated (no format vocabulary is installed); unknown keywords are ignored.
 */
export function createToolArgsValidator() {
  const ajv = new Ajv({ strict: false, allErrors: true, validateFormats: false });
  const cache = new Map<string, ValidateFunction>();

  function compile(schema: Record<string, unknown>): ValidateFunction {
    const key = hashJson(schema);
    let validate = cache.get(key);
    if (!validate) {
      if (cache.size >= maxCachedValidators) cache.clear();
      validate = ajv.compile(schema);
      cache.set(key, validate);
    }
    return validate;
  }

  return {
    /** A message describing why `schema` cannot be compiled, or undefined when it can. */
    checkSchema(schema: Record<string, unknown>): string | undefined {
      try {
        compile(schema);
        return undefined;
      } catch (error) {
        return (error as Error).message;
      }
    },
    /** Problems with `args` under `schema` (empty when valid). Throws if the schema cannot be compiled. */
    validate(schema: Record<string, unknown>, args: unknown): string[] {
      const validate = compile(schema);
      if (validate(args)) return [];
      return (validate.errors ?? []).slice(0, 5).map((error) => `args${error.instancePath.replace(/\//g, '.')}: ${error.message ?? 'is invalid'}`);
    },
  };
}
export type ToolArgsValidator = ReturnType<typeof createToolArgsValidator>;
