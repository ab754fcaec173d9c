import { ensureError, kvKeys, runControlEntrySchema, decodeJson, type Logger } from '@abide/shared';
import type { KvEntryLike } from './kv-records.ts';

/** What the cancel watch needs of the `RUN_CONTROL` bucket (a nats.js `KV` fits). */
export type RunControlBucket = {
  get(key: string): Promise<KvEntryLike | null>;
  watch(options: { key: string; include: 'updates'; ignoreDeletes: boolean }): Promise<AsyncIterable<KvEntryLike & { key: string }> & { stop(): void }>;
};

/** A handle on one in-flight call: its signal aborts when its run is cancelled. */
export type CancelTracking = { signal: AbortSignal; release(): void };

export type CancelWatch = {
  /** True when `RUN_CONTROL` holds the run (it was cancelled). */
  isCancelled(runId: string): Promise<boolean>;
  /**
   * Tracks an in-flight call of `runId` until `release()`. Track before checking `isCancelled`,
   * so that a cancellation landing between the check and the start of the work still aborts it.
   */
  track(runId: string): CancelTracking;
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Resolves (never rejects) when the watch stops; with the error if it failed for good. */
  readonly closed: Promise<Error | undefined>;
};

/**
 * Watches `RUN_CONTROL` (DESIGN §4.7) and aborts the in-flight calls of a run put there. Only
 * updates are watched: calls that start later ask `isCancelled` first. A watch that ends
 * unexpectedly (NATS trouble) is restarted after `restartDelayMs`.
 */
export function createCancelWatch(deps: { bucket: RunControlBucket; logger: Logger; restartDelayMs?: number }): CancelWatch {
  const { bucket, logger } = deps;
  const restartDelayMs = deps.restartDelayMs ?? 1_000;
  const inFlight = new Map<string, Set<AbortController>>();
  let watcher: { stop(): void } | undefined;
  let stopping = false;
  let loop: Promise<void> | undefined;
  let resolveClosed: (error: Error | undefined) => void = () => {};
  const closed = new Promise<Error | undefined>((resolve) => (resolveClosed = resolve));

  function abortRun(runId: string, reason: string | undefined): void {
    const controllers = inFlight.get(runId);
    if (!controllers?.size) return;
    logger.info({ runId, calls: controllers.size, reason }, 'run cancelled; aborting its tool calls');
    for (const controller of controllers) controller.abort(new Error(`run ${runId} was cancelled`));
  }

  async function watchOnce(): Promise<void> {
    const iterator = await bucket.watch({ key: '>', include: 'updates', ignoreDeletes: true });
    watcher = iterator;
    if (stopping) iterator.stop();
    for await (const entry of iterator) {
      if (entry.operation !== 'PUT') continue;
      let reason: string | undefined;
      try {
        reason = runControlEntrySchema.parse(decodeJson(entry.value)).reason;
      } catch (error) {
        // The entry's existence is what cancels a run; a malformed value still does, loudly.
        logger.warn({ runId: entry.key, err: ensureError(error) }, 'RUN_CONTROL entry does not parse; treating the run as cancelled');
      }
      abortRun(entry.key, reason);
    }
  }

  async function run(): Promise<void> {
    while (!stopping) {
      try {
        await watchOnce();
        if (!stopping) logger.warn('RUN_CONTROL watch ended; restarting');
      } catch (error) {
        logger.warn({ err: ensureError(error) }, 'RUN_CONTROL watch failed; restarting');
      }
      if (!stopping) await new Promise((resolve) => setTimeout(resolve, restartDelayMs).unref());
    }
  }

  return {
    closed,
    async isCancelled(runId) {
      const entry = await bucket.get(kvKeys.runControl(runId));
      return entry !== null && entry.operation === 'PUT';
    },
    track(runId) {
      const controller = new AbortController();
      let controllers = inFlight.get(runId);
      if (!controllers) inFlight.set(runId, (controllers = new Set()));
      controllers.add(controller);
      return {
        signal: controller.signal,
        release() {
          controllers.delete(controller);
          if (controllers.size === 0 && inFlight.get(runId) === controllers) inFlight.delete(runId);
        },
      };
    },
    async start() {
      loop = run().then(
        () => resolveClosed(undefined),
        (error: unknown) => resolveClosed(ensureError(error)),
      );
    },
    async stop() {
      stopping = true;
      watcher?.stop();
      await loop;
    },
  };
}
