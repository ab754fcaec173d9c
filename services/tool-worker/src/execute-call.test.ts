import { describe, expect, it, vi } from 'vitest';
import {
  AbideError,
  ShuttingDownError,
  createLogger,
  createMetrics,
  decodeJson,
  encodeJson,
  makeEnvelope,
  toolDefinitionSchema,
  type Delivery,
  type ToolOutcome,
  type ToolRequestMessage,
  type ToolResultMessage,
  type ToolStartedMarker,
} from '@abide/shared';
import { createToolCallHandler, toolResultMessageId, type ToolCallHandlerDeps } from './execute-call.ts';
import type { KeyValueBucket, KvEntryLike } from '@abide/shared';
import type { RunTool, ToolInvocation } from './tool-invocation.ts';
import { createToolMetrics } from './tool-metrics.ts';

const runId = 'run_1';
const resultKey = 'run_1.s0c0';
const markerKey = 'run_1.s0c0.started';
const now = Date.parse('2026-03-01T12:00:00.000Z');

/** An in-memory JetStream KV with revisions, create and compare-and-swap; every write goes to `log`. */
function fakeBucket(log: string[]) {
  const entries = new Map<string, KvEntryLike>();
  let revision = 0;
  const bucket: KeyValueBucket & { json(key: string): unknown; seed(key: string, value: unknown): number; entries: typeof entries } = {
    entries,
    async get(key) {
      return entries.get(key) ?? null;
    },
    async create(key, data) {
      const current = entries.get(key);
      if (current && current.operation === 'PUT') throw new Error('wrong last sequence: key exists');
      entries.set(key, { value: data, revision: ++revision, operation: 'PUT' });
      log.push(`create ${key}`);
      return revision;
    },
    async update(key, data, expected) {
      const current = entries.get(key);
      if (!current || current.revision !== expected) throw new Error('wrong last sequence');
      entries.set(key, { value: data, revision: ++revision, operation: 'PUT' });
      log.push(`update ${key}`);
      return revision;
    },
    async put(key, data) {
      entries.set(key, { value: data, revision: ++revision, operation: 'PUT' });
      log.push(`put ${key}`);
      return revision;
    },
    async delete(key) {
      entries.set(key, { value: new Uint8Array(), revision: ++revision, operation: 'DEL' });
      log.push(`delete ${key}`);
    },
    json(key) {
      const entry = entries.get(key);
      return entry && entry.operation === 'PUT' ? decodeJson(entry.value) : undefined;
    },
    seed(key, value) {
      entries.set(key, { value: encodeJson(value), revision: ++revision, operation: 'PUT' });
      return revision;
    },
  };
  return bucket;
}

function request(toolOverrides: Record<string, unknown> = {}, args: unknown = { text: 'hi' }): ToolRequestMessage {
  const tool = toolDefinitionSchema.parse({ name: 'echo', kind: 'builtin', inputSchema: { type: 'object' }, ...toolOverrides });
  return makeEnvelope('tool.request', { id: 'run_1:3:0', runId, tenantId: 'tenant_a' }, { toolCallId: 's0c0', step: 0, tool, args, timeoutMs: 5_000 });
}

function delivery(message: ToolRequestMessage, overrides: Partial<Delivery<ToolRequestMessage>> = {}): Delivery<ToolRequestMessage> {
  return {
    message,
    subject: `tool.request.${message.payload.tool.name}`,
    deliveryCount: 1,
    isLastDelivery: false,
    streamSequence: 1,
    signal: new AbortController().signal,
    working: () => {},
    ...overrides,
  };
}

