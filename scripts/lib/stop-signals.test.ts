import { EventEmitter } from 'node:events';
import { describe, expect, it } from 'vitest';
import { onStopSignals, sameSignalMs } from './stop-signals.ts';

describe('onStopSignals', () => {
  function setUp() {
    const target = new EventEmitter();
    const clock = { at: 1_000_000 };
    const calls: string[] = [];
    onStopSignals({ stop: (signal) => calls.push(`stop ${signal}`), kill: (signal) => calls.push(`kill ${signal}`) }, { target: target as never, now: () => clock.at });
    return { target, clock, calls };
  }

  it('stops at the first signal and takes a copy of the same Ctrl-C (the terminal\'s and npm\'s) for nothing', () => {
    const { target, clock, calls } = setUp();
    target.emit('SIGINT');
    clock.at += 1;
    target.emit('SIGINT');
    clock.at += sameSignalMs - 2;
    target.emit('SIGTERM');
    expect(calls).toEqual(['stop SIGINT']);
  });

  it('kills at a signal that comes later: Ctrl-C pressed again', () => {
    const { target, clock, calls } = setUp();
    target.emit('SIGTERM');
    clock.at += sameSignalMs;
    target.emit('SIGINT');
    clock.at += 5_000;
    target.emit('SIGHUP');
    expect(calls).toEqual(['stop SIGTERM', 'kill SIGINT', 'kill SIGHUP']);
  });
});
