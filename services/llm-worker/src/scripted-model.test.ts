import { generateText, jsonSchema, streamText, tool } from 'ai';
import { describe, expect, it } from 'vitest';
import type { ScriptedModelConfig } from '@abide/shared';
import { createScriptedModel } from './scripted-model.ts';

const tools = {
  echo: tool({ description: 'echo', inputSchema: jsonSchema({ type: 'object', properties: { text: { type: 'string' } } }) }),
};

const script: ScriptedModelConfig = {
  provider: 'scripted',
  chunkSize: 4,
  steps: [{ text: 'Hello, world!', toolCalls: [{ toolName: 'echo', args: { text: 'hi' } }, { toolName: 'echo', args: { text: 'again' } }] }, { text: 'done' }],
};

async function collect(config: ScriptedModelConfig, step: number, abortSignal?: AbortSignal) {
  const result = streamText({
    model: createScriptedModel(config, { step }),
    messages: [{ role: 'user', content: 'say hello' }],
    tools,
    maxRetries: 0,
    onError: () => {},
    ...(abortSignal ? { abortSignal } : {}),
  });
  const parts = [];
  for await (const part of result.stream) parts.push(part);
  return parts;
}

describe('createScriptedModel', () => {
  it('is a LanguageModelV4 of provider "scripted"', () => {
    const model = createScriptedModel(script, { step: 0 });
    expect(model.specificationVersion).toBe('v4');
    expect(model.provider).toBe('scripted');
    expect(model.supportedUrls).toEqual({});
  });

  it('streams the step text in chunks, then tool calls with parsed input, then finishes with tool-calls', async () => {
    const parts = await collect(script, 0);
    const deltas = parts.filter((part) => part.type === 'text-delta').map((part) => part.text);
    expect(deltas).toEqual(['Hell', 'o, w', 'orld', '!']);
    const calls = parts.filter((part) => part.type === 'tool-call');
    expect(calls.map((call) => ({ id: call.toolCallId, name: call.toolName, input: call.input, invalid: call.invalid }))).toEqual([
      { id: 'call_0_0', name: 'echo', input: { text: 'hi' }, invalid: undefined },
      { id: 'call_0_1', name: 'echo', input: { text: 'again' }, invalid: undefined },
    ]);
    const finish = parts.find((part) => part.type === 'finish');
    expect(finish?.finishReason).toBe('tool-calls');
    // Output: 13 text chars + two JSON inputs (13 + 16 chars) = 42 chars → 11 tokens.
    expect(finish?.totalUsage.outputTokens).toBe(11);
    expect(finish?.totalUsage.inputTokens).toBeGreaterThan(0);
    expect(finish?.totalUsage.totalTokens).toBe((finish?.totalUsage.inputTokens ?? 0) + 11);
  });

  it('answers step i with steps[i] and finishes with stop when there are no tool calls', async () => {
    const parts = await collect(script, 1);
    expect(parts.filter((part) => part.type === 'text-delta').map((part) => part.text).join('')).toBe('done');
    expect(parts.find((part) => part.type === 'finish')?.finishReason).toBe('stop');
    expect(parts.some((part) => part.type === 'tool-call')).toBe(false);
  });

  it('gives the same usage for the same prompt (deterministic)', async () => {
    const usage = async () => (await collect(script, 1)).find((part) => part.type === 'finish')?.totalUsage;
    expect(await usage()).toEqual(await usage());
  });

  it('fails a step past the end of the script', async () => {
    const parts = await collect(script, 2);
    const error = parts.find((part) => part.type === 'error');
    expect(String(error?.error)).toMatch(/has 2 step\(s\); step 2 was requested/);
  });

  it('waits delayMs before each chunk and stops when the call is aborted', async () => {
    const slow: ScriptedModelConfig = { provider: 'scripted', chunkSize: 1, delayMs: 20, steps: [{ text: 'abcdefghijklmnopqrstuvwxyz' }] };
    const controller = new AbortController();
    setTimeout(() => controller.abort(new Error('stop')), 70);
    const startedAt = Date.now();
    const parts = await collect(slow, 0, controller.signal);
    const deltas = parts.filter((part) => part.type === 'text-delta');
    expect(deltas.length).toBeGreaterThanOrEqual(1);
    expect(deltas.length).toBeLessThan(26);
    expect(parts.some((part) => part.type === 'abort')).toBe(true);
    expect(parts.some((part) => part.type === 'finish')).toBe(false);
    expect(Date.now() - startedAt).toBeLessThan(500);
  });

  it('answers doGenerate too (generateText)', async () => {
    const result = await generateText({ model: createScriptedModel(script, { step: 0 }), prompt: 'x', tools, maxRetries: 0 });
    expect(result.text).toBe('Hello, world!');
    expect(result.toolCalls.map((call) => call.input)).toEqual([{ text: 'hi' }, { text: 'again' }]);
    expect(result.finishReason).toBe('tool-calls');
  });
});
