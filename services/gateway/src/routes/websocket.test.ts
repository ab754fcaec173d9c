import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { WebSocket } from 'ws';
import { auth, createTestApp, keys, scriptedAgent, type TestApp } from '../testing/test-app.ts';

let t: TestApp;
let runId: string;
const usage = { inputTokens: 1, outputTokens: 1, totalTokens: 2 };

async function setup(overrides: Parameters<typeof createTestApp>[0] = {}) {
  t = createTestApp(overrides);
  await t.app.inject({ method: 'PUT', url: '/v1/agents/helper', headers: auth(), payload: scriptedAgent });
  runId = (await t.app.inject({ method: 'POST', url: '/v1/runs', headers: auth(), payload: { agentId: 'helper', input: 'hi' } })).json().runId;
  await t.app.ready();
}
beforeEach(async () => {
  await setup();
});
afterEach(async () => {
  await t.app.close();
});

type Frame = Record<string, unknown> & { type: string };

/** A client that created a run with `run.create`, once the run's reader is open. */
async function createOverSocket() {
  const client = await connect();
  client.send({ type: 'run.create', requestId: 'q1', agentId: 'helper', input: 'hello' });
  const createdRunId = (await client.next((frame) => frame.type === 'run.created')).runId as string;
  await expect.poll(() => t.events.openReaders).toBe(1);
  return { client, createdRunId };
}

/** A test client: every frame received, and a way to wait for the next matching one. */
async function connect(headers: Record<string, string> = auth(), path = '/v1/ws') {
  const frames: Frame[] = [];
  const waiting: { match: (frame: Frame) => boolean; resolve: (frame: Frame) => void }[] = [];
  let closeCode: number | undefined;
  const socket: WebSocket = await t.app.injectWS(path, { headers });
  const closed = new Promise<number>((resolve) => socket.on('close', (code) => resolve((closeCode = code))));
  socket.on('message', (data) => {
    const frame = JSON.parse(String(data)) as Frame;
    frames.push(frame);
    for (const waiter of [...waiting]) {
      if (waiter.match(frame)) {
        waiting.splice(waiting.indexOf(waiter), 1);
        waiter.resolve(frame);
      }
    }
  });
  return {
    socket,
    frames,
    closed,
    get closeCode() {
      return closeCode;
    },
    send: (value: unknown) => socket.send(typeof value === 'string' ? value : JSON.stringify(value)),
    next(match: (frame: Frame) => boolean): Promise<Frame> {
      const seen = frames.find(match);
      if (seen) {
        frames.splice(frames.indexOf(seen), 1);
        return Promise.resolve(seen);
      }
      return new Promise((resolve) =>
        waiting.push({
          match,
          resolve: (frame) => {
            frames.splice(frames.indexOf(frame), 1);
            resolve(frame);
          },
        }),
      );
    },
  };
}

const tick = (ms = 10) => sleep(ms);

