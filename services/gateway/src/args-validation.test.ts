import { ApiError } from '@abide/shared';
import { afterEach, describe, expect, it } from 'vitest';
import { createArgsValidation, type ArgsValidation } from './args-validation.ts';
import { ToolSchemaError } from './tool-args-validator.ts';

let validation: ArgsValidation | undefined;
afterEach(async () => {
  await validation?.close();
  validation = undefined;
});

const withPattern = (pattern: string) => ({ type: 'object', properties: { code: { type: 'string', pattern } } });

describe('args validation off the event loop', () => {
  it('validates in a worker thread: the ReDoS pattern is answered, lookahead refused', async () => {
    validation = createArgsValidation();
    expect(await validation.validate('t', withPattern('^(a|a)+$'), { code: `${'a'.repeat(64)}!` })).toEqual(['args.code: must match pattern "^(a|a)+$"']);
    expect(await validation.validate('t', withPattern('^(a|a)+$'), { code: 'a'.repeat(64) })).toEqual([]);
    const refused = await validation.validate('t', withPattern('(?=a)'), { code: 'a' }).catch((error: unknown) => error);
    expect(refused).toBeInstanceOf(ToolSchemaError);
    expect((refused as ToolSchemaError).path).toBe('.properties.code.pattern');
  });

  it('stops a validation that overruns its time (uniqueItems over many objects), answers invalid_args, and keeps serving', async () => {
    validation = createArgsValidation({ timeoutMs: 1_000 });
    const schema = { type: 'object', properties: { list: { type: 'array', uniqueItems: true } } };
    const list = Array.from({ length: 60_000 }, (_, index) => ({ a: index }));
    const overrun = await validation.validate('t', schema, { list }).catch((error: unknown) => error);
    expect(overrun).toBeInstanceOf(ApiError);
    expect(overrun).toMatchObject({ code: 'invalid_args', message: expect.stringContaining('took longer than 1000 ms') });
    expect(await validation.validate('t', schema, { list: [{ a: 1 }, { a: 1 }] })).toHaveLength(1);
  });

  it('stops an exponential schema (anyOf over shared $refs) the same way', async () => {
    validation = createArgsValidation({ timeoutMs: 1_000 });
    const definitions: Record<string, unknown> = { d0: { type: 'number' } };
    for (let level = 1; level <= 40; level += 1) definitions[`d${level}`] = { anyOf: [{ $ref: `#/definitions/d${level - 1}` }, { $ref: `#/definitions/d${level - 1}` }] };
    const schema = { type: 'object', definitions, properties: { x: { $ref: '#/definitions/d40' } } };
    expect(validation.checkSchema('t', schema)).toBeUndefined();
    await expect(validation.validate('t', schema, { x: 'not a number' })).rejects.toMatchObject({ code: 'invalid_args' });
    expect(await validation.validate('t', withPattern('^a+$'), { code: 'aaa' })).toEqual([]);
  });
});