function setup(options: { runTool?: RunTool; cancelled?: boolean; deps?: Partial<ToolCallHandlerDeps> } = {}) {
  const log: string[] = [];
  const results = fakeBucket(log);
  const published: ToolResultMessage[] = [];
  const cancelController = new AbortController();
  const runTool = vi.fn<RunTool>(options.runTool ?? (async (invocation) => ({ kind: 'success', value: invocation.args })));
  const metrics = createMetrics();
  const handler = createToolCallHandler({
    results,
    async publish(message) {
      log.push(`publish ${message.id}`);
      published.push(message);
    },
    cancellations: {
      isCancelled: async () => options.cancelled ?? false,
      track: () => ({ signal: cancelController.signal, release: () => {} }),
    },
    runTool,
    workerId: 'worker-b',
    logger: createLogger('tool-worker-test', 'silent'),
    metrics: createToolMetrics(metrics),
    heartbeatMs: 10_000,
    now: () => now,
    random: () => 0,
    ...options.deps,
  });
  return { handler, results, published, log, runTool, cancelController, metrics };
}

function marker(worker: string, ageMs: number, attempt = 1): ToolStartedMarker {
  return { worker, attempt, heartbeatAt: new Date(now - ageMs).toISOString() };
}

describe('tool call handler', () => {
  it('executes a new call, stores its result before publishing it, and leaves the marker to expire (no write after the publish)', async () => {
    const { handler, results, published, log, runTool } = setup();
    await handler.handle(delivery(request()));
    expect(runTool).toHaveBeenCalledTimes(1);
    expect(log).toEqual([`create ${markerKey}`, `create ${resultKey}`, `publish ${runId}:tool_result:s0c0`]);
    expect(results.json(markerKey)).toMatchObject({ worker: 'worker-b' });
    expect(results.json(resultKey)).toEqual({ toolCallId: 's0c0', step: 0, outcome: { kind: 'success', value: { text: 'hi' } } });
    expect(published).toHaveLength(1);
    expect(published[0]).toMatchObject({
      v: 1,
      id: toolResultMessageId(runId, 's0c0'),
      type: 'tool_result',
      runId,
      tenantId: 'tenant_a',
      payload: { toolCallId: 's0c0', step: 0, outcome: { kind: 'success', value: { text: 'hi' } } },
    });
  });

  it('passes its crash points where the tool has run (nothing stored) and where the result is stored (not published)', async () => {
    // The hits go into the same log as the bucket writes and publishes, to show where they fall.
    const { handler, log } = setup({ deps: { crashPoints: { hit: (name) => log.push(`hit ${name}`) } } });
    await handler.handle(delivery(request()));
    expect(log).toEqual([`create ${markerKey}`, 'hit tool-worker.after_execute', `create ${resultKey}`, 'hit tool-worker.after_store', `publish ${runId}:tool_result:s0c0`]);
  });

  it('writes the started marker with worker, attempt and heartbeat before executing', async () => {
    let seenMarker: unknown;
    const { handler, results } = setup({
      runTool: async () => {
        seenMarker = results.json(markerKey);
        return { kind: 'success', value: 1 };
      },
    });
    await handler.handle(delivery(request(), { deliveryCount: 2 }));
    expect(seenMarker).toEqual({ worker: 'worker-b', attempt: 2, heartbeatAt: new Date(now).toISOString() });
  });

  it('re-publishes a stored result without executing, removing the marker it created alongside its reads', async () => {
    const { handler, results, published, runTool, log } = setup();
    const stored = { toolCallId: 's0c0', step: 0, outcome: { kind: 'success', value: 'before' } };
    results.seed(resultKey, stored);
    await handler.handle(delivery(request(), { deliveryCount: 2 }));
    expect(runTool).not.toHaveBeenCalled();
    // The only writes besides the publish are the pipelined marker's create and its removal.
    expect(log.filter((entry) => !entry.endsWith(markerKey))).toEqual([`publish ${runId}:tool_result:s0c0`]);
    expect(log.filter((entry) => entry.endsWith(markerKey))).toEqual([`create ${markerKey}`, `delete ${markerKey}`]);
    expect(results.json(markerKey)).toBeUndefined();
    expect(results.json(resultKey)).toEqual(stored);
    expect(published[0]!.payload).toEqual(stored);
  });

  it("leaves another worker's marker beside a stored result alone", async () => {
    const { handler, results, runTool, log } = setup();
    results.seed(resultKey, { toolCallId: 's0c0', step: 0, outcome: { kind: 'success', value: 'before' } });
    results.seed(markerKey, marker('worker-a', 5_000));
    await handler.handle(delivery(request(), { deliveryCount: 2 }));
    expect(runTool).not.toHaveBeenCalled();
    expect(log).toEqual([`publish ${runId}:tool_result:s0c0`]);
    expect(results.json(markerKey)).toMatchObject({ worker: 'worker-a' });
  });

  it('acks a request of a cancelled run without executing, storing or publishing, and leaves no marker', async () => {
    const { handler, results, published, runTool, log } = setup({ cancelled: true });
    await handler.handle(delivery(request()));
    expect(runTool).not.toHaveBeenCalled();
    expect(published).toHaveLength(0);
    expect(log.filter((entry) => !entry.endsWith(markerKey))).toEqual([]);
    expect(results.json(markerKey)).toBeUndefined();
    expect(results.json(resultKey)).toBeUndefined();
  });

  it('removes the marker it created when a read fails, so the redelivery executes at once', async () => {
    const { handler, results, runTool, published } = setup();
    const get = results.get.bind(results);
    results.get = async () => {
      throw new Error('NATS timeout');
    };
    await expect(handler.handle(delivery(request()))).rejects.toThrow('NATS timeout');
    expect(runTool).not.toHaveBeenCalled();
    expect(results.json(markerKey)).toBeUndefined();
    results.get = get;
    await handler.handle(delivery(request(), { deliveryCount: 2 }));
    expect(runTool).toHaveBeenCalledTimes(1);
    expect(published).toHaveLength(1);
  });

  it('creates the started marker while its reads are in flight (one round trip before executing)', async () => {
    const { handler, results, runTool, log } = setup();
    let answerReads!: () => void;
    const readsAnswered = new Promise<void>((resolve) => (answerReads = resolve));
    const get = results.get.bind(results);
    results.get = async (key) => {
      await readsAnswered;
      return get(key);
    };
    const handled = handler.handle(delivery(request()));
    await vi.waitFor(() => expect(log).toContain(`create ${markerKey}`));
    expect(runTool).not.toHaveBeenCalled();
    answerReads();
    await handled;
    expect(runTool).toHaveBeenCalledTimes(1);
  });

  it('naks a call whose fresh marker belongs to another live worker, until it would turn stale', async () => {
    const { handler, results, runTool, published } = setup();
    results.seed(markerKey, marker('worker-a', 5_000));
    const error = await handler.handle(delivery(request(), { deliveryCount: 2 })).catch((caught: unknown) => caught);
    expect(AbideError.isInstance(error)).toBe(true);
    expect(error).toMatchObject({ retryable: true, retryAfterMs: 25_000 });
    expect(runTool).not.toHaveBeenCalled();
    expect(published).toHaveLength(0);
    expect(results.json(markerKey)).toMatchObject({ worker: 'worker-a' });
  });

  it('drops, without a result, a duplicate copy that ran out of deliveries while another worker executes the call', async () => {
    const { handler, results, published, log } = setup();
    results.seed(markerKey, marker('worker-a', 5_000));
    const last = delivery(request(), { deliveryCount: 6, isLastDelivery: true });
    const error = await handler.handle(last).then(
      () => new Error('handled'),
      (caught: unknown) => caught as Error,
    );
    expect(error.name).toBe('CallOwnedElsewhereError');
    await handler.onExhausted(last, error);
    expect(results.json(resultKey)).toBeUndefined();
    expect(published).toHaveLength(0);
    expect(log).toEqual([]);
  });

  it('runs an interrupted call (stale marker, policy retry) once, taking the marker over with a compare-and-swap', async () => {
    const { handler, results, runTool, published, log } = setup();
    results.seed(markerKey, marker('worker-a', 60_000));
    await handler.handle(delivery(request(), { deliveryCount: 2 }));
    expect(runTool).toHaveBeenCalledTimes(1);
    expect(log).toEqual([`update ${markerKey}`, `create ${resultKey}`, `publish ${runId}:tool_result:s0c0`]);
    expect(published[0]!.payload.outcome).toEqual({ kind: 'success', value: { text: 'hi' } });

    // A second redelivery is answered from the stored result.
    await handler.handle(delivery(request(), { deliveryCount: 3 }));
    expect(runTool).toHaveBeenCalledTimes(1);
    expect(published).toHaveLength(2);
  });

  it('naks when another worker wins the takeover of a stale marker', async () => {
    const { handler, results, runTool } = setup();
    results.seed(markerKey, marker('worker-a', 60_000));
    const realUpdate = results.update.bind(results);
    results.update = async (key, data, revision) => {
      results.seed(markerKey, marker('worker-c', 0)); // worker C took it over first
      return realUpdate(key, data, revision);
    };
    await expect(handler.handle(delivery(request(), { deliveryCount: 2 }))).rejects.toMatchObject({ retryable: true });
    expect(runTool).not.toHaveBeenCalled();
  });

  it('fails an interrupted call with outcome_unknown under policy fail', async () => {
    const { handler, results, runTool, published, log } = setup();
    results.seed(markerKey, marker('worker-a', 60_000));
    await handler.handle(delivery(request({ onOutcomeUnknown: 'fail' }), { deliveryCount: 2 }));
    expect(runTool).not.toHaveBeenCalled();
    expect(published[0]!.payload.outcome).toMatchObject({ kind: 'error', error: { code: 'outcome_unknown', message: expect.stringContaining('worker-a') } });
    expect(log.indexOf(`create ${resultKey}`)).toBeLessThan(log.indexOf(`publish ${runId}:tool_result:s0c0`));
    expect(results.json(resultKey)).toMatchObject({ outcome: { kind: 'error', error: { code: 'outcome_unknown' } } });
  });

  it('fails the call like fail when a stored tool still carries policy ask (refused on PUT since), saying a human must decide', async () => {
    const { handler, results, runTool, published } = setup();
    results.seed(markerKey, marker('worker-a', 60_000));
    await handler.handle(delivery(request({ onOutcomeUnknown: 'ask' }), { deliveryCount: 2 }));
    expect(runTool).not.toHaveBeenCalled();
    expect(published[0]!.payload.outcome).toMatchObject({ kind: 'error', error: { code: 'outcome_unknown', message: expect.stringContaining('a human must decide') } });
  });

  it('stores and publishes a final error outcome', async () => {
    const { handler, results, published } = setup({ runTool: async () => ({ kind: 'error', error: { code: 'tool_error', message: 'HTTP 400: no' } }) });
    await handler.handle(delivery(request()));
    expect(results.json(resultKey)).toMatchObject({ outcome: { kind: 'error', error: { code: 'tool_error' } } });
    expect(published).toHaveLength(1);
  });

  it('deletes the marker and rethrows a retryable failure, storing nothing', async () => {
    const failure = new AbideError('tool_error', 'HTTP 503: busy', { retryable: true, retryAfterMs: 2_000 });
    const { handler, results, published, log } = setup({ runTool: async () => Promise.reject(failure) });
    await expect(handler.handle(delivery(request()))).rejects.toBe(failure);
    expect(results.json(resultKey)).toBeUndefined();
    expect(results.json(markerKey)).toBeUndefined();
    expect(published).toHaveLength(0);
    expect(log).toEqual([`create ${markerKey}`, `delete ${markerKey}`]);
  });

  it('on the last delivery, onExhausted stores and publishes delivery_exhausted', async () => {
    const failure = new AbideError('tool_error', 'HTTP 503: busy', { retryable: true });
    const { handler, results, published, log } = setup({ runTool: async () => Promise.reject(failure) });
    const last = delivery(request(), { deliveryCount: 6, isLastDelivery: true });
    await expect(handler.handle(last)).rejects.toBe(failure);
    await handler.onExhausted(last, failure);
    expect(results.json(resultKey)).toMatchObject({ outcome: { kind: 'error', error: { code: 'delivery_exhausted', message: expect.stringContaining('HTTP 503') } } });
    expect(published[0]!.payload.outcome).toMatchObject({ kind: 'error', error: { code: 'delivery_exhausted' } });
    expect(log.indexOf(`create ${resultKey}`)).toBeLessThan(log.indexOf(`publish ${runId}:tool_result:s0c0`));
  });

  it('publishes the result stored first when another attempt stored one meanwhile', async () => {
    const { handler, results, published } = setup({
      runTool: async () => {
        results.seed(resultKey, { toolCallId: 's0c0', step: 0, outcome: { kind: 'success', value: 'first' } });
        return { kind: 'success', value: 'second' };
      },
    });
    await handler.handle(delivery(request()));
    expect(published[0]!.payload.outcome).toEqual({ kind: 'success', value: 'first' });
    expect(results.json(resultKey)).toMatchObject({ outcome: { value: 'first' } });
  });

  it('stores and publishes a cancelled outcome when the run is cancelled mid-call', async () => {
    let started!: () => void;
    const running = new Promise<void>((resolve) => (started = resolve));
    const { handler, published, results, cancelController } = setup({
      runTool: (invocation: ToolInvocation) =>
        new Promise<ToolOutcome>((_resolve, reject) => {
          invocation.signal.addEventListener('abort', () => reject(invocation.signal.reason));
          started();
        }),
    });
    const handling = handler.handle(delivery(request()));
    await running;
    cancelController.abort(new Error('cancelled'));
    await handling;
    expect(published[0]!.payload.outcome).toEqual({ kind: 'cancelled' });
    expect(results.json(resultKey)).toMatchObject({ outcome: { kind: 'cancelled' } });
  });

  it('on shutdown hands the call back, deleting the marker only when no request was sent', async () => {
    for (const sent of [false, true]) {
      const shutdown = new AbortController();
      const { handler, results, published } = setup({
        runTool: (invocation: ToolInvocation) =>
          new Promise<ToolOutcome>((_resolve, reject) => {
            if (sent) invocation.onExternalEffect();
            invocation.signal.addEventListener('abort', () => reject(invocation.signal.reason));
            setTimeout(() => shutdown.abort(new Error('shutting down')), 5);
          }),
      });
      const handedBack = await handler.handle(delivery(request(), { signal: shutdown.signal })).catch((caught: unknown) => caught);
      // The same error as the llm-worker's hand-back (one code for one situation).
      expect(handedBack).toBeInstanceOf(ShuttingDownError);
      expect(handedBack).toMatchObject({ code: 'shutting_down', retryable: true, retryAfterMs: 0 });
      expect(published).toHaveLength(0);
      expect(results.json(resultKey)).toBeUndefined();
      if (sent) expect(results.json(markerKey)).toMatchObject({ worker: 'worker-b' });
      else expect(results.json(markerKey)).toBeUndefined();
    }
  });

  it('refreshes the marker heartbeat (compare-and-swap) and the ack deadline while the call runs', async () => {
    vi.useFakeTimers();
    try {
      let clock = now;
      const working = vi.fn();
      let finishCall!: () => void;
      const { handler, results, log } = setup({
        runTool: () => new Promise<ToolOutcome>((resolve) => (finishCall = () => resolve({ kind: 'success', value: 'done' }))),
        deps: { now: () => clock, heartbeatMs: 1_000 },
      });
      const handling = handler.handle(delivery(request(), { working }));
      await vi.advanceTimersByTimeAsync(0);
      clock += 2_500;
      await vi.advanceTimersByTimeAsync(2_500);
      expect(working).toHaveBeenCalledTimes(2);
      expect(log.filter((entry) => entry === `update ${markerKey}`)).toHaveLength(2);
      expect(results.json(markerKey)).toMatchObject({ worker: 'worker-b', heartbeatAt: new Date(clock).toISOString() });
      finishCall();
      await handling;
      expect(log.at(-1)).toBe(`publish ${runId}:tool_result:s0c0`);
    } finally {
      vi.useRealTimers();
    }
  });

  it('answers a redelivery from memory when storing the result failed, without executing again', async () => {
    const { handler, results, runTool, published } = setup();
    const realCreate = results.create.bind(results);
    let failing = true;
    results.create = async (key, data) => {
      if (key === resultKey && failing) {
        throw new Error('nats: timeout');
      }
      return realCreate(key, data);
    };
    await expect(handler.handle(delivery(request()))).rejects.toMatchObject({ retryable: true });
    expect(results.json(markerKey)).toMatchObject({ worker: 'worker-b' });
    failing = false;
    await handler.handle(delivery(request(), { deliveryCount: 2 }));
    expect(runTool).toHaveBeenCalledTimes(1);
    expect(published[0]!.payload.outcome).toEqual({ kind: 'success', value: { text: 'hi' } });
  });

  it('counts calls, cache hits and outcome-unknown in its metrics', async () => {
    const { handler, results, metrics } = setup();
    await handler.handle(delivery(request()));
    await handler.handle(delivery(request()));
    results.seed('run_1.s0c1.started', marker('worker-a', 60_000));
    const second = request({ onOutcomeUnknown: 'fail' });
    second.payload.toolCallId = 's0c1';
    await handler.handle(delivery(second));
    const text = await metrics.render();
    expect(text).toContain('abide_tool_calls_total{tool="builtin:echo",outcome="success"} 1');
    expect(text).toContain('abide_tool_calls_total{tool="builtin:echo",outcome="outcome_unknown"} 1');
    expect(text).toContain('abide_tool_result_cache_hits_total{tool="builtin:echo"} 1');
    expect(text).toContain('abide_tool_outcome_unknown_total{tool="builtin:echo",policy="fail"} 1');
    expect(text).toContain('abide_tool_calls_in_flight 0');
    // Only the one execution is timed (the cache hit and the outcome-unknown call ran nothing).
    expect(text).toContain('abide_tool_call_duration_seconds_count{tool="builtin:echo",outcome="success"} 1');
    expect(text).not.toContain('abide_tool_call_duration_seconds_count{tool="builtin:echo",outcome="outcome_unknown"}');
  });

  it('times a call handed back on shutdown as handed_back', async () => {
    const shutdown = new AbortController();
    const { handler, metrics } = setup({
      runTool: (invocation: ToolInvocation) =>
        new Promise<ToolOutcome>((_resolve, reject) => {
          invocation.signal.addEventListener('abort', () => reject(invocation.signal.reason));
          shutdown.abort(new Error('shutting down'));
        }),
    });
    await expect(handler.handle(delivery(request(), { signal: shutdown.signal }))).rejects.toBeInstanceOf(ShuttingDownError);
    const text = await metrics.render();
    expect(text).toContain('abide_tool_call_duration_seconds_count{tool="builtin:echo",outcome="handed_back"} 1');
    expect(text).toContain('abide_tool_calls_in_flight 0');
  });

  it("labels metrics by tool kind, never by the tenant's tool name (finding 17)", async () => {
    const { handler, metrics } = setup({ runTool: async () => ({ kind: 'error', error: { code: 'tenant-chosen-code', message: 'no' } }) });
    for (const [index, name] of ['crm_lookup_tenant_a', 'crm_lookup_tenant_b', 'x'.repeat(64)].entries()) {
      const message = request({ name, kind: 'http', http: { url: 'https://tools.example/x' } });
      message.payload.toolCallId = `s0c${index}`;
      await handler.handle(delivery(message));
    }
    const text = await metrics.render();
    expect(text).toContain('abide_tool_calls_total{tool="http",outcome="error"} 3');
    expect(text).toContain('abide_tool_call_duration_seconds_count{tool="http",outcome="error"} 3');
    expect(text).not.toContain('crm_lookup');
    expect(text).not.toContain('tenant-chosen-code');
  });
});