describe('WebSocket /v1/ws', () => {
  it('answers a bad frame with an error frame and keeps the socket open', async () => {
    const client = await connect();
    client.send('{not json');
    expect(await client.next((frame) => frame.type === 'error')).toMatchObject({ code: 'invalid_json' });
    client.send({ type: 'teleport', requestId: 'r1' });
    expect(await client.next((frame) => frame.type === 'error')).toMatchObject({ code: 'invalid_request', requestId: 'r1' });
    client.send({ type: 'subscribe', runId: 'bad id' });
    expect(await client.next((frame) => frame.type === 'error')).toMatchObject({ code: 'invalid_request', message: expect.stringContaining('frame.runId') });
    client.send({ type: 'ping' });
    expect(await client.next((frame) => frame.type === 'pong')).toEqual({ type: 'pong' });
    client.socket.terminate();
  });

  it('answers a bad subscribe cursor with invalid_cursor, the code HTTP answers for the same cursor', async () => {
    const client = await connect();
    for (const after of [-1, 1.5, '3', Number.MAX_SAFE_INTEGER * 4]) {
      client.send({ type: 'subscribe', runId, after });
      expect(await client.next((frame) => frame.type === 'error'), String(after)).toMatchObject({ code: 'invalid_cursor', runId, message: expect.stringContaining('frame.after') });
    }
    const http = await t.app.inject({ method: 'GET', url: `/v1/runs/${runId}/events?after=-1`, headers: auth() });
    expect(http.json().error.code).toBe('invalid_cursor');
    // A frame with other faults besides its cursor is invalid_request.
    client.send({ type: 'subscribe', runId: 'bad id', after: -1 });
    expect(await client.next((frame) => frame.type === 'error')).toMatchObject({ code: 'invalid_request' });
    client.socket.terminate();
  });

  it('refuses a missing key (401) and a browser origin not allowed (403) before the upgrade; accepts ?access_token=', async () => {
    await expect(t.app.injectWS('/v1/ws', { headers: {} })).rejects.toThrow(/401/);
    await expect(t.app.injectWS('/v1/ws', { headers: { ...auth(), origin: 'https://evil.example' } })).rejects.toThrow(/403/);
    const allowed = await connect({ ...auth(), origin: 'https://app.example' });
    allowed.socket.terminate();
    const viaQuery = await connect({}, `/v1/ws?access_token=${keys.t1}`);
    viaQuery.send({ type: 'ping' });
    expect(await viaQuery.next((frame) => frame.type === 'pong')).toBeTruthy();
    viaQuery.socket.terminate();
  });

  it('streams a subscribed run to its terminal event, and resumes after a seq', async () => {
    const client = await connect();
    client.send({ type: 'subscribe', runId });
    await tick();
    t.events.emit(runId, 't1', `${runId}:2:0`, 'run.started', { agentId: 'helper', agentVersion: 1, conversationId: 'c' });
    t.events.emit(runId, 't1', `${runId}:3:0`, 'run.completed', { output: 'x', usage });
    t.events.emit(runId, 't1', 'late', 'message.delta', { step: 3, attempt: 1, text: 'x' });
    expect(await client.next((frame) => frame.type === 'event')).toMatchObject({ runId, event: { seq: 1, type: 'run.started' } });
    expect(await client.next((frame) => frame.type === 'event')).toMatchObject({ runId, event: { seq: 2, type: 'run.completed' } });
    await tick();
    expect(client.frames.filter((frame) => frame.type === 'event')).toEqual([]);
    expect(t.live.counts().subscriptions).toBe(0);

    client.send({ type: 'subscribe', runId, after: 1 });
    expect(await client.next((frame) => frame.type === 'event')).toMatchObject({ event: { seq: 2 } });
    client.socket.terminate();
  });

  it("answers another tenant's run like a missing one", async () => {
    const client = await connect(auth('t2'));
    client.send({ type: 'subscribe', runId });
    expect(await client.next((frame) => frame.type === 'error')).toMatchObject({ code: 'run_not_found', runId });
    client.send({ type: 'cancel', requestId: 'c1', runId });
    expect(await client.next((frame) => frame.type === 'error')).toMatchObject({ code: 'run_not_found', requestId: 'c1' });
    client.socket.terminate();
  });

  it('creates a run with the same function as POST /v1/runs and follows it from its first event', async () => {
    const client = await connect();
    client.send({ type: 'run.create', requestId: 'q1', agentId: 'helper', input: 'hello', idempotencyKey: 'ws-1' });
    const created = await client.next((frame) => frame.type === 'run.created');
    expect(created).toMatchObject({ requestId: 'q1', status: 'queued', runId: expect.stringMatching(/^run_k/) });
    const createdRunId = created.runId as string;
    expect(t.memory.transitions.get(`${createdRunId}:1`)).toBeDefined();
    // the same idempotency key over HTTP with the same body answers the same run
    const http = await t.app.inject({ method: 'POST', url: '/v1/runs', headers: { ...auth(), 'idempotency-key': 'ws-1' }, payload: { agentId: 'helper', input: 'hello' } });
    expect(http.statusCode).toBe(200);
    expect(http.json().runId).toBe(createdRunId);
    await tick();
    t.events.emit(createdRunId, 't1', `${createdRunId}:2:0`, 'run.started', { agentId: 'helper', agentVersion: 1, conversationId: 'c' });
    expect(await client.next((frame) => frame.type === 'event')).toMatchObject({ runId: createdRunId, event: { type: 'run.started' } });
    client.send({ type: 'run.create', requestId: 'q2', agentId: 'nobody', input: 'hello' });
    expect(await client.next((frame) => frame.type === 'error')).toMatchObject({ requestId: 'q2', code: 'agent_not_found' });
    client.socket.terminate();
  });

  it('follows a run it created from its first event without reading the run', async () => {
    const client = await connect();
    // A read of a run would never answer: neither the creation nor the following reads one.
    let reads = 0;
    t.memory.store.loadRun = () => {
      reads += 1;
      return new Promise(() => {});
    };
    t.memory.store.loadRunSummary = () => {
      reads += 1;
      return new Promise(() => {});
    };
    client.send({ type: 'run.create', requestId: 'q1', agentId: 'helper', input: 'hello' });
    const createdRunId = (await client.next((frame) => frame.type === 'run.created')).runId as string;
    await expect.poll(() => t.events.openReaders).toBe(1);
    t.events.emit(createdRunId, 't1', `${createdRunId}:2:0`, 'run.started', { agentId: 'helper', agentVersion: 1, conversationId: 'c' });
    expect(await client.next((frame) => frame.type === 'event')).toMatchObject({ runId: createdRunId, event: { type: 'run.started', eventId: `${createdRunId}:2:0` } });
    expect(reads).toBe(0);
    client.socket.terminate();
  });

  it('refuses a run it created whose first event was discarded before its reader read it, and forwards nothing', async () => {
    const { client, createdRunId } = await createOverSocket();
    // The run's first event is published and discarded by the size limit (EVENTS_MAX_BYTES) in
    // one turn, before the reader gets to it; the reader's first message is the run's second event.
    const first = t.events.emit(createdRunId, 't1', `${createdRunId}:2:0`, 'run.started', { agentId: 'helper', agentVersion: 1, conversationId: 'c' });
    t.events.expireBefore(first + 1);
    t.memory.advance(createdRunId, (state) => void (state.status = 'running'));
    t.events.emit(createdRunId, 't1', `${createdRunId}:2:1`, 'tool.call', { step: 0, toolCallId: 's0c0', toolName: 'echo', args: {}, needsApproval: false });
    expect(await client.next((frame) => frame.type === 'error')).toMatchObject({ runId: createdRunId, code: 'cursor_expired' });
    await expect.poll(() => t.events.openReaders).toBe(0);
    expect(client.frames.filter((frame) => frame.type === 'event')).toEqual([]);
    client.socket.terminate();
  });

  describe('with a quiet reader checked after 50 ms', () => {
    beforeEach(async () => {
      await t.app.close();
      await setup({ createdRunCheckMs: 50 });
    });

    it('checks a run it created once its reader has read nothing for a while, and refuses it when every event of the run is gone', async () => {
      const { client, createdRunId } = await createOverSocket();
      // The whole run is published and ended, and all of its events discarded, before the reader reads any.
      const first = t.events.emit(createdRunId, 't1', `${createdRunId}:2:0`, 'run.started', { agentId: 'helper', agentVersion: 1, conversationId: 'c' });
      const last = t.events.emit(createdRunId, 't1', `${createdRunId}:2:1`, 'run.completed', { output: 'done', usage });
      t.events.expireBefore(last + 1);
      expect(last).toBeGreaterThan(first);
      // The stream holds other runs' events (it discarded this run's to stay under its size limit).
      t.events.emit('run_other', 't1', 'run_other:2:0', 'run.started', { agentId: 'helper', agentVersion: 1, conversationId: 'o' });
      t.memory.advance(createdRunId, (state) => void (state.status = 'completed'));
      expect(await client.next((frame) => frame.type === 'error')).toMatchObject({ runId: createdRunId, code: 'cursor_expired' });
      await expect.poll(() => t.events.openReaders).toBe(0);
      expect(client.frames.filter((frame) => frame.type === 'event')).toEqual([]);
      client.socket.terminate();
    });

    it('keeps following a run it created when the check of a quiet reader fails (the store is unreachable), and forwards its events once they come', async () => {
      // Unreachable from the start (the creation reads no run, so only the reader's check asks).
      let checks = 0;
      t.memory.store.loadRunSummary = async () => {
        checks += 1;
        throw new Error('store unreachable (fake)');
      };
      const { client, createdRunId } = await createOverSocket();
      // The reader reads nothing; its check fails, and is tried again.
      await expect.poll(() => checks).toBeGreaterThanOrEqual(2);
      t.events.emit(createdRunId, 't1', `${createdRunId}:2:0`, 'run.started', { agentId: 'helper', agentVersion: 1, conversationId: 'c' });
      expect(await client.next((frame) => frame.type === 'event')).toMatchObject({ runId: createdRunId, event: { type: 'run.started' } });
      expect(client.frames.filter((frame) => frame.type === 'error')).toEqual([]);
      client.socket.terminate();
    });
  });

  it('cancels and decides approvals with acks, and errors with the HTTP codes', async () => {
    const client = await connect();
    client.send({ type: 'cancel', requestId: 'c1', runId, reason: 'stop' });
    expect(await client.next((frame) => frame.type === 'ack')).toEqual({ type: 'ack', requestId: 'c1', status: 'accepted' });
    expect(t.bus.published.at(-1)).toMatchObject({ subject: `run.in.${runId}.cancel`, msgId: `${runId}:cancel` });
    client.send({ type: 'approval', requestId: 'a1', runId, toolCallId: 's0c0', approved: true });
    expect(await client.next((frame) => frame.type === 'error')).toMatchObject({ requestId: 'a1', code: 'approval_not_found' });
    t.memory.advance(runId, (state) => {
      state.status = 'suspended';
      state.toolCalls = [{ toolCallId: 's0c0', providerToolCallId: 'p', step: 0, toolName: 'echo', args: { text: 'a' }, needsApproval: true, state: 'awaiting_approval' }];
      state.pendingApprovals = ['s0c0'];
    });
    client.send({ type: 'approval', requestId: 'a2', runId, toolCallId: 's0c0', approved: true });
    expect(await client.next((frame) => frame.type === 'ack')).toEqual({ type: 'ack', requestId: 'a2', status: 'accepted' });
    client.send({ type: 'approval', requestId: 'a3', runId, toolCallId: 's0c0', approved: true });
    expect(await client.next((frame) => frame.type === 'ack')).toEqual({ type: 'ack', requestId: 'a3', status: 'already_decided' });
    t.memory.advance(runId, (state) => void (state.status = 'cancelled'));
    client.send({ type: 'cancel', requestId: 'c2', runId });
    expect(await client.next((frame) => frame.type === 'error')).toMatchObject({ requestId: 'c2', code: 'run_finished' });
    client.socket.terminate();
  });

  it('caps subscriptions per socket, and unsubscribes', async () => {
    await t.app.close();
    await setup({ streaming: { heartbeatMs: 60_000, maxSubscriptionsPerSocket: 1 } });
    const client = await connect();
    client.send({ type: 'subscribe', runId });
    await tick();
    expect(t.live.counts().subscriptions).toBe(1);
    client.send({ type: 'subscribe', runId: 'run_other' });
    expect(await client.next((frame) => frame.type === 'error')).toMatchObject({ code: 'rate_limited' });
    client.send({ type: 'unsubscribe', runId });
    await tick();
    expect(t.live.counts().subscriptions).toBe(0);
    expect(t.events.openReaders).toBe(0);
    client.socket.terminate();
  });

  it('sends heartbeats, closes a slow client with 1013, and closes sockets with 1001 on shutdown', async () => {
    await t.app.close();
    await setup({ streaming: { heartbeatMs: 20, wsHighWaterMarkBytes: -1 } });
    const slow = await connect();
    // every send passes a negative high-water mark: the first heartbeat closes it
    expect(await slow.closed).toBe(1013);

    await t.app.close();
    await setup({ streaming: { heartbeatMs: 20 } });
    const client = await connect();
    expect(await client.next((frame) => frame.type === 'pong')).toEqual({ type: 'pong' });
    client.send({ type: 'subscribe', runId });
    await tick();
    expect(t.live.counts()).toMatchObject({ websockets: 1, subscriptions: 1 });
    t.live.closeAll();
    expect(await client.closed).toBe(1001);
    await tick();
    expect(t.live.counts()).toMatchObject({ websockets: 0, subscriptions: 0 });
    expect(t.events.openReaders).toBe(0);
  });

  it('closes the socket with 1009 on a frame over WS_MAX_FRAME_BYTES', async () => {
    const client = await connect();
    client.send({ type: 'ping', padding: 'x'.repeat(20 * 1024) });
    expect(await client.closed).toBe(1009);
  });

  it('answers frames beyond the in-flight cap with too_many_in_flight and keeps the socket open', async () => {
    await t.app.close();
    await setup({ streaming: { heartbeatMs: 60_000, maxInFlightPerSocket: 2 } });
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const loadRun = t.memory.store.loadRun.bind(t.memory.store);
    t.memory.store.loadRun = async (id) => {
      await gate;
      return loadRun(id);
    };
    const client = await connect();
    for (const requestId of ['c1', 'c2', 'c3']) client.send({ type: 'cancel', requestId, runId });
    expect(await client.next((frame) => frame.type === 'error')).toMatchObject({ code: 'too_many_in_flight', requestId: 'c3', runId });
    client.send({ type: 'ping' });
    // The ping is over the cap too while c1 and c2 wait: answered, not dropped.
    expect(await client.next((frame) => frame.type === 'error')).toMatchObject({ code: 'too_many_in_flight' });
    release();
    const answers = [await client.next((frame) => frame.requestId === 'c1'), await client.next((frame) => frame.requestId === 'c2')];
    expect(answers.map((frame) => frame.type)).toEqual(['ack', 'ack']);
    client.send({ type: 'ping' });
    expect(await client.next((frame) => frame.type === 'pong')).toEqual({ type: 'pong' });
    expect(client.closeCode).toBeUndefined();
    client.socket.terminate();
  });

  it('throttles subscribe/unsubscribe churn per socket with rate_limited', async () => {
    await t.app.close();
    await setup({ streaming: { heartbeatMs: 60_000, subscribeChurn: { burst: 3, perSecond: 0.001 } } });
    const client = await connect();
    client.send({ type: 'subscribe', runId });
    client.send({ type: 'unsubscribe', runId });
    client.send({ type: 'subscribe', runId });
    client.send({ type: 'unsubscribe', runId });
    expect(await client.next((frame) => frame.type === 'error')).toMatchObject({ code: 'rate_limited', runId, message: expect.stringContaining('subscribe and unsubscribe frames') });
    client.send({ type: 'ping' });
    expect(await client.next((frame) => frame.type === 'pong')).toEqual({ type: 'pong' });
    client.socket.terminate();
  });

  it('accepts a ticket exactly once, for its own tenant, until it expires; never with the key in the URL', async () => {
    await t.app.close();
    let clock = Date.parse('2030-01-01T00:00:00.000Z');
    await setup({ now: () => new Date(clock) });
    const issued = await t.app.inject({ method: 'POST', url: '/v1/ws/tickets', headers: auth() });
    expect(issued.statusCode).toBe(201);
    const { ticket, expiresAt } = issued.json() as { ticket: string; expiresAt: string };
    expect(ticket).toMatch(/^wst_[A-Za-z0-9_-]{43}$/);
    expect(expiresAt).toBe('2030-01-01T00:00:30.000Z');
    // Only the tenant and the key's short id are stored, under a hash of the ticket.
    expect([...t.bus.tickets.keys()]).not.toContain(ticket);
    expect(JSON.stringify([...t.bus.tickets.values()])).not.toContain(keys.t1);

    const client = await connect({}, `/v1/ws?ticket=${ticket}`);
    client.send({ type: 'subscribe', runId });
    t.events.emit(runId, 't1', `${runId}:2:0`, 'run.started', { agentId: 'helper', agentVersion: 1, conversationId: 'c' });
    expect(await client.next((frame) => frame.type === 'event')).toMatchObject({ runId, event: { type: 'run.started' } });
    client.socket.terminate();
    await expect(t.app.injectWS(`/v1/ws?ticket=${ticket}`, { headers: {} })).rejects.toThrow(/401/);

    const other = (await t.app.inject({ method: 'POST', url: '/v1/ws/tickets', headers: auth('t2') })).json().ticket as string;
    const otherClient = await connect({}, `/v1/ws?ticket=${other}`);
    otherClient.send({ type: 'subscribe', runId });
    expect(await otherClient.next((frame) => frame.type === 'error')).toMatchObject({ code: 'run_not_found', runId });
    otherClient.socket.terminate();

    const late = (await t.app.inject({ method: 'POST', url: '/v1/ws/tickets', headers: auth() })).json().ticket as string;
    clock += 30_000;
    await expect(t.app.injectWS(`/v1/ws?ticket=${late}`, { headers: {} })).rejects.toThrow(/401/);
    await expect(t.app.injectWS('/v1/ws?ticket=wst_forged', { headers: {} })).rejects.toThrow(/401/);
    // Tickets are handed out for a key in the header only, and only open WebSockets.
    expect((await t.app.inject({ method: 'POST', url: `/v1/ws/tickets?access_token=${keys.t1}` })).statusCode).toBe(401);
    const unused = (await t.app.inject({ method: 'POST', url: '/v1/ws/tickets', headers: auth() })).json().ticket as string;
    expect((await t.app.inject({ method: 'GET', url: `/v1/runs/${runId}?ticket=${unused}` })).statusCode).toBe(401);
  });
});

