import { describe, expect, it } from 'vitest';
import { createLogger, encodeJson } from '@abide/shared';
import { createCancelWatch, type RunControlBucket } from './cancel-watch.ts';
import type { KvEntryLike } from './kv-records.ts';

type WatchEntry = KvEntryLike & { key: string };

/** A RUN_CONTROL fake whose watch yields what `push` sends; `end` finishes the current watch. */
function fakeRunControl() {
  const stored = new Map<string, KvEntryLike>();
  let push: (entry: WatchEntry | undefined) => void = () => {};
  let watches = 0;
  const bucket: RunControlBucket = {
    async get(key) {
      return stored.get(key) ?? null;
    },
    async watch() {
      watches++;
      const queue: (WatchEntry | undefined)[] = [];
      let wake: (() => void) | undefined;
      push = (entry) => {
        queue.push(entry);
        wake?.();
      };
      return {
        stop: () => push(undefined),
        async *[Symbol.asyncIterator]() {
          for (;;) {
            if (queue.length === 0) await new Promise<void>((resolve) => (wake = resolve));
            const entry = queue.shift();
            if (entry === undefined) return;
            yield entry;
          }
        },
      };
    },
  };
  return {
    bucket,
    cancel(runId: string, value: unknown = { cancelled: true, at: new Date().toISOString() }) {
      const entry: WatchEntry = { key: runId, value: encodeJson(value), revision: 1, operation: 'PUT' };
      stored.set(runId, entry);
      push(entry);
    },
    end: () => push(undefined),
    get watches() {
      return watches;
    },
  };
}

const tick = () => new Promise((resolve) => setTimeout(resolve, 5));

describe('cancel watch', () => {
  it('aborts the tracked calls of a cancelled run, and only those', async () => {
    const control = fakeRunControl();
    const watch = createCancelWatch({ bucket: control.bucket, logger: createLogger('tool-worker-test', 'silent') });
    await watch.start();
    await tick();
    const first = watch.track('run_a');
    const second = watch.track('run_a');
    const other = watch.track('run_b');
    second.release();
    control.cancel('run_a');
    await tick();
    expect(first.signal.aborted).toBe(true);
    expect(second.signal.aborted).toBe(false);
    expect(other.signal.aborted).toBe(false);
    await watch.stop();
    expect(await watch.closed).toBeUndefined();
  });

  it('answers isCancelled from the bucket', async () => {
    const control = fakeRunControl();
    const watch = createCancelWatch({ bucket: control.bucket, logger: createLogger('tool-worker-test', 'silent') });
    control.cancel('run_a');
    expect(await watch.isCancelled('run_a')).toBe(true);
    expect(await watch.isCancelled('run_b')).toBe(false);
  });

  it('treats a malformed entry as a cancellation and restarts a watch that ends', async () => {
    const control = fakeRunControl();
    const watch = createCancelWatch({ bucket: control.bucket, logger: createLogger('tool-worker-test', 'silent'), restartDelayMs: 1 });
    await watch.start();
    await tick();
    control.end();
    await tick();
    expect(control.watches).toBe(2);
    const tracked = watch.track('run_a');
    control.cancel('run_a', { something: 'else' });
    await tick();
    expect(tracked.signal.aborted).toBe(true);
    await watch.stop();
  });
});
