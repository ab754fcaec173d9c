import { APICallError, type LanguageModel } from 'ai';
import { MockLanguageModelV4, convertArrayToReadableStream } from 'ai/test';
import { describe, expect, it, vi } from 'vitest';
import {
  ackDecisionFor,
  AbideError,
  ShuttingDownError,
  busEventSchema,
  createEgressPolicy,
  llmResultMessageSchema,
  type LlmResultPayload,
  type ModelConfig,
  type ScriptedModelConfig,
} from '@abide/shared';
import { createLanguageModel } from './model-factory.ts';
import { noStepMetrics } from './ports.ts';
import { createRunStep, type RunStepDeps } from './run-step.ts';
import {
  createFakeBodyReader,
  createFakeCancellations,
  createFakePublisher,
  createFakeResultStore,
  createFakeSecrets,
  deliveryOf,
  llmRequest,
  silentLogger,
} from './test-fakes.ts';

const scripted = (config: Omit<ScriptedModelConfig, 'provider'>): ScriptedModelConfig => ({ provider: 'scripted', ...config });
const echoTool = { name: 'echo', description: 'Returns its input', inputSchema: { type: 'object' as const, properties: { text: { type: 'string' } } } };

function setup(
  options: {
    model?: (config: ModelConfig, step: number) => LanguageModel;
    publisherFailsOn?: (subject: string) => boolean;
    bodies?: RunStepDeps['bodies'];
    crashPoints?: RunStepDeps['crashPoints'];
    metrics?: RunStepDeps['metrics'];
  } = {},
) {
  const { publisher, published } = createFakePublisher(options.publisherFailsOn ? { failOn: options.publisherFailsOn } : {});
  const { results, entries } = createFakeResultStore();
  const cancellations = createFakeCancellations();
  const createModel = vi.fn((config: ModelConfig, { step, tenantId }: { step: number; tenantId: string }) =>
    options.model ? options.model(config, step) : createLanguageModel(config, { step, tenantId, secrets: createFakeSecrets(), egress: createEgressPolicy({ allow: [], variable: 'LLM_EGRESS_ALLOW' }) }),
  );
  const handler = createRunStep({
    publisher,
    results,
    bodies: options.bodies ?? createFakeBodyReader(),
    cancellations: cancellations.tracker,
    createModel,
    logger: silentLogger,
    maxRetryAfterMs: 60_000,
    ...(options.crashPoints ? { crashPoints: options.crashPoints } : {}),
    ...(options.metrics ? { metrics: options.metrics } : {}),
  });
  const events = () => published.filter((message) => message.subject === 'run.events.run_1');
  const llmResults = () => published.filter((message) => message.subject === 'run.in.run_1.llm_result');
  return { handler, published, entries, cancellations, createModel, events, llmResults };
}

function failingModel(error: unknown) {
  return new MockLanguageModelV4({
    doStream: async () => {
      throw error;
    },
  });
}