describe('WebSocket subscriptions across a lost reader (a NATS node failure)', () => {
  it('resumes without a gap or repeat, and sends subscription_interrupted with the runId when it cannot', async () => {
    await t.app.close();
    await setup({ eventsResumeWithinMs: 100 });
    const client = await connect();
    t.events.emit(runId, 't1', `${runId}:2:0`, 'run.started', { agentId: 'helper', agentVersion: 1, conversationId: 'c' });
    client.send({ type: 'subscribe', runId });
    await client.next((frame) => frame.type === 'event');
    t.events.breakReaders('end');
    t.events.emit(runId, 't1', `${runId}:3:0`, 'message.completed', { step: 0, attempt: 1, text: 'hello' });
    const second = await client.next((frame) => frame.type === 'event');
    expect(second).toMatchObject({ runId, event: { seq: 2, eventId: `${runId}:3:0` } });
    t.events.refuseReaders(true);
    t.events.breakReaders('throw');
    const error = await client.next((frame) => frame.type === 'error');
    expect(error).toMatchObject({ runId, code: 'subscription_interrupted', message: expect.stringContaining('after=2') });
    expect(client.frames.filter((frame) => frame.type === 'event')).toEqual([]);
    expect(t.events.openReaders).toBe(0);
    client.socket.close();
  });
});
