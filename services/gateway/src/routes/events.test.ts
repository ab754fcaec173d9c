import { setTimeout as sleep } from 'node:timers/promises';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { auth, createTestApp, keys, scriptedAgent, type TestApp } from '../testing/test-app.ts';

let t: TestApp;
let runId: string;
let clock: number;

beforeEach(async () => {
  clock = Date.parse('2030-01-01T00:00:00.000Z');
  t = createTestApp({ now: () => new Date(clock) });
  await t.app.inject({ method: 'PUT', url: '/v1/agents/helper', headers: auth(), payload: scriptedAgent });
  runId = (await t.app.inject({ method: 'POST', url: '/v1/runs', headers: auth(), payload: { agentId: 'helper', input: 'hi' } })).json().runId;
});
afterEach(async () => {
  await t.app.close();
});

const usage = { inputTokens: 1, outputTokens: 1, totalTokens: 2 };
function emitRun(): void {
  t.events.emit(runId, 't1', `${runId}:2:0`, 'run.started', { agentId: 'helper', agentVersion: 1, conversationId: 'c' });
  t.events.emit(runId, 't1', `${runId}:w:0`, 'message.delta', { step: 0, attempt: 1, text: 'hel' });
  t.events.emit(runId, 't1', `${runId}:3:0`, 'message.completed', { step: 0, attempt: 1, text: 'hello' });
  t.events.emit(runId, 't1', `${runId}:w:1`, 'message.delta', { step: 0, attempt: 1, text: 'lo' });
  t.events.emit(runId, 't1', `${runId}:3:1`, 'run.completed', { output: 'hello', usage });
}
function finishRun(): void {
  t.memory.advance(runId, (state) => {
    state.status = 'completed';
    state.output = 'hello';
  });
}
const parseSse = (body: string) =>
  body
    .split('\n\n')
    .filter((block) => block.startsWith('id:'))
    .map((block) => {
      const lines = Object.fromEntries(block.split('\n').map((line) => [line.slice(0, line.indexOf(':')), line.slice(line.indexOf(':') + 2)]));
      return { id: Number(lines.id), event: lines.event, data: JSON.parse(lines.data!) };
    });