describe('createRunStep', () => {
  it('streams a step: llm.step.started, coalesced deltas, then the stored result on run.in.<runId>.llm_result', async () => {
    const { handler, published, entries, events, llmResults } = setup();
    const text = 'The quick brown fox jumps over the lazy dog. '.repeat(30);
    const message = llmRequest({
      model: scripted({ chunkSize: 7, steps: [{ text, toolCalls: [{ toolName: 'echo', args: { text: 'hi' } }] }] }),
      tools: [echoTool],
    });
    await handler.handle(deliveryOf(message, { deliveryCount: 3 }));

    const [started, ...deltas] = events();
    expect(started!.value.type).toBe('llm.step.started');
    expect(started!.value.payload).toEqual({ step: 0, attempt: 3 });
    expect(started!.msgId).toBe('run_1:s0:a3:started');
    expect(started!.value.id).toBe(started!.msgId);
    expect(deltas.length).toBeGreaterThan(1);
    expect(deltas.length).toBeLessThan(text.length / 7);
    deltas.forEach((delta, index) => {
      expect(busEventSchema.parse(delta.value).type).toBe('message.delta');
      expect(delta.msgId).toBe(`run_1:s0:a3:d${index}`);
      expect((delta.value.payload.text as string).length).toBeLessThanOrEqual(512);
    });
    expect(deltas.map((delta) => delta.value.payload.text).join('')).toBe(text);

    const [result] = llmResults();
    expect(llmResults()).toHaveLength(1);
    expect(result!.msgId).toBe('run_1:llm_result:0');
    const envelope = llmResultMessageSchema.parse(result!.value);
    expect(envelope.id).toBe('run_1:llm_result:0');
    expect(envelope.tenantId).toBe('tenant_a');
    expect(envelope.payload).toMatchObject({
      ok: true,
      step: 0,
      attempt: 3,
      text,
      toolCalls: [{ providerToolCallId: 'call_0_0', toolName: 'echo', args: { text: 'hi' } }],
      finishReason: 'tool-calls',
    });
    expect(entries.get('run_1.0')).toEqual(envelope.payload);
    // Every event went out before the result.
    expect(published.at(-1)).toBe(result);
  });

  it('passes its crash points once the first delta is acknowledged and once the result is stored, before it is published', async () => {
    const hits: { name: string; published: string[]; stored: boolean }[] = [];
    const { handler, published, entries } = setup({
      crashPoints: { hit: (name) => hits.push({ name, published: published.map((message) => message.msgId), stored: entries.has('run_1.0') }) },
    });
    await handler.handle(deliveryOf(llmRequest({ model: scripted({ chunkSize: 2, delayMs: 5, steps: [{ text: 'a few words, streamed slowly' }] }) })));
    expect(hits.map((hit) => hit.name)).toEqual(['llm-worker.mid_stream', 'llm-worker.after_store']);
    expect(hits[0]!.published).toContain('run_1:s0:a1:d0');
    expect(hits[0]!.stored).toBe(false);
    expect(hits[1]!.stored).toBe(true);
    expect(hits[1]!.published).not.toContain('run_1:llm_result:0');
    expect(published.at(-1)!.msgId).toBe('run_1:llm_result:0');
  });

  it("stores the result while its attempt's last PubAcks are outstanding, and publishes it only after them", async () => {
    const { results, entries } = createFakeResultStore();
    const acked: string[] = [];
    const published: string[] = [];
    let ackEvents!: () => void;
    const eventsAcked = new Promise<void>((resolve) => (ackEvents = resolve));
    const handler = createRunStep({
      publisher: {
        async publish(subject, _value, msgId) {
          if (subject.startsWith('run.events.')) await eventsAcked;
          acked.push(msgId);
          published.push(msgId);
        },
      },
      results,
      bodies: createFakeBodyReader(),
      cancellations: createFakeCancellations().tracker,
      createModel: (config, { step, tenantId }) =>
        createLanguageModel(config, { step, tenantId, secrets: createFakeSecrets(), egress: createEgressPolicy({ allow: [], variable: 'LLM_EGRESS_ALLOW' }) }),
      logger: silentLogger,
      maxRetryAfterMs: 60_000,
    });
    const handled = handler.handle(deliveryOf(llmRequest({ model: scripted({ steps: [{ text: 'hello' }] }) })));
    await vi.waitFor(() => expect(entries.has('run_1.0')).toBe(true));
    expect(acked).toEqual([]);
    expect(published).not.toContain('run_1:llm_result:0');
    ackEvents();
    await handled;
    expect(published.at(-1)).toBe('run_1:llm_result:0');
    expect(published.slice(0, -1)).toEqual(['run_1:s0:a1:started', 'run_1:s0:a1:d0']);
  });

  it('passes the system prompt as instructions and the tools as schemas to the model', async () => {
    const model = new MockLanguageModelV4({
      doStream: {
        stream: convertArrayToReadableStream([
          { type: 'text-start', id: 't' },
          { type: 'text-delta', id: 't', delta: 'ok' },
          { type: 'text-end', id: 't' },
          {
            type: 'finish',
            finishReason: { unified: 'stop', raw: 'stop' },
            usage: { inputTokens: { total: 7, noCache: 7, cacheRead: undefined, cacheWrite: undefined }, outputTokens: { total: 1, text: 1, reasoning: undefined } },
          },
        ]),
      },
    });
    const { handler, llmResults } = setup({ model: () => model });
    await handler.handle(deliveryOf(llmRequest({ model: scripted({ steps: [{}] }), tools: [echoTool] })));
    const call = model.doStreamCalls[0]!;
    expect(call.prompt[0]).toEqual({ role: 'system', content: 'You are terse.' });
    expect(call.prompt[1]).toMatchObject({ role: 'user' });
    expect(call.tools).toEqual([expect.objectContaining({ type: 'function', name: 'echo', description: 'Returns its input' })]);
    expect(llmResults()[0]!.value.payload).toMatchObject({ ok: true, text: 'ok', usage: { inputTokens: 7, outputTokens: 1, totalTokens: 8 } });
  });

  it('answers a redelivered step from LLM_RESULTS without calling the model', async () => {
    const { handler, entries, createModel, published } = setup();
    const stored: LlmResultPayload = { ok: true, step: 0, attempt: 1, text: 'first', toolCalls: [], finishReason: 'stop', usage: { inputTokens: 1, outputTokens: 1, totalTokens: 2 } };
    entries.set('run_1.0', stored);
    await handler.handle(deliveryOf(llmRequest({ model: scripted({ steps: [{ text: 'second' }] }) }), { deliveryCount: 2 }));
    expect(createModel).not.toHaveBeenCalled();
    expect(published).toHaveLength(1);
    expect(published[0]!.subject).toBe('run.in.run_1.llm_result');
    expect(published[0]!.msgId).toBe('run_1:llm_result:0');
    expect(published[0]!.value.payload).toEqual(stored);
  });

  it('does nothing for a cancelled run', async () => {
    const { handler, cancellations, createModel, published, entries } = setup();
    cancellations.cancel('run_1');
    await handler.handle(deliveryOf(llmRequest({ model: scripted({ steps: [{ text: 'x' }] }) })));
    expect(createModel).not.toHaveBeenCalled();
    expect(published).toEqual([]);
    expect(entries.size).toBe(0);
    expect(cancellations.tracked('run_1')).toBe(0);
  });

  it('aborts the model call when the run is cancelled mid-stream, publishes no result and acks', async () => {
    const { handler, cancellations, llmResults, entries, events } = setup();
    const message = llmRequest({ model: scripted({ chunkSize: 1, delayMs: 10, steps: [{ text: 'a long answer that takes a while' }] }) });
    const handled = handler.handle(deliveryOf(message));
    await vi.waitFor(() => expect(events().length).toBeGreaterThan(1), { timeout: 2_000 });
    cancellations.cancel('run_1');
    await expect(handled).resolves.toBeUndefined();
    expect(llmResults()).toEqual([]);
    expect(entries.size).toBe(0);
  });

  it('throws a retryable error with Retry-After on a transient failure (the runner naks)', async () => {
    const overloaded = new APICallError({ message: 'overloaded', url: 'u', requestBodyValues: {}, statusCode: 503, responseHeaders: { 'retry-after': '2' } });
    const { handler, entries, llmResults, events } = setup({ model: () => failingModel(overloaded) });
    const error = await handler.handle(deliveryOf(llmRequest({ model: scripted({ steps: [{}] }) }), { deliveryCount: 2 })).catch((caught: unknown) => caught);
    expect(AbideError.isInstance(error) && error.retryable).toBe(true);
    expect(ackDecisionFor(error)).toEqual({ action: 'nak', delayMs: 2_000 });
    expect(llmResults()).toEqual([]);
    expect(entries.size).toBe(0);
    expect(events()[0]!.value.payload).toEqual({ step: 0, attempt: 2 });
  });

  it('publishes ok:false model_error for a final failure and acks', async () => {
    const badRequest = new APICallError({ message: 'Bad Request', url: 'u', requestBodyValues: {}, statusCode: 400, responseBody: '{"error":"unknown model"}' });
    const { handler, entries, llmResults } = setup({ model: () => failingModel(badRequest) });
    await handler.handle(deliveryOf(llmRequest({ model: scripted({ steps: [{}] }) })));
    const payload = llmResultMessageSchema.parse(llmResults()[0]!.value).payload;
    expect(payload).toMatchObject({ ok: false, step: 0, attempt: 1, error: { code: 'model_error' } });
    expect(payload.ok === false && payload.error.message).toContain('HTTP 400');
    expect(entries.get('run_1.0')).toEqual(payload);
  });

  it('fails the step for good when the model calls an unknown tool', async () => {
    const { handler, llmResults } = setup();
    await handler.handle(deliveryOf(llmRequest({ model: scripted({ steps: [{ toolCalls: [{ toolName: 'nope', args: {} }] }] }), tools: [echoTool] })));
    expect(llmResults()[0]!.value.payload).toMatchObject({ ok: false, error: { code: 'model_error', message: expect.stringContaining('nope') } });
  });

  it('times every model call by provider and outcome kind', async () => {
    const calls: [string, string, number][] = [];
    const metrics = { ...noStepMetrics, modelCall: (provider: string, outcome: string, seconds: number) => void calls.push([provider, outcome, seconds]) };
    await setup({ metrics }).handler.handle(deliveryOf(llmRequest({ model: scripted({ chunkSize: 1, delayMs: 5, steps: [{ text: 'hello' }] }) })));
    // A fresh result store: the same step again would be answered from LLM_RESULTS without a call.
    await setup({ metrics }).handler.handle(deliveryOf(llmRequest({ model: scripted({ chunkSize: 1, delayMs: 20, steps: [{ text: 'slow slow slow' }] }), timeoutMs: 50 })));
    expect(calls.map(([provider, outcome]) => [provider, outcome])).toEqual([
      ['scripted', 'finished'],
      ['scripted', 'aborted'],
    ]);
    // Durations in seconds: the first streamed 5 chunks 5 ms apart, the second ran to its 50 ms timeout.
    expect(calls[0]![2]).toBeGreaterThanOrEqual(0.02);
    expect(calls[1]![2]).toBeGreaterThanOrEqual(0.045);
    expect(calls[1]![2]).toBeLessThan(5);
  });

  it('publishes ok:false model_timeout when the step passes its timeout', async () => {
    const { handler, llmResults } = setup();
    await handler.handle(deliveryOf(llmRequest({ model: scripted({ chunkSize: 1, delayMs: 20, steps: [{ text: 'slow slow slow' }] }), timeoutMs: 50 })));
    expect(llmResults()[0]!.value.payload).toMatchObject({ ok: false, error: { code: 'model_timeout' } });
  });

  it('hands the step back (retryable) when the worker shuts down mid-call', async () => {
    const shutdown = new AbortController();
    const { handler, llmResults, entries } = setup();
    const handled = handler
      .handle(deliveryOf(llmRequest({ model: scripted({ chunkSize: 1, delayMs: 10, steps: [{ text: 'interrupted answer' }] }) }), { signal: shutdown.signal }))
      .catch((caught: unknown) => caught);
    setTimeout(() => shutdown.abort(new Error('shutting down')), 30);
    const error = await handled;
    expect(AbideError.isInstance(error) && error.retryable).toBe(true);
    // The same error as the tool-worker's hand-back (one code for one situation).
    expect(error).toBeInstanceOf(ShuttingDownError);
    expect(error).toMatchObject({ code: 'shutting_down' });
    expect(ackDecisionFor(error)).toEqual({ action: 'nak', delayMs: 0 });
    expect(llmResults()).toEqual([]);
    expect(entries.size).toBe(0);
  });

  it('retries (unknown error → nak) when an event PubAck fails, and publishes no result', async () => {
    const { handler, llmResults } = setup({ publisherFailsOn: (subject) => subject.startsWith('run.events.') });
    const error = await handler.handle(deliveryOf(llmRequest({ model: scripted({ steps: [{ text: 'hi' }] }) }))).catch((caught: unknown) => caught);
    expect(ackDecisionFor(error).action).toBe('nak');
    expect(llmResults()).toEqual([]);
  });

  it('reads a large request body from the PAYLOADS store', async () => {
    const model = failingModel(new Error('unused'));
    const body = { system: 'Big system prompt', messages: [{ role: 'user' as const, content: 'big question' }] };
    const { handler } = setup({ model: () => model, bodies: createFakeBodyReader({ 'run_1/0': body }) });
    await handler.handle(deliveryOf(llmRequest({ model: scripted({ steps: [{}] }), bodyRef: { store: 'PAYLOADS', name: 'run_1/0' } })));
    expect(model.doStreamCalls[0]!.prompt).toEqual([
      { role: 'system', content: 'Big system prompt' },
      { role: 'user', content: [{ type: 'text', text: 'big question' }] },
    ]);
  });

  it('fails the step for good when its stored body is gone', async () => {
    const { handler, llmResults } = setup();
    await handler.handle(deliveryOf(llmRequest({ model: scripted({ steps: [{}] }), bodyRef: { store: 'PAYLOADS', name: 'run_1/0' } })));
    expect(llmResults()[0]!.value.payload).toMatchObject({ ok: false, error: { code: 'internal', message: expect.stringContaining('run_1/0') } });
  });

  it('onExhausted stores and publishes delivery_exhausted with the last attempt', async () => {
    const { handler, entries, llmResults } = setup();
    const message = llmRequest({ model: scripted({ steps: [{}] }), step: 0 });
    await handler.onExhausted(deliveryOf(message, { deliveryCount: 6 }), new Error('HTTP 503: overloaded'));
    const payload = llmResults()[0]!.value.payload;
    expect(payload).toMatchObject({ ok: false, step: 0, attempt: 6, error: { code: 'delivery_exhausted', message: expect.stringContaining('HTTP 503') } });
    expect(entries.get('run_1.0')).toEqual(payload);
  });

  it('onExhausted republishes a result another delivery already stored', async () => {
    const { handler, entries, llmResults } = setup();
    const stored: LlmResultPayload = { ok: true, step: 0, attempt: 5, text: 'late', toolCalls: [], finishReason: 'stop', usage: { inputTokens: 0, outputTokens: 0, totalTokens: 0 } };
    entries.set('run_1.0', stored);
    await handler.onExhausted(deliveryOf(llmRequest({ model: scripted({ steps: [{}] }) }), { deliveryCount: 6 }), new Error('x'));
    expect(llmResults()[0]!.value.payload).toEqual(stored);
  });
});
