/**
 * An MCP tool's `inputSchema` made storable (issue 13). Agents live in MongoDB, and FerretDB (like
 * older MongoDB) refuses field names that start with `$` or contain `.`; JSON Schemas use `$schema`,
 * `$defs` and `$ref` freely (Pydantic and zod generators both do). So, keeping the meaning:
 *
 * - `$schema`, `$id`, `$comment` are annotations: dropped;
 * - local references (`#/$defs/<name>`, `#/definitions/<name>`) are inlined and the root's
 *   `$defs` / `definitions` dropped; a recursive reference cannot be inlined and is refused;
 * - any other `$` key (a remote `$ref`, `$anchor`, `$dynamicRef`…) or a name with `.` is refused.
 *
 * The result is bounded (`maxBytes`, which also guards against a reference used so often that
 * inlining would explode).
 */
export function storableInputSchema(schema: Record<string, unknown>, maxBytes: number): { schema: Record<string, unknown> } | { problem: string } {
  const definitions = { ...asRecord(schema.definitions), ...asRecord(schema.$defs) };
  let budget = maxBytes;

  function walk(node: unknown, resolving: readonly string[]): unknown {
    if (Array.isArray(node)) return node.map((item) => walk(item, resolving));
    if (typeof node !== 'object' || node === null) return node;
    const record = node as Record<string, unknown>;
    let base: Record<string, unknown> = {};
    if ('$ref' in record) {
      const match = typeof record.$ref === 'string' ? /^#\/(?:\$defs|definitions)\/([^/]+)$/.exec(record.$ref) : null;
      const name = match?.[1];
      if (name === undefined || !Object.hasOwn(definitions, name)) throw new SchemaProblem(`unsupported $ref ${JSON.stringify(String(record.$ref).slice(0, 100))}`);
      if (resolving.includes(name)) throw new SchemaProblem(`recursive $ref to "${name}"`);
      budget -= name.length + 16;
      if (budget < 0) throw new SchemaProblem(`larger than ${maxBytes} bytes once its references are inlined`);
      base = walk(definitions[name], [...resolving, name]) as Record<string, unknown>;
    }
    const result: Record<string, unknown> = { ...base };
    for (const [key, value] of Object.entries(record)) {
      if (key === '$ref' || key === '$schema' || key === '$id' || key === '$comment') continue;
      if (key.startsWith('$') || key.includes('.') || key.includes('\u0000')) throw new SchemaProblem(`unsupported key ${JSON.stringify(key.slice(0, 100))}`);
      budget -= key.length;
      if (budget < 0) throw new SchemaProblem(`larger than ${maxBytes} bytes once its references are inlined`);
      result[key] = walk(value, resolving);
    }
    return result;
  }

  try {
    const { $defs: _defs, definitions: _definitions, ...rest } = schema;
    const normalized = walk(rest, []) as Record<string, unknown>;
    if (Buffer.byteLength(JSON.stringify(normalized)) > maxBytes) return { problem: `larger than ${maxBytes} bytes once its references are inlined` };
    return { schema: normalized };
  } catch (error) {
    if (error instanceof SchemaProblem) return { problem: error.message };
    throw error;
  }
}

class SchemaProblem extends Error {
  override readonly name = 'SchemaProblem';
}

function asRecord(value: unknown): Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Record<string, unknown>) : {};
}
