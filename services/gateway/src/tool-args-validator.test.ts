import { describe, expect, it } from 'vitest';
import { createToolArgsValidator, ToolSchemaError, toolSchemaLimits } from './tool-args-validator.ts';

const withPattern = (pattern: string) => ({ type: 'object', properties: { code: { type: 'string', pattern } }, required: ['code'] });

describe('tool args validator', () => {
  it('answers a catastrophic-backtracking pattern (^(a|a)+$) against 40+ characters: RE2 does not backtrack', () => {
    const validator = createToolArgsValidator();
    // On V8's engine this call would not return for hours; the test finishing is the bound.
    expect(validator.validate('tenant-a', withPattern('^(a|a)+$'), { code: `${'a'.repeat(48)}!` })).toEqual(['args.code: must match pattern "^(a|a)+$"']);
    expect(validator.validate('tenant-a', withPattern('^(a|a)+$'), { code: 'a'.repeat(48) })).toEqual([]);
    expect(validator.validate('tenant-a', withPattern('^(a+)+$'), { code: `${'a'.repeat(5_000)}b` })).toHaveLength(1);
  });

  it('keeps JS pattern semantics RE2 supports (classes, unicode, search rather than full match)', () => {
    const validator = createToolArgsValidator();
    expect(validator.validate('t', withPattern('\\d{3}'), { code: 'ab123' })).toEqual([]);
    expect(validator.validate('t', withPattern('^\\p{L}+$'), { code: 'héllo' })).toEqual([]);
    expect(validator.validate('t', withPattern('^(?<year>\\d{4})-\\d{2}$'), { code: '2026-11' })).toEqual([]);
    expect(validator.validate('t', withPattern('^[a-z]+$'), { code: 'ABC' })).toHaveLength(1);
  });

  it('runs patternProperties on RE2 too', () => {
    const validator = createToolArgsValidator();
    const schema = { type: 'object', patternProperties: { '^(x|x)+$': { type: 'number' } } };
    expect(validator.validate('t', schema, { [`${'x'.repeat(40)}`]: 'not a number' })).toHaveLength(1);
    expect(validator.validate('t', schema, { [`${'x'.repeat(40)}!`]: 'not matched' })).toEqual([]);
  });

  it('refuses lookaround and backreferences, naming where they are', () => {
    const validator = createToolArgsValidator();
    const lookahead = validator.checkSchema('t', withPattern('^(?=a)a+$'));
    expect(lookahead).toBeInstanceOf(ToolSchemaError);
    expect(lookahead?.path).toBe('.properties.code.pattern');
    expect(lookahead?.message).toMatch(/not supported/);
    const backreference = validator.checkSchema('t', { type: 'object', patternProperties: { '(a)\\1': {} } });
    expect(backreference?.path).toBe('.patternProperties["(a)\\\\1"]');
    const nested = validator.checkSchema('t', { type: 'object', properties: { list: { type: 'array', items: { type: 'string', pattern: '(?<!x)y' } } } });
    expect(nested?.path).toBe('.properties.list.items.pattern');
    // Data that merely looks like a keyword (inside `enum`) is not a pattern.
    expect(validator.checkSchema('t', { type: 'object', properties: { x: { enum: [{ pattern: '(?=a)' }] } } })).toBeUndefined();
    // An agent stored before the check: validating with it is refused, never run on V8.
    expect(() => validator.validate('t', withPattern('(?=a)'), { code: 'a' })).toThrow(ToolSchemaError);
  });

  it('bounds schema size, depth and pattern length', () => {
    const validator = createToolArgsValidator();
    let deep: Record<string, unknown> = { type: 'string' };
    for (let level = 0; level < toolSchemaLimits.maxSchemaDepth; level += 1) deep = { type: 'object', properties: { next: deep } };
    expect(validator.checkSchema('t', deep)?.message).toMatch(/nested deeper/);
    const wide = { type: 'object', properties: Object.fromEntries(Array.from({ length: 3_000 }, (_, index) => [`field${index}`, { type: 'string' }])) };
    expect(validator.checkSchema('t', wide)?.message).toMatch(/larger than/);
    expect(validator.checkSchema('t', withPattern('a'.repeat(toolSchemaLimits.maxPatternChars + 1)))?.message).toMatch(/longer than/);
    expect(validator.checkSchema('t', { type: 'object', $schema: 'https://attacker.example/meta' })?.path).toBe('.$schema');
  });

  it('resolves only local $refs: a schema cannot read another schema (of any tenant) by its $id', () => {
    const validator = createToolArgsValidator();
    const victim = { $id: 'https://victim.example/secret', type: 'object', properties: { secret: { const: 'tenant-a only' } } };
    expect(validator.checkSchema('tenant-a', victim)).toBeUndefined();
    expect(validator.validate('tenant-a', victim, { secret: 'tenant-a only' })).toEqual([]);
    // The same `$id` in another tenant's schema does not collide with the first.
    const sameId = { $id: 'https://victim.example/secret', type: 'object', properties: { mine: { type: 'number' } } };
    expect(validator.checkSchema('tenant-b', sameId)).toBeUndefined();
    expect(validator.validate('tenant-b', sameId, { mine: 1, secret: 'anything' })).toEqual([]);

    expect(validator.checkSchema('tenant-b', { type: 'object', properties: { leak: { $ref: 'https://victim.example/secret' } } })?.path).toBe('.properties.leak.$ref');
    // Relative refs that would resolve against a registered `$id` are not local either.
    expect(validator.checkSchema('tenant-b', { $id: 'https://victim.example/x', type: 'object', properties: { leak: { $ref: 'secret' } } })?.path).toBe('.properties.leak.$ref');
    // A local ref to something the schema does not have fails to compile rather than reaching elsewhere.
    expect(validator.checkSchema('tenant-b', { type: 'object', properties: { leak: { $ref: '#/definitions/missing' } } })?.message).toMatch(/can't resolve reference/);
    expect(validator.validate('tenant-b', { type: 'object', definitions: { n: { type: 'number' } }, properties: { x: { $ref: '#/definitions/n' } } }, { x: 'no' })).toHaveLength(1);
  });

  it('keeps the cache at its bounds under thousands of distinct schemas', () => {
    const validator = createToolArgsValidator({ maxEntries: 50, maxBytes: 8 * 1_048_576 });
    for (let index = 0; index < 3_000; index += 1) {
      const tenant = `tenant-${index % 7}`;
      expect(validator.checkSchema(tenant, { type: 'object', title: `schema ${index}`, properties: { n: { type: 'number', maximum: index } } })).toBeUndefined();
      expect(validator.stats().entries).toBeLessThanOrEqual(50);
    }
    expect(validator.stats().entries).toBe(50);

    const byBytes = createToolArgsValidator({ maxEntries: 10_000, maxBytes: 200_000 });
    for (let index = 0; index < 2_000; index += 1) byBytes.checkSchema('t', { type: 'object', title: `schema ${index}`, description: 'x'.repeat(2_000) });
    expect(byBytes.stats().bytes).toBeLessThanOrEqual(200_000);
    expect(byBytes.stats().entries).toBeGreaterThan(1);
    expect(byBytes.stats().entries).toBeLessThan(2_000);
  });

  it('evicts the least recently used validator first and recompiles it on demand', () => {
    const validator = createToolArgsValidator({ maxEntries: 2 });
    const first = withPattern('^a$');
    validator.checkSchema('t', first);
    validator.checkSchema('t', withPattern('^b$'));
    validator.validate('t', first, { code: 'a' }); // used again: now the newest
    validator.checkSchema('t', withPattern('^c$')); // evicts ^b$
    expect(validator.stats().entries).toBe(2);
    expect(validator.validate('t', withPattern('^b$'), { code: 'x' })).toHaveLength(1);
  });
});
