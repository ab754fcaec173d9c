import { createLogger, encodeJson, type ClientEvent } from '@abide/shared';
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
    await new Promise((resolve) => setTimeout(resolve, 5));
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
    await new Promise((resolve) => setTimeout(resolve, 5));
    expect(events.openReaders).toBe(1);
    controller.abort();
    expect(await pending).toEqual([]);
    expect(events.openReaders).toBe(0);
  });
});
