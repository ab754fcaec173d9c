import { runIdFromIdempotencyKey, type RunState } from '@abide/shared';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { staleLockMs } from '../run-creation.ts';
import { auth, createTestApp, scriptedAgent, testConfig, type TestApp } from '../testing/test-app.ts';

let t: TestApp;
let clock: number;
beforeEach(async () => {
  clock = Date.parse('2030-01-01T00:00:00.000Z');
  t = createTestApp({ now: () => new Date(clock) });
  await t.app.inject({ method: 'PUT', url: '/v1/agents/helper', headers: auth(), payload: scriptedAgent });
});
afterEach(async () => {
  await t.app.close();
});

const createRun = (payload: Record<string, unknown>, headers: Record<string, string> = auth()) =>
  t.app.inject({ method: 'POST', url: '/v1/runs', headers, payload: { agentId: 'helper', ...payload } });

function finish(runId: string, change: (state: RunState) => void = (state) => {
  state.status = 'completed';
  state.output = 'done';
  state.messages.push({ role: 'assistant', content: 'done' });
}) {
  return t.memory.advance(runId, change);
}

describe('POST /v1/runs', () => {
  it('creates a queued run: transition 1 with a start outbox, the read model, the start published', async () => {
    const response = await createRun({ input: 'hello', metadata: { ticket: 7 } });
    expect(response.statusCode).toBe(201);
    const { runId, status, conversationId } = response.json();
    expect(status).toBe('queued');
    expect(conversationId).toMatch(/^conv_/);
    const transition = t.memory.transitions.get(`${runId}:1`)!;
    expect(transition).toMatchObject({ version: 1, outbox: [{ kind: 'inbox', inboxKind: 'start', payload: {} }] });
    // The start is out: its outbox work item (the sweeper's fallback) is deleted a moment later.
    await vi.waitFor(() => expect(t.memory.work.has(`outbox:${runId}`)).toBe(false));
    expect(transition.state).toMatchObject({
      schemaVersion: 1,
      status: 'queued',
      tenantId: 't1',
      agentId: 'helper',
      agentSnapshot: { version: 1, agentId: 'helper' },
      messages: [{ role: 'user', content: 'hello' }],
      historyLength: 0,
      step: 0,
      awaiting: { kind: null, step: 0 },
      metadata: { ticket: 7 },
      usage: { inputTokens: 0, outputTokens: 0, totalTokens: 0 },
      nextDeadlineAt: null,
    });
    expect(t.bus.outboxes.map((outbox) => outbox._id)).toEqual([`${runId}:1`]);
    expect(t.memory.locks.get(`t1:${conversationId}`)?.runId).toBe(runId);

    const view = await t.app.inject({ method: 'GET', url: `/v1/runs/${runId}`, headers: auth() });
    expect(view.json()).toMatchObject({ runId, status: 'queued', agentVersion: 1, pendingApprovals: [], output: null, version: 1, lastSeq: null });
  });

  it('answers 404 agent_not_found for an unknown or foreign agent, writing nothing', async () => {
    const response = await createRun({ input: 'hi' }, auth('t2'));
    expect(response.statusCode).toBe(404);
    expect(response.json().error.code).toBe('agent_not_found');
    expect(t.memory.transitions.size).toBe(0);
    expect(t.memory.locks.size).toBe(0);
  });

  it('is idempotent: same key and body → 200 with the same run; another body → 422', async () => {
    const headers = { ...auth(), 'idempotency-key': 'order-1' };
    const first = await createRun({ input: 'hello' }, headers);
    expect(first.statusCode).toBe(201);
    expect(first.json().runId).toBe(runIdFromIdempotencyKey('t1', 'order-1'));
    const again = await createRun({ input: 'hello' }, headers);
    expect(again.statusCode).toBe(200);
    expect(again.json()).toEqual(first.json());
    const other = await createRun({ input: 'something else' }, headers);
    expect(other.statusCode).toBe(422);
    expect(other.json().error.code).toBe('idempotency_key_reused');
    // the same key of another tenant is another run
    await t.app.inject({ method: 'PUT', url: '/v1/agents/helper', headers: auth('t2'), payload: scriptedAgent });
    expect((await createRun({ input: 'hello' }, { ...auth('t2'), 'idempotency-key': 'order-1' })).statusCode).toBe(201);
  });

  it('converges when a retry meets a run whose start was never published', async () => {
    const headers = { ...auth(), 'idempotency-key': 'order-2' };
    t.bus.failPublishes(1);
    const first = await createRun({ input: 'hello' }, headers);
    expect(first.statusCode).toBe(201); // committed: the sweeper would publish it
    const runId = first.json().runId;
    // Its outbox work item is left for the orchestrator's sweeper.
    expect(t.memory.work.get(`outbox:${runId}`)).toMatchObject({ kind: 'outbox', runId, tenantId: 't1' });
    const again = await createRun({ input: 'hello' }, headers);
    expect(again.statusCode).toBe(200);
    await vi.waitFor(() => expect(t.memory.work.has(`outbox:${runId}`)).toBe(false));
    expect(t.bus.outboxes).toHaveLength(1);
  });

  it('takes its own lock back on a retry after dying between the lock and the run', async () => {
    const runId = runIdFromIdempotencyKey('t1', 'order-3');
    t.memory.locks.set('t1:conv-a', { _id: 't1:conv-a', runId, at: new Date(clock) });
    const response = await createRun({ input: 'hello', conversationId: 'conv-a' }, { ...auth(), 'idempotency-key': 'order-3' });
    expect(response.statusCode).toBe(201);
    expect(response.json().runId).toBe(runId);
  });

  it('keeps one active run per conversation: 409 conversation_busy until it ends', async () => {
    const first = await createRun({ input: 'one', conversationId: 'conv-1' });
    expect(first.statusCode).toBe(201);
    const busy = await createRun({ input: 'two', conversationId: 'conv-1' });
    expect(busy.statusCode).toBe(409);
    expect(busy.json().error.code).toBe('conversation_busy');
    // a run whose read model lags is still seen as ended (rolled forward)
    t.memory.advance(first.json().runId, (state) => {
      state.status = 'completed';
      state.output = 'one done';
      state.messages.push({ role: 'assistant', content: 'one done' });
    }, { readModel: false });
    const second = await createRun({ input: 'two', conversationId: 'conv-1' });
    expect(second.statusCode).toBe(201);
    // the history is the conversation so far, then the input
    const state = t.memory.transitions.get(`${second.json().runId}:1`)!.state;
    expect(state.historyLength).toBe(2);
    expect(state.messages).toEqual([
      { role: 'user', content: 'one' },
      { role: 'assistant', content: 'one done' },
      { role: 'user', content: 'two' },
    ]);
  });

  it('frees a lock whose holder never came to exist after 30 s, not before', async () => {
    t.memory.locks.set('t1:conv-2', { _id: 't1:conv-2', runId: 'run_ghost', at: new Date(clock) });
    expect((await createRun({ input: 'x', conversationId: 'conv-2' })).statusCode).toBe(409);
    clock += staleLockMs;
    const response = await createRun({ input: 'x', conversationId: 'conv-2' });
    expect(response.statusCode).toBe(201);
    expect(t.memory.locks.get('t1:conv-2')!.runId).toBe(response.json().runId);
  });

  it('rate-limits run creation per tenant with 429 and Retry-After', async () => {
    const limited = createTestApp({ runCreationLimit: { burst: 2, perSecond: 0.5 } });
    await limited.app.inject({ method: 'PUT', url: '/v1/agents/helper', headers: auth(), payload: scriptedAgent });
    const post = () => limited.app.inject({ method: 'POST', url: '/v1/runs', headers: auth(), payload: { agentId: 'helper', input: 'x' } });
    expect((await post()).statusCode).toBe(201);
    expect((await post()).statusCode).toBe(201);
    const third = await post();
    expect(third.statusCode).toBe(429);
    expect(third.json().error.code).toBe('rate_limited');
    expect(Number(third.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    await limited.app.close();
  });
});

describe('active runs per tenant (TENANT_MAX_ACTIVE_RUNS)', () => {
  let limited: TestApp;
  beforeEach(async () => {
    limited = createTestApp({
      now: () => new Date(clock),
      config: { ...testConfig, TENANT_MAX_ACTIVE_RUNS: 2 },
    });
    for (const headers of [auth(), auth('t2')]) await limited.app.inject({ method: 'PUT', url: '/v1/agents/helper', headers, payload: scriptedAgent });
  });
  afterEach(async () => {
    await limited.app.close();
  });
  const post = (headers = auth()) => limited.app.inject({ method: 'POST', url: '/v1/runs', headers, payload: { agentId: 'helper', input: 'x' } });

  it('takes a slot per run, records it in the run, and refuses the next with 429 and Retry-After while another tenant creates', async () => {
    const runs = [await post(), await post()];
    expect(runs.map((response) => response.statusCode)).toEqual([201, 201]);
    const slots = runs.map((response) => limited.memory.transitions.get(`${response.json().runId}:1`)!.state.runSlot);
    expect([...slots].sort()).toEqual([0, 1]);
    expect(limited.memory.locks.get(`t1/active-run/${slots[0]}`)!.runId).toBe(runs[0]!.json().runId);
    const refused = await post();
    expect([refused.statusCode, refused.json().error.code]).toEqual([429, 'rate_limited']);
    expect(Number(refused.headers['retry-after'])).toBeGreaterThanOrEqual(1);
    // the refused creation gave its conversation lock back and wrote no run
    expect([...limited.memory.locks.keys()].filter((id) => !id.includes('/active-run/'))).toHaveLength(2);
    expect(limited.memory.transitions.size).toBe(2);
    expect((await post(auth('t2'))).statusCode).toBe(201);
  });

  it('reuses the slot of an ended run, and of a run that never came to exist after 30 s', async () => {
    const first = await post();
    await post();
    limited.memory.advance(first.json().runId, (state) => {
      state.status = 'completed';
    });
    const third = await post();
    expect(third.statusCode).toBe(201);
    limited.memory.advance(third.json().runId, (state) => {
      state.status = 'cancelled';
    });
    // a creation that died after taking its slot: the slot names a run that does not exist
    const freed = [...limited.memory.locks.values()].find((lock) => lock._id.includes('/active-run/') && lock.runId === third.json().runId)!;
    limited.memory.locks.set(freed._id, { _id: freed._id, runId: 'run_ghost', at: new Date(clock) });
    expect((await post()).statusCode).toBe(429);
    clock += staleLockMs;
    expect((await post()).statusCode).toBe(201);
  });
});

describe('reading runs', () => {
  it('answers another tenant exactly like a missing run', async () => {
    const { runId } = (await createRun({ input: 'hi' })).json();
    const foreign = await t.app.inject({ method: 'GET', url: `/v1/runs/${runId}`, headers: auth('t2') });
    const missing = await t.app.inject({ method: 'GET', url: '/v1/runs/run_missing', headers: auth('t2') });
    expect(foreign.statusCode).toBe(404);
    expect(foreign.json().error.code).toBe('run_not_found');
    expect(missing.json().error.code).toBe('run_not_found');
    expect(foreign.json().error.message.replace(runId, 'X')).toBe(missing.json().error.message.replace('run_missing', 'X'));
  });

  it('rolls the read model forward', async () => {
    const { runId } = (await createRun({ input: 'hi' })).json();
    t.memory.advance(runId, (state) => void (state.status = 'running'), { readModel: false });
    const view = await t.app.inject({ method: 'GET', url: `/v1/runs/${runId}`, headers: auth() });
    expect(view.json()).toMatchObject({ status: 'running', version: 2 });
  });

  it('lists runs newest first with an opaque cursor, filtered by conversation and status', async () => {
    const ids: string[] = [];
    for (let index = 0; index < 5; index += 1) {
      clock += 1000;
      ids.push((await createRun({ input: `r${index}` })).json().runId);
    }
    clock += 1000;
    const inConversation = (await createRun({ input: 'c', conversationId: 'conv-list' })).json().runId;
    finish(ids[0]!);
    const page1 = (await t.app.inject({ method: 'GET', url: '/v1/runs?limit=4', headers: auth() })).json();
    expect(page1.runs.map((run: { runId: string }) => run.runId)).toEqual([inConversation, ids[4], ids[3], ids[2]]);
    expect(page1.nextCursor).toEqual(expect.any(String));
    const page2 = (await t.app.inject({ method: 'GET', url: `/v1/runs?limit=4&cursor=${page1.nextCursor}`, headers: auth() })).json();
    expect(page2.runs.map((run: { runId: string }) => run.runId)).toEqual([ids[1], ids[0]]);
    expect(page2.nextCursor).toBeNull();
    const completed = (await t.app.inject({ method: 'GET', url: '/v1/runs?status=completed', headers: auth() })).json();
    expect(completed.runs.map((run: { runId: string }) => run.runId)).toEqual([ids[0]]);
    const conversation = (await t.app.inject({ method: 'GET', url: '/v1/runs?conversationId=conv-list', headers: auth() })).json();
    expect(conversation.runs).toHaveLength(1);
    expect((await t.app.inject({ method: 'GET', url: '/v1/runs', headers: auth('t2') })).json().runs).toEqual([]);
  });

  it('refuses a bad cursor with 400 invalid_cursor and bad parameters with invalid_request', async () => {
    for (const cursor of ['abc', Buffer.from('{"createdAt":"x","runId":"y"}').toString('base64url'), '!!!']) {
      const response = await t.app.inject({ method: 'GET', url: `/v1/runs?cursor=${encodeURIComponent(cursor)}`, headers: auth() });
      expect(response.statusCode).toBe(400);
      expect(response.json().error.code).toBe('invalid_cursor');
    }
    expect((await t.app.inject({ method: 'GET', url: '/v1/runs?limit=1000', headers: auth() })).json().error.code).toBe('invalid_request');
    expect((await t.app.inject({ method: 'GET', url: '/v1/runs?status=odd', headers: auth() })).json().error.code).toBe('invalid_request');
    expect((await t.app.inject({ method: 'GET', url: '/v1/runs?color=red', headers: auth() })).json().error.code).toBe('invalid_request');
    // the cursor's fault wins over the others' (the route's schema reports them all at once)
    const both = await t.app.inject({ method: 'GET', url: '/v1/runs?cursor=abc&limit=1000&color=red', headers: auth() });
    expect(both.json().error).toEqual({ code: 'invalid_cursor', message: expect.stringMatching(/^query\.cursor: /) });
  });
});

describe('POST /v1/runs/:runId/cancel', () => {
  it('publishes one deterministic cancel message and answers 202', async () => {
    const { runId } = (await createRun({ input: 'hi' })).json();
    const response = await t.app.inject({ method: 'POST', url: `/v1/runs/${runId}/cancel`, headers: auth(), payload: { reason: 'changed my mind' } });
    expect(response.statusCode).toBe(202);
    expect(response.json()).toEqual({ status: 'accepted' });
    const noBody = await t.app.inject({ method: 'POST', url: `/v1/runs/${runId}/cancel`, headers: { ...auth(), 'content-type': 'application/json' } });
    expect(noBody.statusCode).toBe(202);
    expect(t.bus.published.map(({ subject, msgId }) => ({ subject, msgId }))).toEqual([
      { subject: `run.in.${runId}.cancel`, msgId: `${runId}:cancel` },
      { subject: `run.in.${runId}.cancel`, msgId: `${runId}:cancel` },
    ]);
    expect(t.bus.published[0]!.message).toMatchObject({ v: 1, id: `${runId}:cancel`, type: 'cancel', runId, tenantId: 't1', payload: { reason: 'changed my mind' } });
  });

  it('answers 409 run_finished for an ended run and 404 for another tenant', async () => {
    const { runId } = (await createRun({ input: 'hi' })).json();
    expect((await t.app.inject({ method: 'POST', url: `/v1/runs/${runId}/cancel`, headers: auth('t2') })).statusCode).toBe(404);
    finish(runId);
    const response = await t.app.inject({ method: 'POST', url: `/v1/runs/${runId}/cancel`, headers: auth() });
    expect(response.statusCode).toBe(409);
    expect(response.json().error.code).toBe('run_finished');
    expect(t.bus.published).toHaveLength(0);
  });
});
