import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startHttpToolServer } from './harness/http-tool-server.ts';
import { bookerMilestones, readRunTransitions } from './harness/run-checks.ts';
import { Stack, testKeys } from './harness/stack.ts';

/**
 * Issue 2, end to end through the public API only: a scripted agent calls `echo`, then an HTTP
 * tool served by this test, then answers; the run is started and followed over WebSocket.
 */
describe('a durable run, end to end', () => {
  let stack: Stack;
  let tool: Awaited<ReturnType<typeof startHttpToolServer>>;

  beforeAll(async () => {
    tool = await startHttpToolServer((call) => ({ body: { booked: true, echo: call.body } }));
    stack = await Stack.start();
  });

  afterAll(async () => {
    await stack?.stop();
    await tool?.close();
  });

  function agentBody() {
    return {
      system: 'You are a test agent.',
      model: {
        provider: 'scripted',
        chunkSize: 4,
        steps: [
          { text: 'Echoing first.', toolCalls: [{ toolName: 'echo', args: { message: 'ping' } }] },
          { text: 'Now booking.', toolCalls: [{ toolName: 'book', args: { room: 'blue', nights: 2 } }] },
          { text: 'All done: the blue room is booked for 2 nights.' },
        ],
      },
      tools: [
        { name: 'echo', kind: 'builtin', description: 'Echo', inputSchema: { type: 'object', properties: { message: { type: 'string' } } } },
        { name: 'book', kind: 'http', description: 'Book a room', inputSchema: { type: 'object' }, http: { url: `${tool.url}/book` } },
      ],
      maxSteps: 10,
    };
  }

  it('runs echo, then the HTTP tool, then answers; events in order; resumable; tenant-scoped', { timeout: 120_000 }, async () => {
    const put = await stack.api(testKeys.a, 'PUT', '/v1/agents/booker', agentBody());
    expect(put.status, JSON.stringify(put.body)).toBe(200);
    expect(put.body.version).toBe(1);

    const socket = await stack.socket(testKeys.a);
    socket.send({ type: 'run.create', requestId: 'r1', agentId: 'booker', input: 'Book me the blue room for two nights.' });
    const created = await socket.waitFor((frame) => frame.type === 'run.created' && frame.requestId === 'r1');
    const runId: string = created.runId;
    let events: Record<string, any>[];
    try {
      events = await socket.untilTerminal(runId, 60_000);
    } catch (error) {
      throw new Error(`${(error as Error).message}\n${stack.logs()}`);
    }

    // Every event once, in order, with increasing seq, exactly one terminal event, last.
    const seqs = events.map((event) => event.seq);
    expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
    expect(new Set(seqs).size).toBe(seqs.length);
    expect(new Set(events.map((event) => event.eventId)).size).toBe(events.length);
    const terminal = events.filter((event) => ['run.completed', 'run.failed', 'run.cancelled'].includes(event.type));
    expect(terminal.map((event) => event.type)).toEqual(['run.completed']);
    expect(events.at(-1)!.type).toBe('run.completed');
    const milestones = events.filter((event) => event.type !== 'message.delta').map((event) => event.type);
    expect(milestones).toEqual(bookerMilestones);
    expect(events.some((event) => event.type === 'message.delta')).toBe(true);
    const toolResults = events.filter((event) => event.type === 'tool.result');
    expect(toolResults[0]).toMatchObject({ toolCallId: 's0c0', toolName: 'echo', result: { message: 'ping' } });
    expect(toolResults[1]).toMatchObject({ toolCallId: 's1c0', toolName: 'book', result: { booked: true, echo: { room: 'blue', nights: 2 } } });
    const completed = events.at(-1)!;
    expect(completed.output).toBe('All done: the blue room is booked for 2 nights.');

    // The HTTP tool was called once, with the run's idempotency key.
    expect(tool.calls).toHaveLength(1);
    expect(tool.calls[0]!.idempotencyKey).toBe(`${runId}:s1c0`);
    expect(tool.calls[0]!.body).toEqual({ room: 'blue', nights: 2 });

    // The run through the API, and in MongoDB.
    const view = await stack.api(testKeys.a, 'GET', `/v1/runs/${runId}`);
    expect(view.status).toBe(200);
    expect(view.body).toMatchObject({ runId, agentId: 'booker', status: 'completed', output: 'All done: the blue room is booked for 2 nights.', pendingApprovals: [] });
    const stored = await stack.db.collection('runs').findOne({ _id: runId as never });
    expect(stored).toMatchObject({ status: 'completed', output: 'All done: the blue room is booked for 2 nights.', tenantId: 'tenant-a', agentVersion: 1 });
    // A summary whose size does not grow with the run: no messages, tool calls of the past or agent.
    expect(stored!.messages).toBeUndefined();
    expect(stored!.toolCalls).toEqual([]);
    expect(stored!.agentSnapshot).toBeUndefined();
    expect(stored!.llmAttempts).toBeUndefined();
    // Folded from the stored deltas (each fits the state before it, versions without a gap).
    const transitions = await readRunTransitions(stack.db, runId);
    expect(transitions.map((doc) => doc.version)).toEqual(transitions.map((_doc, index) => index + 1));
    expect(transitions.at(-1)!.state.status).toBe('completed');

    // Another tenant sees nothing.
    const foreign = await stack.api(testKeys.b, 'GET', `/v1/runs/${runId}`);
    expect(foreign.status).toBe(404);
    expect(foreign.body.error.code).toBe('run_not_found');
    const foreignEvents = await stack.api(testKeys.b, 'GET', `/v1/runs/${runId}/events`);
    expect(foreignEvents.status).toBe(404);

    // A second WebSocket resumes from a mid-run seq and gets exactly the later events.
    const middle = events[Math.floor(events.length / 2)]!;
    const resumed = await stack.socket(testKeys.a);
    resumed.send({ type: 'subscribe', runId, after: middle.seq });
    const later = await resumed.untilTerminal(runId, 30_000);
    expect(later.map((event) => event.eventId)).toEqual(events.filter((event) => event.seq > middle.seq).map((event) => event.eventId));
    // Nothing more arrives after the terminal event.
    await sleep(500);
    expect(resumed.events(runId)).toHaveLength(later.length);

    // SSE replays the same events from the same cursor (Last-Event-ID wins over after).
    const sse = await stack.api(testKeys.a, 'GET', `/v1/runs/${runId}/events?after=0`, undefined, { 'last-event-id': String(middle.seq) });
    expect(sse.status).toBe(200);
    const sseIds = String(sse.body)
      .split('\n')
      .filter((line) => line.startsWith('id:'))
      .map((line) => Number(line.slice(3).trim()));
    expect(sseIds).toEqual(later.map((event) => event.seq));

    socket.close();
    resumed.close();
  });

  it('answers bad input with a stable code and writes nothing', async () => {
    expect((await stack.api(undefined, 'GET', '/v1/runs')).status).toBe(401);
    expect((await stack.api('wrong-key', 'GET', '/v1/runs')).body.error.code).toBe('unauthorized');
    const malformed = await stack.api(testKeys.a, 'POST', '/v1/runs', '{"agentId": ');
    expect([malformed.status, malformed.body.error.code]).toEqual([400, 'invalid_json']);
    const unknownAgent = await stack.api(testKeys.a, 'POST', '/v1/runs', { agentId: 'nobody', input: 'hi' });
    expect([unknownAgent.status, unknownAgent.body.error.code]).toEqual([404, 'agent_not_found']);
    const invalid = await stack.api(testKeys.a, 'POST', '/v1/runs', { agentId: 'booker' });
    expect([invalid.status, invalid.body.error.code]).toEqual([400, 'invalid_request']);
    const huge = await stack.api(testKeys.a, 'POST', '/v1/runs', { agentId: 'booker', input: 'x'.repeat(2 * 1024 * 1024) });
    expect([huge.status, huge.body.error.code]).toEqual([413, 'payload_too_large']);
    const badProvider = await stack.api(testKeys.a, 'PUT', '/v1/agents/bad', { model: { provider: 'nope' }, tools: [] });
    expect([badProvider.status, badProvider.body.error.code]).toEqual([400, 'invalid_request']);
    const badCursor = await stack.api(testKeys.a, 'GET', '/v1/runs/run_x/events?after=-1');
    expect([badCursor.status, badCursor.body.error.code]).toEqual([400, 'invalid_cursor']);
    expect(await stack.db.collection('runs').countDocuments({ agentId: 'nobody' })).toBe(0);
    expect(await stack.db.collection('agents').countDocuments({ agentId: 'bad' })).toBe(0);

    const socket = await stack.socket(testKeys.a);
    socket.send('not json');
    expect((await socket.waitFor((frame) => frame.type === 'error')).code).toBe('invalid_json');
    socket.send({ type: 'subscribe', runId: 'run_x', after: 'soon' });
    // A bad cursor is `invalid_cursor`, as over HTTP (issue 10).
    await socket.waitFor((frame) => frame.type === 'error' && frame.code === 'invalid_cursor');
    socket.send({ type: 'ping' });
    await socket.waitFor((frame) => frame.type === 'pong');
    socket.close();
  });

  it('answers a repeated Idempotency-Key with the same run, and another body with 422', async () => {
    const body = { agentId: 'booker', input: 'hello again' };
    const first = await stack.api(testKeys.a, 'POST', '/v1/runs', body, { 'idempotency-key': 'order-42' });
    expect(first.status).toBe(201);
    const again = await stack.api(testKeys.a, 'POST', '/v1/runs', body, { 'idempotency-key': 'order-42' });
    expect(again.status).toBe(200);
    expect(again.body.runId).toBe(first.body.runId);
    const other = await stack.api(testKeys.a, 'POST', '/v1/runs', { ...body, input: 'different' }, { 'idempotency-key': 'order-42' });
    expect([other.status, other.body.error.code]).toEqual([422, 'idempotency_key_reused']);
    expect(await stack.db.collection('runs').countDocuments({ _id: first.body.runId })).toBe(1);
  });

  it('a new run takes the agent version in force: a PUT takes effect for the next run, and a tenant never gets another\'s agent of the same id', { timeout: 60_000 }, async () => {
    const agent = (system: string) => ({ system, model: { provider: 'scripted', steps: [{ text: 'hi' }] }, tools: [] });
    const snapshotOf = async (key: string) => {
      const created = await stack.api(key, 'POST', '/v1/runs', { agentId: 'greeter', input: 'hello' });
      expect(created.status, JSON.stringify(created.body)).toBe(201);
      const [first] = await readRunTransitions(stack.db, created.body.runId);
      const { tenantId, version, system } = first!.state.agentSnapshot;
      return { tenantId, version, system };
    };
    expect((await stack.api(testKeys.a, 'PUT', '/v1/agents/greeter', agent('a, first'))).status).toBe(200);
    expect(await snapshotOf(testKeys.a)).toEqual({ tenantId: 'tenant-a', version: 1, system: 'a, first' });
    // The gateway has version 1 cached now; the PUT's version 2 is what the next run gets.
    expect((await stack.api(testKeys.a, 'PUT', '/v1/agents/greeter', agent('a, second'))).body.version).toBe(2);
    expect(await snapshotOf(testKeys.a)).toEqual({ tenantId: 'tenant-a', version: 2, system: 'a, second' });
    // Another tenant's agent of the same id: its own, before and after it exists.
    const missing = await stack.api(testKeys.b, 'POST', '/v1/runs', { agentId: 'greeter', input: 'hello' });
    expect([missing.status, missing.body.error.code]).toEqual([404, 'agent_not_found']);
    expect((await stack.api(testKeys.b, 'PUT', '/v1/agents/greeter', agent('b, first'))).status).toBe(200);
    expect(await snapshotOf(testKeys.b)).toEqual({ tenantId: 'tenant-b', version: 1, system: 'b, first' });
    expect(await snapshotOf(testKeys.a)).toEqual({ tenantId: 'tenant-a', version: 2, system: 'a, second' });
  });
});
