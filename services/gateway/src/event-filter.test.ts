import { describe, expect, it } from 'vitest';
import { createEventFilter, filterEvents } from './event-filter.ts';

const event = (id: string, type: string, payload: Record<string, unknown> = {}) => ({ id, type, payload });

describe('event forwarding rules', () => {
  it('forwards an event id once', () => {
    const out = filterEvents([event('r:1:0', 'run.started'), event('r:1:0', 'run.started'), event('r:2:0', 'llm.step.started', { step: 0, attempt: 1 })]);
    expect(out.map((item) => item.id)).toEqual(['r:1:0', 'r:2:0']);
  });

  it('forwards nothing after the terminal event', () => {
    for (const terminal of ['run.completed', 'run.failed', 'run.cancelled']) {
      const out = filterEvents([event('a', 'run.started'), event('b', terminal), event('c', 'message.delta', { step: 1, attempt: 1, text: 'late' }), event('d', 'run.completed')]);
      expect(out.map((item) => item.id)).toEqual(['a', 'b']);
    }
  });

  it('drops deltas of a step whose message.completed was forwarded, not of other steps', () => {
    const out = filterEvents([
      event('d1', 'message.delta', { step: 0, attempt: 1, text: 'he' }),
      event('c0', 'message.completed', { step: 0, attempt: 2, text: 'hello' }),
      event('d2', 'message.delta', { step: 0, attempt: 1, text: 'llo' }),
      event('d3', 'message.delta', { step: 1, attempt: 1, text: 'next' }),
    ]);
    expect(out.map((item) => item.id)).toEqual(['d1', 'c0', 'd3']);
  });

  it('keeps its state across calls and reports finished', () => {
    const filter = createEventFilter();
    expect(filter.accept(event('a', 'run.started'))).toBe(true);
    expect(filter.finished).toBe(false);
    expect(filter.accept(event('a', 'run.started'))).toBe(false);
    expect(filter.accept(event('b', 'run.failed', { error: { code: 'x', message: 'y' } }))).toBe(true);
    expect(filter.finished).toBe(true);
    expect(filter.accept(event('c', 'run.started'))).toBe(false);
  });
});
