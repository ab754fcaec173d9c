import { createServer, type Server } from 'node:http';
import { gunzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { unpackTransition } from '@abide/shared';
import { waitForStatus } from './harness/run-checks.ts';
import { Stack, testKeys } from './harness/stack.ts';

/**
 * Issue 10, traces: the four services export their spans over OTLP/HTTP (JSON encoding) to a
 * receiver in this test; one run is one trace, from the gateway's `POST /v1/runs` through every
 * orchestrator transition and publish to each model step and tool call, with every parent
 * present; a run suspended for an approval resumes in the same trace, linked to the decision's
 * request (docs/decisions.md "Operations"); and a transition whose orchestrator was killed before
 * its publish is published by the next process in the trace stored with it.
 */

type AttributeValue = { stringValue?: string; intValue?: string | number; boolValue?: boolean; doubleValue?: number; arrayValue?: { values: AttributeValue[] } };
type OtlpSpan = {
  traceId: string;
  spanId: string;
  parentSpanId?: string;
  name: string;
  kind: number;
  attributes?: { key: string; value: AttributeValue }[];
  links?: { traceId: string; spanId: string; attributes?: { key: string; value: AttributeValue }[] }[];
  status?: { code?: number };
};
/** A received span with its resource's `service.name` and its attributes flattened. */
type Received = OtlpSpan & { service: string; attrs: Record<string, unknown> };

const spanKind = { internal: 1, server: 2, client: 3, producer: 4, consumer: 5 } as const;

function valueOf(value: AttributeValue): unknown {
  if (value.stringValue !== undefined) return value.stringValue;
  if (value.intValue !== undefined) return Number(value.intValue);
  if (value.boolValue !== undefined) return value.boolValue;
  if (value.doubleValue !== undefined) return value.doubleValue;
  if (value.arrayValue) return value.arrayValue.values.map(valueOf);
  return undefined;
}

function flatten(attributes: { key: string; value: AttributeValue }[] | undefined): Record<string, unknown> {
  return Object.fromEntries((attributes ?? []).map(({ key, value }) => [key, valueOf(value)]));
}

/** A minimal OTLP/HTTP traces receiver (JSON encoding): every span it was sent, by arrival. */
async function startOtlpReceiver(): Promise<{ url: string; spans: Received[]; requests: () => number; close(): Promise<void> }> {
  const spans: Received[] = [];
  let requests = 0;
  const server: Server = createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      requests += 1;
      if (request.method !== 'POST' || request.url !== '/v1/traces' || !String(request.headers['content-type']).startsWith('application/json')) {
        response.writeHead(415).end();
        return;
      }
      const raw = Buffer.concat(chunks);
      const body = JSON.parse((request.headers['content-encoding'] === 'gzip' ? gunzipSync(raw) : raw).toString('utf8')) as {
        resourceSpans?: { resource?: { attributes?: { key: string; value: AttributeValue }[] }; scopeSpans?: { spans?: OtlpSpan[] }[] }[];
      };
      for (const resourceSpans of body.resourceSpans ?? []) {
        const service = String(flatten(resourceSpans.resource?.attributes)['service.name']);
        for (const scope of resourceSpans.scopeSpans ?? []) {
          for (const span of scope.spans ?? []) spans.push({ ...span, service, attrs: flatten(span.attributes) });
        }
      }
      response.writeHead(200, { 'content-type': 'application/json' }).end('{}');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address() as { port: number };
  return {
    url: `http://127.0.0.1:${address.port}`,
    spans,
    requests: () => requests,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

/** Polls `check` (condition-based) until it returns a value, or fails with what it saw last. */
async function pollFor<T>(what: string, check: () => T | undefined, describeLast: () => string, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const found = check();
    if (found !== undefined) return found;
    if (Date.now() > deadline) throw new Error(`${what} not received within ${timeoutMs} ms; ${describeLast()}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

const isRoot = (span: Received) => !span.parentSpanId;

describe('traces across the four services', () => {
  let stack: Stack;
  let receiver: Awaited<ReturnType<typeof startOtlpReceiver>>;
  const secretInput = 'trace-test-secret-input-7f3a';
  const secretArg = 'trace-test-secret-arg-91c2';

  beforeAll(async () => {
    receiver = await startOtlpReceiver();
    stack = await Stack.start({
      env: { OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url, OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json', OTEL_BSP_SCHEDULE_DELAY: '100' },
    });
    const echoTool = (needsApproval: boolean) => ({ name: 'echo', kind: 'builtin', needsApproval, inputSchema: { type: 'object', properties: { note: { type: 'string' } } } });
    for (const [agentId, needsApproval] of [
      ['tracer', false],
      ['tracer-approval', true],
    ] as const) {
      const put = await stack.api(testKeys.a, 'PUT', `/v1/agents/${agentId}`, {
        model: { provider: 'scripted', steps: [{ text: 'Calling.', toolCalls: [{ toolName: 'echo', args: { note: secretArg } }] }, { text: 'Done.' }] },
        tools: [echoTool(needsApproval)],
      });
      expect(put.status, JSON.stringify(put.body)).toBe(200);
    }
  }, 120_000);

  afterAll(async () => {
    await stack?.stop();
    await receiver?.close();
  });

  /** The spans of a trace. */
  const traceOf = (traceId: string) => receiver.spans.filter((span) => span.traceId === traceId);
  const byId = (spanId: string) => receiver.spans.find((span) => span.spanId === spanId);
  const ancestors = (span: Received): Received[] => {
    const chain: Received[] = [];
    for (let parent = span.parentSpanId ? byId(span.parentSpanId) : undefined; parent; parent = parent.parentSpanId ? byId(parent.parentSpanId) : undefined) chain.push(parent);
    return chain;
  };
  const summary = () => receiver.spans.map((span) => `${span.service}:${span.name}`).join(', ') || `(no spans; ${receiver.requests()} export requests)`;

  /**
   * Waits until the run's trace is whole: its transitions up to `finalStatus`, two model steps,
   * a tool call, from the four services, every parent received. Returns the run's trace id.
   */
  async function wholeRunTrace(runId: string, finalStatus: string): Promise<{ traceId: string; spans: Received[] }> {
    return pollFor(
      `the whole trace of ${runId}`,
      () => {
        const transitions = receiver.spans.filter((span) => span.name === 'run.transition' && span.attrs['abide.run.id'] === runId);
        if (!transitions.some((span) => span.attrs['abide.run.status'] === finalStatus)) return undefined;
        const traceId = transitions[0]!.traceId;
        const spans = traceOf(traceId);
        const steps = spans.filter((span) => span.name === 'llm.step' && span.attrs['abide.outcome'] === 'finished');
        const calls = spans.filter((span) => span.name === 'tool.call' && span.attrs['abide.tool.outcome']);
        if (steps.length < 2 || calls.length < 1) return undefined;
        if (spans.some((span) => span.parentSpanId && !byId(span.parentSpanId))) return undefined;
        return { traceId, spans };
      },
      summary,
    );
  }

  it('one run with a tool call is one trace: gateway → orchestrator → llm-worker / tool-worker, every parent present', { timeout: 120_000 }, async () => {
    // A caller's own trace context is linked, never continued: a tenant does not choose the trace its run is in.
    const callerTraceId = 'abcdef0123456789abcdef0123456789';
    const created = await stack.api(testKeys.a, 'POST', '/v1/runs', { agentId: 'tracer', input: secretInput }, { traceparent: `00-${callerTraceId}-0123456789abcdef-01` });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    const runId: string = created.body.runId;
    await waitForStatus(stack, testKeys.a, runId, ['completed']);
    const { traceId, spans } = await wholeRunTrace(runId, 'completed');

    // Every transition of the run (versions 2…) is in this one trace.
    const transitions = receiver.spans.filter((span) => span.name === 'run.transition' && span.attrs['abide.run.id'] === runId);
    expect(new Set(transitions.map((span) => span.traceId))).toEqual(new Set([traceId]));
    expect(transitions.map((span) => span.attrs['abide.cause.kind']).sort()).toEqual(['llm_result', 'llm_result', 'start', 'tool_result'].sort());
    for (const span of transitions) expect(span.attrs).toMatchObject({ 'abide.tenant.id': 'tenant-a', 'abide.run.version': expect.any(Number), 'abide.run.step': expect.any(Number) });

    // Spans from all four services.
    expect(new Set(spans.map((span) => span.service))).toEqual(new Set(['gateway', 'orchestrator', 'llm-worker', 'tool-worker']));

    // One root: the gateway's server span of the request that created the run.
    const roots = spans.filter(isRoot);
    expect(roots.map((span) => [span.service, span.name, span.kind])).toEqual([['gateway', 'POST /v1/runs', spanKind.server]]);
    expect(roots[0]!.attrs).toMatchObject({ 'http.route': '/v1/runs', 'http.response.status_code': 201 });
    expect(traceId).not.toBe(callerTraceId);
    expect(roots[0]!.links?.map((link) => [link.traceId, link.spanId])).toEqual([[callerTraceId, '0123456789abcdef']]);

    // Every other span's parent is a received span of the same trace.
    for (const span of spans.filter((candidate) => !isRoot(candidate))) {
      const parent = byId(span.parentSpanId!);
      expect(parent, `parent of ${span.service}:${span.name}`).toBeDefined();
      expect(parent!.traceId).toBe(traceId);
    }

    // Model steps and tool calls hang off the orchestrator: their parent is its publish (a
    // producer span) of the request, itself under a run.transition.
    const work = spans.filter((span) => span.name === 'llm.step' || span.name === 'tool.call');
    expect(work.map((span) => span.service).sort()).toEqual(['llm-worker', 'llm-worker', 'tool-worker']);
    for (const span of work) {
      const parent = byId(span.parentSpanId!)!;
      expect([parent.service, parent.kind], `${span.name}'s parent ${parent.name}`).toEqual(['orchestrator', spanKind.producer]);
      expect(ancestors(span).some((ancestor) => ancestor.service === 'orchestrator' && ancestor.name === 'run.transition')).toBe(true);
    }
    const call = work.find((span) => span.name === 'tool.call')!;
    expect(call.attrs).toMatchObject({ 'gen_ai.tool.name': 'echo', 'gen_ai.tool.call.id': 's0c0', 'abide.tool.outcome': 'success' });
    const steps = work.filter((span) => span.name === 'llm.step');
    expect(steps.map((span) => span.attrs['abide.run.step']).sort()).toEqual([0, 1]);
    for (const step of steps) expect(step.attrs).toMatchObject({ 'gen_ai.request.model': 'scripted', 'abide.attempt': 1, 'gen_ai.usage.output_tokens': expect.any(Number) });

    // Results flow back: each transition after the start is a child of the worker's publish of its cause.
    for (const transition of transitions.filter((span) => span.attrs['abide.cause.kind'] !== 'start')) {
      const parent = byId(transition.parentSpanId!)!;
      expect(parent.kind).toBe(spanKind.producer);
      expect(parent.service).toBe(transition.attrs['abide.cause.kind'] === 'tool_result' ? 'tool-worker' : 'llm-worker');
    }

    // Bounded attributes: neither the run's input nor a tool's arguments reach a span.
    const everything = JSON.stringify(spans);
    expect(everything).not.toContain(secretInput);
    expect(everything).not.toContain(secretArg);
  });

  it('a run suspended for an approval resumes in its own trace, linked to the decision request', { timeout: 120_000 }, async () => {
    const created = await stack.api(testKeys.a, 'POST', '/v1/runs', { agentId: 'tracer-approval', input: 'needs a person' });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    const runId: string = created.body.runId;
    await waitForStatus(stack, testKeys.a, runId, ['suspended']);
    const decided = await stack.api(testKeys.a, 'POST', `/v1/runs/${runId}/approvals/s0c0`, { approved: true });
    expect([decided.status, decided.body.status]).toEqual([202, 'accepted']);
    await waitForStatus(stack, testKeys.a, runId, ['completed']);
    const { traceId, spans } = await wholeRunTrace(runId, 'completed');

    // Every transition of the run, before and after the wait, is in the run's one trace.
    const transitions = receiver.spans.filter((span) => span.name === 'run.transition' && span.attrs['abide.run.id'] === runId);
    expect(new Set(transitions.map((span) => span.traceId))).toEqual(new Set([traceId]));
    expect(spans.filter(isRoot).map((span) => span.name)).toEqual(['POST /v1/runs']);

    // The resumption: a child of the suspended transition (not of the decision), linked to the
    // decision's request, whose trace is its own (rooted at the approval route's server span).
    const resumed = transitions.find((span) => span.attrs['abide.cause.kind'] === 'approval_decision');
    expect(resumed, transitions.map((span) => span.attrs['abide.cause.kind']).join(', ')).toBeDefined();
    const parent = byId(resumed!.parentSpanId!)!;
    expect([parent.name, parent.attrs['abide.run.id'], parent.attrs['abide.run.status']]).toEqual(['run.transition', runId, 'suspended']);
    expect(resumed!.links).toHaveLength(1);
    const link = resumed!.links![0]!;
    expect(link.traceId).not.toBe(traceId);
    const linked = await pollFor('the decision request spans', () => {
      const found = byId(link.spanId);
      const root = found && [found, ...ancestors(found)].at(-1);
      return root && isRoot(root) ? { found, root } : undefined;
    }, summary);
    expect(linked.found.service).toBe('gateway');
    expect(linked.found.traceId).toBe(link.traceId);
    expect([linked.root.name, linked.root.kind]).toEqual(['POST /v1/runs/:runId/approvals/:toolCallId', spanKind.server]);

    // The tool call approved runs in the run's trace, after the resumption.
    const call = spans.find((span) => span.name === 'tool.call')!;
    expect(ancestors(call)).toContainEqual(expect.objectContaining({ spanId: resumed!.spanId }));
  });

  it('a transition committed by an orchestrator killed before its publish is published by the next one, still in the run trace', { timeout: 150_000 }, async () => {
    const orchestrator = stack.service('orchestrator');
    // Its 2nd commit from now is the run's model result of step 0, whose outbox holds the tool request.
    await orchestrator.restart({ ABIDE_CRASH_POINTS: 'orchestrator.after_commit@2' });
    const created = await stack.api(testKeys.a, 'POST', '/v1/runs', { agentId: 'tracer', input: 'survive a crash' });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    const runId: string = created.body.runId;
    expect(await orchestrator.exited()).toBeNull(); // SIGKILLed by the crash point
    const stored = await stack.db.collection('run_transitions').findOne({ _id: `${runId}:3` as never });
    const committed = stored ? unpackTransition(stored) : null;
    expect(committed?.outbox.map((entry) => entry.kind)).toContain('tool_request');
    const [, runTraceId, crashedSpanId] = committed!.traceparent!.split('-');
    orchestrator.start();
    await orchestrator.waitReady();
    // The model result comes back after ack_wait; the new process publishes version 3's outbox first.
    await waitForStatus(stack, testKeys.a, runId, ['completed'], 120_000);

    const call = await pollFor('the tool call of the crashed transition', () => receiver.spans.find((span) => span.name === 'tool.call' && span.attrs['abide.run.id'] === runId), summary);
    expect(call.traceId).toBe(runTraceId);
    const publish = await pollFor('its publish', () => byId(call.parentSpanId!), summary);
    expect([publish.service, publish.name, publish.kind]).toEqual(['orchestrator', 'publish tool.request', spanKind.producer]);
    // The parent the successor gave it is the killed process's span, read from the stored transition.
    expect(publish.parentSpanId).toBe(crashedSpanId);
    // Every transition exported (the killed one's span never was) is in the run's trace.
    const transitions = await pollFor(
      'the completed transition',
      () => {
        const found = receiver.spans.filter((span) => span.name === 'run.transition' && span.attrs['abide.run.id'] === runId);
        return found.some((span) => span.attrs['abide.run.status'] === 'completed') ? found : undefined;
      },
      summary,
    );
    expect(transitions.map((span) => span.spanId)).not.toContain(crashedSpanId);
    expect(new Set(transitions.map((span) => span.traceId))).toEqual(new Set([runTraceId]));
  });
});
