import { setTimeout as sleep } from 'node:timers/promises';
import { ApiError, createLogger, encodeJson, type ClientEvent } from '@abide/shared';
import { describe, expect, it } from 'vitest';
import { createEventRelay } from './event-relay.ts';
import { createMemoryEventSource } from './testing/fakes.ts';

const logger = createLogger('test', 'silent');

async function collect(iterable: AsyncIterable<ClientEvent>): Promise<ClientEvent[]> {
  const out: ClientEvent[] = [];
  for await (const item of iterable) out.push(item);
  return out;
}

describe('event relay', () => {
  it('validates, filters, numbers with seq and ends after the terminal event', async () => {
    const events = createMemoryEventSource();
    const relay = createEventRelay({ source: events.source, logger });
    events.emit('run_a', 't1', 'run_a:2:0', 'run.started', { agentId: 'ag', agentVersion: 1, conversationId: 'c' });
    events.emit('run_b', 't1', 'run_b:2:0', 'run.started', { agentId: 'ag', agentVersion: 1, conversationId: 'c' });
    events.appendRaw('run_a', new TextEncoder().encode('not json'));
    events.appendRaw('run_a', encodeJson({ v: 1, id: 'x', type: 'run.unknown', runId: 'run_a', tenantId: 't1', ts: new Date().toISOString(), payload: {} }));
    events.emit('run_a', 't1', 'run_a:2:0', 'run.started', { agentId: 'ag', agentVersion: 1, conversationId: 'c' });
    events.emit('run_a', 't1', 'run_a:3:0', 'message.completed', { step: 0, attempt: 1, text: 'hi' });
    events.emit('run_a', 't1', 'd1', 'message.delta', { step: 0, attempt: 1, text: 'h' });
    events.emit('run_a', 't1', 'run_a:3:1', 'run.completed', { output: 'hi', usage: { inputTokens: 1, outputTokens: 1, totalTokens: 2 } });
    events.emit('run_a', 't1', 'late', 'message.delta', { step: 1, attempt: 1, text: 'x' });

    const out = await collect(relay.follow('run_a', { after: undefined, signal: new AbortController().signal }));
    expect(out.map((event) => [event.seq, event.type])).toEqual([
      [1, 'run.started'],
      [6, 'message.completed'],
      [8, 'run.completed'],
    ]);
    expect(out[1]).toMatchObject({ eventId: 'run_a:3:0', runId: 'run_a', text: 'hi', step: 0 });
    expect(events.openReaders).toBe(0);
  });

  it('resumes after a cursor and follows live events', async () => {
    const events = createMemoryEventSource();
    const relay = createEventRelay({ source: events.source, logger });
    events.emit('run_a', 't1', 'e1', 'run.started', { agentId: 'ag', agentVersion: 1, conversationId: 'c' });
    events.emit('run_a', 't1', 'e2', 'llm.step.started', { step: 0, attempt: 1 });
    const pending = collect(relay.follow('run_a', { after: 1, signal: new AbortController().signal }));
    await sleep(5);
    events.emit('run_a', 't1', 'e3', 'run.cancelled', {});
    expect((await pending).map((event) => event.eventId)).toEqual(['e2', 'e3']);
  });

  it('resumes exactly where an uninterrupted subscription would be', async () => {
    const events = createMemoryEventSource();
    const relay = createEventRelay({ source: events.source, logger });
    events.emit('run_a', 't1', 'e1', 'run.started', { agentId: 'ag', agentVersion: 1, conversationId: 'c' });
    events.emit('run_a', 't1', 'e2', 'message.completed', { step: 0, attempt: 1, text: 'hi' });
    events.emit('run_a', 't1', 'late-delta', 'message.delta', { step: 0, attempt: 1, text: 'h' });
    events.emit('run_a', 't1', 'e1', 'run.started', { agentId: 'ag', agentVersion: 1, conversationId: 'c' });
    events.emit('run_a', 't1', 'e3', 'run.completed', { output: 'hi', usage: { inputTokens: 0, outputTokens: 0, totalTokens: 0 } });
    const signal = new AbortController().signal;
    const all = await collect(relay.follow('run_a', { after: undefined, signal }));
    expect(all.map((event) => event.seq)).toEqual([1, 2, 5]);
    for (const after of [0, 1, 2, 3, 4]) {
      const resumed = await collect(relay.follow('run_a', { after, signal }));
      expect(resumed.map((event) => event.seq)).toEqual(all.filter((event) => event.seq > after).map((event) => event.seq));
    }
    expect(await collect(relay.follow('run_a', { after: 5, endAtSeq: 9, signal }))).toEqual([]);
  });

  it('stops at endAtSeq, and removes the reader when aborted', async () => {
    const events = createMemoryEventSource();
    const relay = createEventRelay({ source: events.source, logger });
    events.emit('run_a', 't1', 'e1', 'run.started', { agentId: 'ag', agentVersion: 1, conversationId: 'c' });
    events.emit('run_a', 't1', 'e2', 'llm.step.started', { step: 0, attempt: 1 });
    expect((await collect(relay.follow('run_a', { after: undefined, endAtSeq: 2, signal: new AbortController().signal }))).length).toBe(2);
    expect(await collect(relay.follow('run_a', { after: 2, endAtSeq: 2, signal: new AbortController().signal }))).toEqual([]);

    const controller = new AbortController();
    const pending = collect(relay.follow('run_a', { after: 2, signal: controller.signal }));
    await sleep(5);
    expect(events.openReaders).toBe(1);
    controller.abort();
    expect(await pending).toEqual([]);
    expect(events.openReaders).toBe(0);
  });

  describe('when its reader fails (a NATS node dies under it)', () => {
    /** Waits until `check` holds, polling the fake (a condition, not a fixed sleep). */
    async function until(check: () => boolean): Promise<void> {
      while (!check()) await sleep(2);
    }
    const started = { agentId: 'ag', agentVersion: 1, conversationId: 'c' };

    for (const mode of ['throw', 'end'] as const) {
      it(`resumes after the last message read when the reader ${mode === 'throw' ? 'throws' : 'ends silently'}: every event once, in order`, async () => {
        const events = createMemoryEventSource();
        const relay = createEventRelay({ source: events.source, logger, retryBaseMs: 1 });
        events.emit('run_a', 't1', 'e1', 'run.started', started);
        events.emit('run_a', 't1', 'e2', 'message.completed', { step: 0, attempt: 1, text: 'hi' });
        const out: ClientEvent[] = [];
        const done = (async () => {
          for await (const event of relay.follow('run_a', { after: undefined, signal: new AbortController().signal })) out.push(event);
        })();
        await until(() => out.length === 2);
        events.breakReaders(mode);
        // Written while no reader works: the next reader must pick them up, and the filter state
        // survives (the late delta of step 0 and the repeated e1 stay suppressed).
        events.emit('run_a', 't1', 'late', 'message.delta', { step: 0, attempt: 1, text: 'h' });
        events.emit('run_a', 't1', 'e1', 'run.started', started);
        events.emit('run_a', 't1', 'e3', 'llm.step.started', { step: 1, attempt: 1 });
        await until(() => events.readsOpened >= 2 && out.length === 3);
        events.breakReaders(mode);
        events.emit('run_a', 't1', 'e4', 'run.completed', { output: 'hi', usage: { inputTokens: 0, outputTokens: 0, totalTokens: 0 } });
        await done;
        expect(out.map((event) => [event.seq, event.eventId])).toEqual([
          [1, 'e1'],
          [2, 'e2'],
          [5, 'e3'],
          [6, 'e4'],
        ]);
        expect(events.readsOpened).toBe(3);
        expect(events.openReaders).toBe(0);
      });
    }

    it('keeps trying while no node answers and resumes when one does', async () => {
      const events = createMemoryEventSource();
      const relay = createEventRelay({ source: events.source, logger, retryBaseMs: 1, resumeWithinMs: 5_000 });
      events.emit('run_a', 't1', 'e1', 'run.started', started);
      const out: ClientEvent[] = [];
      const done = (async () => {
        for await (const event of relay.follow('run_a', { after: undefined, signal: new AbortController().signal })) out.push(event);
      })();
      await until(() => out.length === 1);
      events.refuseReaders(true);
      events.breakReaders('end');
      await until(() => events.readsOpened >= 4);
      events.emit('run_a', 't1', 'e2', 'run.cancelled', {});
      events.refuseReaders(false);
      await done;
      expect(out.map((event) => event.eventId)).toEqual(['e1', 'e2']);
    });

    it('throws subscription_interrupted naming the cursor to resubscribe with once the bound passes, never ending silently', async () => {
      const events = createMemoryEventSource();
      const relay = createEventRelay({ source: events.source, logger, retryBaseMs: 1, resumeWithinMs: 100 });
      events.emit('run_a', 't1', 'e1', 'run.started', started);
      events.emit('run_a', 't1', 'e2', 'llm.step.started', { step: 0, attempt: 1 });
      const out: ClientEvent[] = [];
      const failure = (async () => {
        for await (const event of relay.follow('run_a', { after: 1, signal: new AbortController().signal })) out.push(event);
      })().then(
        () => undefined,
        (error: unknown) => error,
      );
      await until(() => out.length === 1);
      events.refuseReaders(true);
      events.breakReaders('end');
      const startedAt = Date.now();
      const error = await failure;
      expect(Date.now() - startedAt).toBeGreaterThanOrEqual(90);
      expect(error).toBeInstanceOf(ApiError);
      expect(error).toMatchObject({ code: 'subscription_interrupted', status: 503 });
      expect((error as ApiError).message).toContain('after=2');
      expect(events.readsOpened).toBeGreaterThan(2);
      expect(events.openReaders).toBe(0);
    });

    it('stops trying when the subscriber leaves', async () => {
      const events = createMemoryEventSource();
      const relay = createEventRelay({ source: events.source, logger, retryBaseMs: 1, resumeWithinMs: 60_000 });
      events.emit('run_a', 't1', 'e1', 'run.started', started);
      const controller = new AbortController();
      const out: ClientEvent[] = [];
      const done = (async () => {
        for await (const event of relay.follow('run_a', { after: undefined, signal: controller.signal })) out.push(event);
      })();
      await until(() => out.length === 1);
      events.refuseReaders(true);
      events.breakReaders('throw');
      await until(() => events.readsOpened >= 3);
      controller.abort();
      await done;
      const opened = events.readsOpened;
      await sleep(20);
      expect(events.readsOpened).toBe(opened);
    });
  });
});