describe('GET /v1/runs/:runId/events (SSE)', () => {
  it('replays from the first event, applies the forwarding rules, and ends after the terminal event', async () => {
    emitRun();
    t.events.emit(runId, 't1', 'after-terminal', 'message.delta', { step: 1, attempt: 1, text: 'no' });
    const response = await t.app.inject({ method: 'GET', url: `/v1/runs/${runId}/events`, headers: auth() });
    expect(response.statusCode).toBe(200);
    expect(response.headers['content-type']).toContain('text/event-stream');
    const events = parseSse(response.body);
    expect(events.map((event) => [event.id, event.event])).toEqual([
      [1, 'run.started'],
      [2, 'message.delta'],
      [3, 'message.completed'],
      [5, 'run.completed'],
    ]);
    expect(events[2]!.data).toMatchObject({ seq: 3, eventId: `${runId}:3:0`, runId, type: 'message.completed', text: 'hello' });
    expect(t.events.openReaders).toBe(0);
  });

  it('follows live events and resumes after a cursor; Last-Event-ID wins over after', async () => {
    let answered = false;
    const pending = t.app.inject({ method: 'GET', url: `/v1/runs/${runId}/events?after=0`, headers: { ...auth(), 'last-event-id': '2' } });
    void pending.then(() => (answered = true));
    // Synchronised on the reader being open, not on time: no event is stored yet, so every event
    // the stream then carries arrived live (after the reader started), none replayed.
    await vi.waitFor(() => expect(t.events.openReaders).toBe(1));
    expect(await t.events.source.lastSequenceOf(runId)).toBeNull();
    expect(answered).toBe(false);
    emitRun();
    const events = parseSse((await pending).body);
    expect(events.map((event) => event.id)).toEqual([3, 5]);
    const after = parseSse((await t.app.inject({ method: 'GET', url: `/v1/runs/${runId}/events?after=3`, headers: auth() })).body);
    expect(after.map((event) => event.id)).toEqual([5]);
  });

  it('rides through a lost reader, and ends with an error event (never silently) when it cannot resume', async () => {
    await t.app.close();
    t = createTestApp({ now: () => new Date(clock), eventsResumeWithinMs: 100 });
    await t.app.inject({ method: 'PUT', url: '/v1/agents/helper', headers: auth(), payload: scriptedAgent });
    runId = (await t.app.inject({ method: 'POST', url: '/v1/runs', headers: auth(), payload: { agentId: 'helper', input: 'hi' } })).json().runId;
    t.events.emit(runId, 't1', `${runId}:2:0`, 'run.started', { agentId: 'helper', agentVersion: 1, conversationId: 'c' });
    const pending = t.app.inject({ method: 'GET', url: `/v1/runs/${runId}/events`, headers: auth() });
    while (t.events.readsOpened < 1) await sleep(2);
    t.events.breakReaders('end');
    t.events.emit(runId, 't1', `${runId}:3:0`, 'message.completed', { step: 0, attempt: 1, text: 'hello' });
    while (t.events.readsOpened < 2) await sleep(2);
    t.events.refuseReaders(true);
    t.events.breakReaders('throw');
    const body = (await pending).body;
    expect(parseSse(body).map((event) => event.id)).toEqual([1, 2]);
    const last = body.trimEnd().split('\n\n').at(-1)!;
    expect(last.split('\n')[0]).toBe('event: error');
    expect(JSON.parse(last.split('\n')[1]!.slice('data: '.length))).toMatchObject({ error: { code: 'subscription_interrupted', message: expect.stringContaining('after=2') } });
    expect(t.events.openReaders).toBe(0);
  });

  it('answers 204 when the run has ended and the client holds its last event', async () => {
    emitRun();
    finishRun();
    const response = await t.app.inject({ method: 'GET', url: `/v1/runs/${runId}/events`, headers: { ...auth(), 'last-event-id': '5' } });
    expect(response.statusCode).toBe(204);
    // a late delta stored after the terminal event changes nothing
    t.events.emit(runId, 't1', 'late', 'message.delta', { step: 1, attempt: 1, text: 'x' });
    expect((await t.app.inject({ method: 'GET', url: `/v1/runs/${runId}/events`, headers: { ...auth(), 'last-event-id': '5' } })).statusCode).toBe(204);
    expect(t.events.openReaders).toBe(0);
    // from earlier, an ended run is replayed up to its last stored message
    expect(parseSse((await t.app.inject({ method: 'GET', url: `/v1/runs/${runId}/events?after=1`, headers: auth() })).body).map((event) => event.id)).toEqual([2, 3, 5]);
  });

  it('validates the cursor (400 invalid_cursor), the run (404) and accepts ?access_token=', async () => {
    for (const url of [`/v1/runs/${runId}/events?after=abc`, `/v1/runs/${runId}/events?after=-1`, `/v1/runs/${runId}/events?after=01`]) {
      const response = await t.app.inject({ method: 'GET', url, headers: auth() });
      expect(response.statusCode).toBe(400);
      expect(response.json().error.code).toBe('invalid_cursor');
    }
    const header = await t.app.inject({ method: 'GET', url: `/v1/runs/${runId}/events`, headers: { ...auth(), 'last-event-id': 'x' } });
    expect(header.json().error.code).toBe('invalid_cursor');
    // found by schemathesis: an invalid `after` is refused even when Last-Event-ID wins
    const both = await t.app.inject({ method: 'GET', url: `/v1/runs/${runId}/events?after=`, headers: { ...auth(), 'last-event-id': '0' } });
    expect(both.json().error).toMatchObject({ code: 'invalid_cursor', message: expect.stringContaining('query.after') });
    expect((await t.app.inject({ method: 'GET', url: `/v1/runs/${runId}/events?foo=1`, headers: auth() })).json().error.code).toBe('invalid_request');
    expect((await t.app.inject({ method: 'GET', url: `/v1/runs/${runId}/events`, headers: auth('t2') })).statusCode).toBe(404);
    emitRun();
    const viaQuery = await t.app.inject({ method: 'GET', url: `/v1/runs/${runId}/events?access_token=${keys.t1}` });
    expect(viaQuery.statusCode).toBe(200);
  });

  it('answers 410 cursor_expired with the run when the run is older than the retention and its events are gone', async () => {
    emitRun();
    t.events.expireBefore(4);
    // a young run: the gap is other runs' events, not this one's
    expect((await t.app.inject({ method: 'GET', url: `/v1/runs/${runId}/events?after=1`, headers: auth() })).statusCode).toBe(200);
    clock += 8 * 86_400_000;
    const response = await t.app.inject({ method: 'GET', url: `/v1/runs/${runId}/events?after=1`, headers: auth() });
    expect(response.statusCode).toBe(410);
    expect(response.json()).toMatchObject({ error: { code: 'cursor_expired' }, run: { runId, status: 'queued' } });
    expect((await t.app.inject({ method: 'GET', url: `/v1/runs/${runId}/events?after=3`, headers: auth() })).statusCode).toBe(200);
  });

  it('answers 410 cursor_expired for a young run whose first events were discarded by the size limit (EVENTS_MAX_BYTES)', async () => {
    emitRun();
    // Transition 2 published the run's first event at seq 1.
    t.memory.advance(runId, (state) => void (state.status = 'running')).lastSeq = 1;
    t.events.expireBefore(3);
    const response = await t.app.inject({ method: 'GET', url: `/v1/runs/${runId}/events?after=1`, headers: auth() });
    expect(response.statusCode).toBe(410);
    expect(response.json()).toMatchObject({ error: { code: 'cursor_expired' }, run: { runId } });
    // A cursor past the gap loses nothing.
    expect((await t.app.inject({ method: 'GET', url: `/v1/runs/${runId}/events?after=2`, headers: auth() })).statusCode).toBe(200);
  });

  it('keeps serving a young run whose own first event is still stored, when older runs\' events were discarded', async () => {
    t.events.emit('run_older', 't1', 'run_older:2:0', 'run.started', { agentId: 'helper', agentVersion: 1, conversationId: 'o' });
    t.events.emit('run_older', 't1', 'run_older:3:0', 'run.completed', { output: 'x', usage });
    emitRun(); // seq 3 onwards
    t.memory.advance(runId, (state) => void (state.status = 'running'));
    t.events.expireBefore(3);
    // The cursor (0) is older than the stream's first sequence (3), but nothing of this run is gone.
    expect((await t.app.inject({ method: 'GET', url: `/v1/runs/${runId}/events?after=0`, headers: auth() })).statusCode).toBe(200);
  });

  it('ends open streams on shutdown', async () => {
    const pending = t.app.inject({ method: 'GET', url: `/v1/runs/${runId}/events`, headers: auth() });
    await sleep(10);
    expect(t.live.counts()).toMatchObject({ sseStreams: 1, subscriptions: 1 });
    t.live.closeAll();
    expect((await pending).statusCode).toBe(200);
    expect(t.live.counts()).toMatchObject({ sseStreams: 0, subscriptions: 0 });
    expect(t.events.openReaders).toBe(0);
  });
});
