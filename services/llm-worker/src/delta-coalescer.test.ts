import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { createDeltaCoalescer } from './delta-coalescer.ts';

describe('createDeltaCoalescer', () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  function setup(options: { maxDelayMs?: number; maxChars?: number } = {}) {
    const emitted: string[] = [];
    const coalescer = createDeltaCoalescer({ ...options, emit: (text) => emitted.push(text) });
    return { coalescer, emitted };
  }

  it('holds small deltas until 50 ms after the first one arrived', () => {
    const { coalescer, emitted } = setup();
    coalescer.push('Hel');
    vi.advanceTimersByTime(30);
    coalescer.push('lo');
    expect(emitted).toEqual([]);
    vi.advanceTimersByTime(19);
    expect(emitted).toEqual([]);
    vi.advanceTimersByTime(1);
    expect(emitted).toEqual(['Hello']);
    coalescer.push(' world');
    vi.advanceTimersByTime(50);
    expect(emitted).toEqual(['Hello', ' world']);
  });

  it('emits at once when 512 characters are buffered, in pieces of at most 512', () => {
    const { coalescer, emitted } = setup();
    coalescer.push('a'.repeat(300));
    coalescer.push('b'.repeat(300));
    expect(emitted).toEqual(['a'.repeat(300) + 'b'.repeat(212)]);
    coalescer.push('c'.repeat(1_100));
    expect(emitted.map((text) => text.length)).toEqual([512, 512, 512]);
    vi.advanceTimersByTime(50);
    expect(emitted.join('')).toBe('a'.repeat(300) + 'b'.repeat(300) + 'c'.repeat(1_100));
    expect(emitted.every((text) => text.length <= 512)).toBe(true);
  });

  it('restarts the delay after a size-triggered emit leaves nothing behind', () => {
    const { coalescer, emitted } = setup({ maxChars: 4 });
    coalescer.push('ab');
    coalescer.push('cd');
    expect(emitted).toEqual(['abcd']);
    vi.advanceTimersByTime(40);
    coalescer.push('e');
    vi.advanceTimersByTime(40);
    expect(emitted).toEqual(['abcd']);
    vi.advanceTimersByTime(10);
    expect(emitted).toEqual(['abcd', 'e']);
  });

  it('flush emits the rest at once and cancels the timer', () => {
    const { coalescer, emitted } = setup();
    coalescer.push('tail');
    coalescer.flush();
    expect(emitted).toEqual(['tail']);
    vi.advanceTimersByTime(100);
    expect(emitted).toEqual(['tail']);
    coalescer.flush();
    expect(emitted).toEqual(['tail']);
  });

  it('discard drops the buffer without emitting', () => {
    const { coalescer, emitted } = setup();
    coalescer.push('lost');
    coalescer.discard();
    vi.advanceTimersByTime(100);
    expect(emitted).toEqual([]);
  });

  it('never splits a surrogate pair', () => {
    const { coalescer, emitted } = setup({ maxChars: 4 });
    coalescer.push('abc😀d');
    coalescer.flush();
    expect(emitted).toEqual(['abc', '😀d']);
  });
});
