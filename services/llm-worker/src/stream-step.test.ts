import { describe, expect, it } from 'vitest';
import { modelOutputLimits, type ScriptedModelConfig } from '@abide/shared';
import { createScriptedModel } from './scripted-model.ts';
import { streamStep, type OutputLimits } from './stream-step.ts';

const echo = { name: 'echo', description: 'echo', inputSchema: { type: 'object' as const } };

async function run(step: ScriptedModelConfig['steps'][number], limits?: OutputLimits) {
  const texts: string[] = [];
  const outcome = await streamStep({
    model: createScriptedModel({ provider: 'scripted', chunkSize: 1_000, steps: [step] }, { step: 0 }),
    body: { messages: [{ role: 'user', content: 'go' }] },
    tools: [echo],
    signal: new AbortController().signal,
    onText: (text) => void texts.push(text),
    ...(limits ? { limits } : {}),
  });
  return { outcome, streamed: texts.join('') };
}

describe('streamStep output bounds (finding 10)', () => {
  it('passes output within the bounds', async () => {
    const { outcome } = await run({ text: 'x'.repeat(5_000), toolCalls: [{ toolName: 'echo', args: { a: 1 } }] });
    expect(outcome).toMatchObject({ kind: 'finished', toolCalls: [{ toolName: 'echo', args: { a: 1 } }] });
  });

  it('aborts the stream at the text bound: no more text is read or kept', async () => {
    const { outcome, streamed } = await run({ text: 'x'.repeat(modelOutputLimits.maxTextChars + 5_000) });
    expect(outcome).toEqual({ kind: 'too_large', message: expect.stringContaining(`${modelOutputLimits.maxTextChars} characters`) });
    expect(streamed.length).toBeLessThanOrEqual(modelOutputLimits.maxTextChars);
  });

  it('refuses more tool calls than the bound', async () => {
    const toolCalls = Array.from({ length: 3 }, (_, index) => ({ toolName: 'echo', args: { index } }));
    const { outcome } = await run({ toolCalls }, { ...modelOutputLimits, maxToolCalls: 2 });
    expect(outcome).toMatchObject({ kind: 'too_large', message: expect.stringContaining('more than 2 tool calls') });
  });

  it('refuses tool-call arguments over the byte bound', async () => {
    const { outcome } = await run({ toolCalls: [{ toolName: 'echo', args: { blob: 'y'.repeat(modelOutputLimits.maxToolArgsBytes) } }] });
    expect(outcome).toMatchObject({ kind: 'too_large', message: expect.stringContaining(`${modelOutputLimits.maxToolArgsBytes} bytes`) });
  });
});
