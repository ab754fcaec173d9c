import { AbideError, ensureError } from './errors.ts';
import { decodeJson } from './jetstream.ts';
import type { Logger } from './logger.ts';
import { runControlEntrySchema } from './messages.ts';
import { kvKeys } from './names.ts';

/** In-flight work that a run's cancellation aborts. */
export type CancellationTracker = {
  /** Registers in-flight work of `runId`: `signal` aborts when the run is cancelled. Call `release` when done. */
  track(runId: string): { signal: AbortSignal; release(): void };
  /** True when `RUN_CONTROL` says the run was cancelled. */
  isCancelled(runId: string): Promise<boolean>;
};

/** An entry of `RUN_CONTROL` as the watch sees it (a subset of nats.js `KvEntry`). */
export type RunControlKvEntry = { key: string; value: Uint8Array; revision: number; operation: 'PUT' | 'DEL' | 'PURGE' };

/** The part of the `RUN_CONTROL` KV bucket the watch uses (nats.js `KV` satisfies it). */
export type RunControlBucket = {
  get(key: string): Promise<RunControlKvEntry | null>;
  watch(options: { include: 'updates'; resumeFromRevision?: number }): Promise<AsyncIterable<RunControlKvEntry> & { stop(): void }>;
};

export type CancelWatch = CancellationTracker & {
  start(): Promise<void>;
  stop(): Promise<void>;
  /** Resolves (never rejects) when the watch has stopped. */
  readonly closed: Promise<Error | undefined>;
};

/** The reason a cancelled run's signal carries. */
export class RunCancelledError extends AbideError {
  override readonly name = 'RunCancelledError';
  constructor(runId: string) {
    super('cancelled', `run ${runId} was cancelled`, { retryable: false });
  }
}

/**
 * Learns of cancelled runs (DESIGN §4 step 7): watches `RUN_CONTROL` for new entries and aborts
 * the in-flight work of those runs; `isCancelled` reads the bucket before work starts. Track the
 * work first, then check: a cancel that lands between the two is seen by the watch.
 * A watch that ends unexpectedly is restarted from the last revision seen, so no entry is lost.
 */
export function createCancelWatch(deps: { bucket: RunControlBucket; logger: Logger; restartDelayMs?: number }): CancelWatch {
  const { bucket, logger } = deps;
  const log = logger.child({ component: 'cancel-watch' });
  const inFlight = new Map<string, Set<AbortController>>();
  let stopping = false;
  let lastRevision: number | undefined;
  let iterator: (AsyncIterable<RunControlKvEntry> & { stop(): void }) | undefined;
  let loop: Promise<void> | undefined;
  let resolveClosed: (error: Error | undefined) => void = () => {};
  const closed = new Promise<Error | undefined>((resolve) => (resolveClosed = resolve));

  function isCancelEntry(entry: RunControlKvEntry): boolean {
    if (entry.operation !== 'PUT') return false;
    try {
      return runControlEntrySchema.safeParse(decodeJson(entry.value)).success;
    } catch (error) {
      // Not JSON: not a cancellation this version understands; said once, in the log.
      log.warn({ key: entry.key, err: ensureError(error) }, 'RUN_CONTROL entry does not parse; ignored');
      return false;
    }
  }

  function abortRun(runId: string) {
    const controllers = inFlight.get(runId);
    if (!controllers) return;
    log.info({ runId, calls: controllers.size }, 'run cancelled; aborting its model calls');
    for (const controller of controllers) controller.abort(new RunCancelledError(runId));
  }

  async function watchLoop(): Promise<void> {
    while (!stopping) {
      try {
        iterator = await bucket.watch({ include: 'updates', ...(lastRevision === undefined ? {} : { resumeFromRevision: lastRevision + 1 }) });
        for await (const entry of iterator) {
          lastRevision = entry.revision;
          if (isCancelEntry(entry)) abortRun(entry.key);
        }
        if (!stopping) log.warn('RUN_CONTROL watch ended; restarting');
      } catch (error) {
        if (stopping) break;
        log.warn({ err: ensureError(error) }, 'RUN_CONTROL watch failed; restarting');
      }
      if (!stopping) await new Promise((resolve) => setTimeout(resolve, deps.restartDelayMs ?? 1_000));
    }
  }

  return {
    closed,
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
    async isCancelled(runId) {
      const entry = await bucket.get(kvKeys.runControl(runId));
      return entry !== null && isCancelEntry(entry);
    },
    async start() {
      loop = watchLoop().then(
        () => resolveClosed(undefined),
        (error: unknown) => resolveClosed(ensureError(error)),
      );
    },
    async stop() {
      stopping = true;
      iterator?.stop();
      await loop;
    },
  };
}
