import { describe, expect, it } from 'vitest';
import { toolDefinitionSchema } from '@abide/shared';
import { abortableDelay, createBuiltinTools } from './builtins.ts';
import type { ToolInvocation } from './tool-invocation.ts';

function invocation(name: string, args: unknown, overrides: Partial<ToolInvocation> = {}): ToolInvocation {
  return {
    runId: 'run_1',
    tenantId: 'tenant-a',
    toolCallId: 's0c0',
    tool: toolDefinitionSchema.parse({ name, kind: 'builtin', inputSchema: { type: 'object' } }),
    args,
    timeoutMs: 10_000,
    signal: new AbortController().signal,
    onExternalEffect: () => {},
    ...overrides,
  };
}

describe('built-in tools', () => {
  const builtins = createBuiltinTools({ now: () => Date.parse('2026-01-02T03:04:05.000Z') });

  it('echo returns its args unchanged', async () => {
    const args = { a: 1, nested: { list: [1, 'two', null] } };
    expect(await builtins.run(invocation('echo', args))).toEqual({ kind: 'success', value: args });
  });

  it('current_time returns iso and epochMs', async () => {
    expect(await builtins.run(invocation('current_time', {}))).toEqual({
      kind: 'success',
      value: { iso: '2026-01-02T03:04:05.000Z', epochMs: Date.parse('2026-01-02T03:04:05.000Z') },
    });
  });

  it('sleep sleeps and returns { slept }', async () => {
    const started = Date.now();
    expect(await builtins.run(invocation('sleep', { ms: 30 }))).toEqual({ kind: 'success', value: { slept: 30 } });
    expect(Date.now() - started).toBeGreaterThanOrEqual(25);
  });

  it('sleep with a bad argument is a final tool_error', async () => {
    for (const args of [{}, { ms: -1 }, { ms: 'ten' }, { ms: 1.5 }, null]) {
      const outcome = await builtins.run(invocation('sleep', args));
      expect(outcome).toMatchObject({ kind: 'error', error: { code: 'tool_error' } });
    }
    const tooLong = await builtins.run(invocation('sleep', { ms: 20_000 }, { timeoutMs: 10_000 }));
    expect(tooLong).toMatchObject({ kind: 'error', error: { code: 'tool_error', message: expect.stringContaining('10000') } });
  });

  it('sleep is aborted by the signal', async () => {
    const controller = new AbortController();
    const sleeping = builtins.run(invocation('sleep', { ms: 5_000 }, { signal: controller.signal }));
    setTimeout(() => controller.abort(new Error('cancelled')), 20);
    await expect(sleeping).rejects.toThrow('cancelled');
  });

  it('an already aborted signal rejects at once', async () => {
    await expect(abortableDelay(1_000, AbortSignal.abort(new Error('gone')))).rejects.toThrow('gone');
  });
});
