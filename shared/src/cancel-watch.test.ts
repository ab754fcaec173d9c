import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it, vi } from 'vitest';
import { createCancelWatch, RunCancelledError, type RunControlBucket, type RunControlKvEntry } from './cancel-watch.ts';
import { encodeJson } from './jetstream.ts';
import { createLogger } from './logger.ts';

const silentLogger = createLogger('cancel-watch-test', 'silent');

/** An in-memory `RUN_CONTROL`: `put` stores and notifies open watches; `endWatches` ends them as a lost connection would. */
function createFakeBucket() {
  const entries = new Map<string, RunControlKvEntry>();
  const log: RunControlKvEntry[] = [];
  const watchers = new Set<{ push(entry: RunControlKvEntry): void; end(): void }>();
  const watchCalls: { resumeFromRevision?: number }[] = [];
  const bucket: RunControlBucket = {
    async get(key) {
      return entries.get(key) ?? null;
    },
    async watch(options) {
      watchCalls.push({ ...(options.resumeFromRevision === undefined ? {} : { resumeFromRevision: options.resumeFromRevision }) });
      const queue: RunControlKvEntry[] = options.resumeFromRevision ? log.filter((entry) => entry.revision >= options.resumeFromRevision!) : [];
      let wake: (() => void) | undefined;
      let ended = false;
      const watcher = {
        push(entry: RunControlKvEntry) {
          queue.push(entry);
          wake?.();
        },
        end() {
          ended = true;
          wake?.();
        },
      };
      watchers.add(watcher);
      return {
        stop: () => watcher.end(),
        async *[Symbol.asyncIterator]() {
          while (true) {
            if (queue.length) yield queue.shift()!;
            else if (ended) return;
            else await new Promise<void>((resolve) => (wake = resolve));
          }
        },
      };
    },
  };
  return {
    bucket,
    watchCalls,
    put(key: string, value: unknown, options: { silently?: boolean } = {}) {
      const entry: RunControlKvEntry = { key, value: encodeJson(value), revision: log.length + 1, operation: 'PUT' };
      entries.set(key, entry);
      log.push(entry);
      if (!options.silently) for (const watcher of watchers) watcher.push(entry);
    },
    endWatches() {
      for (const watcher of watchers) watcher.end();
      watchers.clear();
    },
  };
}

const cancelledEntry = { cancelled: true, at: '2026-01-01T00:00:00.000Z' };

describe('createCancelWatch', () => {
  it('isCancelled reads RUN_CONTROL', async () => {
    const fake = createFakeBucket();
    const watch = createCancelWatch({ bucket: fake.bucket, logger: silentLogger });
    expect(await watch.isCancelled('run_1')).toBe(false);
    fake.put('run_1', cancelledEntry);
    expect(await watch.isCancelled('run_1')).toBe(true);
    fake.put('run_2', { something: 'else' });
    expect(await watch.isCancelled('run_2')).toBe(false);
  });

  it('aborts the tracked work of a run cancelled while it runs, and only that run', async () => {
    const fake = createFakeBucket();
    const watch = createCancelWatch({ bucket: fake.bucket, logger: silentLogger });
    await watch.start();
    const first = watch.track('run_1');
    const second = watch.track('run_1');
    const other = watch.track('run_2');
    await vi.waitFor(() => expect(fake.watchCalls).toHaveLength(1));
    fake.put('run_1', cancelledEntry);
    await vi.waitFor(() => expect(first.signal.aborted).toBe(true));
    expect(second.signal.aborted).toBe(true);
    expect(first.signal.reason).toBeInstanceOf(RunCancelledError);
    // A cancellation is its own code, not `internal` (a bug): logs and metrics tell them apart.
    expect(first.signal.reason).toMatchObject({ code: 'cancelled', retryable: false });
    expect(other.signal.aborted).toBe(false);
    await watch.stop();
    expect(await watch.closed).toBeUndefined();
  });

  it('does not abort work released before the cancel', async () => {
    const fake = createFakeBucket();
    const watch = createCancelWatch({ bucket: fake.bucket, logger: silentLogger });
    await watch.start();
    const done = watch.track('run_1');
    done.release();
    await vi.waitFor(() => expect(fake.watchCalls).toHaveLength(1));
    fake.put('run_1', cancelledEntry);
    await sleep(10);
    expect(done.signal.aborted).toBe(false);
    await watch.stop();
  });

  it('restarts an ended watch from the revision after the last one seen, missing nothing', async () => {
    const fake = createFakeBucket();
    const watch = createCancelWatch({ bucket: fake.bucket, logger: silentLogger, restartDelayMs: 5 });
    await watch.start();
    const work = watch.track('run_3');
    await vi.waitFor(() => expect(fake.watchCalls).toHaveLength(1));
    fake.put('run_1', cancelledEntry);
    await sleep(5);
    fake.endWatches();
    // Written while no watch is open:
    fake.put('run_3', cancelledEntry, { silently: true });
    await vi.waitFor(() => expect(work.signal.aborted).toBe(true));
    expect(fake.watchCalls[1]).toEqual({ resumeFromRevision: 2 });
    await watch.stop();
  });
});
