import {
  collections as collectionNames,
  ensureError,
  type WorkItem,
  makeEnvelope,
  publishJson,
  subjects,
  type JetStreamClient,
  type Logger,
  type Metrics,
  type MetricsCounter,
  type RunStore,
  type SweepCursor,
} from '@abide/shared';
import type { RunProcessor } from './run-processor.ts';

export type Sweeper = { start(): void; stop(): Promise<void> };

/** A sweep waits at least this many times its own last duration before the next one. */
export const sweepDutyFactor = 20;
/** The longest pause between two sweeps, however slow they are. */
export const maxSweepIntervalMs = 60_000;

/** The pause before the next sweep: `intervalMs`, stretched to `sweepDutyFactor` × the last sweep's database time (capped). */
export function nextSweepDelay(intervalMs: number, lastDurationMs: number): number {
  return Math.min(Math.max(intervalMs, maxSweepIntervalMs), Math.max(intervalMs, sweepDutyFactor * lastDurationMs));
}

/**
 * Runs `tick` every `intervalMs`, never two at once, until stopped. A sweep reads only its kind's
 * work list (`run_work`, `run_deadlines`, `run_retention`), whose size follows the runs with
 * pending work of that kind (FerretDB scans it: it has no index on `dueAt`), never the growing
 * collections, and the watermarked ones read nothing until an item is due; a slow query still stretches the pause after
 * it (`nextSweepDelay`), keeping each replica's sweeping to about 1/`sweepDutyFactor` of the
 * database's time instead of saturating it. `tick` resolves to the time its queries took: time
 * spent handling items (a publish waiting through a NATS election) is not the database's and
 * must not stretch the pause, or one slow publish would hold every pending outbox and deadline
 * back for `maxSweepIntervalMs` once NATS is back.
 */
function every(intervalMs: number, name: string, logger: Logger, tick: () => Promise<number>): Sweeper {
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> = Promise.resolve();
  let stopped = false;
  let lastQueryMs = 0;
  const schedule = () => {
    if (stopped) return;
    timer = setTimeout(() => {
      const startedAt = Date.now();
      running = tick()
        .then(
          (queryMs) => {
            lastQueryMs = queryMs;
          },
          (error: unknown) => {
            // The query itself failed (or hung until the driver gave up): pace by how long that took.
            lastQueryMs = Date.now() - startedAt;
            logger.warn({ sweeper: name, err: ensureError(error) }, 'sweep failed; will retry');
          },
        )
        .finally(schedule);
    }, nextSweepDelay(intervalMs, lastQueryMs));
    timer.unref();
  };
  return {
    start: schedule,
    async stop() {
      stopped = true;
      clearTimeout(timer);
      await running;
    },
  };
}

/**
 * How long an item that failed waits before the sweeper tries it again: doubling from 2 s to
 * 30 s. Capped low: most failures are the bus being briefly unavailable (an election), after
 * which every item must go out soon, and a failing item costs one attempt per 30 s at most.
 */
export function itemRetryDelayMs(failures: number): number {
  return Math.min(30_000, 2_000 * 2 ** Math.max(0, failures - 1));
}

/**
 * Per-item failure isolation for a sweep (issue 8, finding 5): an item that fails is logged,
 * counted and skipped until its backoff passes; the others go on. Bounded: entries are dropped
 * when their item succeeds or stops showing up in sweeps.
 */
function createItemBackoff(now: () => number) {
  const failing = new Map<string, { failures: number; retryAt: number; seenInSweep: number }>();
  let sweep = 0;
  return {
    beginSweep() {
      sweep += 1;
    },
    /** True while `key` waits out its backoff. */
    waiting(key: string): boolean {
      const entry = failing.get(key);
      if (!entry) return false;
      entry.seenInSweep = sweep;
      return entry.retryAt > now();
    },
    failed(key: string): number {
      const failures = (failing.get(key)?.failures ?? 0) + 1;
      failing.set(key, { failures, retryAt: now() + itemRetryDelayMs(failures), seenInSweep: sweep });
      return failures;
    },
    succeeded(key: string) {
      failing.delete(key);
    },
    /** Forgets items the last full sweep did not see (published or ended meanwhile). */
    endSweep() {
      for (const [key, entry] of failing) if (entry.seenInSweep < sweep) failing.delete(key);
    },
    get size() {
      return failing.size;
    },
  };
}

/** The outbox sweeper's page size. */
export const outboxSweepPageSize = 200;

/**
 * Finishes outbox work items (`run_work`, kind `outbox`) due for longer than their 5 s grace:
 * a new run whose creator died between committing version 1 and publishing its `start`
 * (DESIGN §3). Every replica runs it; `Nats-Msg-Id` dedupes what two replicas both send. Each
 * sweep pages through every due item, oldest first; one that fails is logged with its runId,
 * counted (`outbox_republish_failures_total`) and retried with backoff, and never stops the others.
 * (A step's own outbox needs no item: its input is acked only after the publish, see run-processor.ts.)
 */
export function createOutboxSweeper(deps: {
  store: Pick<RunStore, 'findDueWork'>;
  processor: Pick<RunProcessor, 'republish'>;
  logger: Logger;
  metrics?: Metrics;
  intervalMs?: number;
  now?: () => number;
}): Sweeper {
  return every(deps.intervalMs ?? 2_000, 'outbox', deps.logger, createOutboxSweep(deps));
}

/**
 * One sweep over the due `run_work` items of `kind` (both sweepers): pages through every due item
 * (earliest first), hands each to `handle`, and isolates failures per item: one that fails is
 * logged with its runId, counted in `failures` and skipped until its backoff passes, and never
 * stops the others. Resolves to the number of items handled and the time its queries took.
 */
function createWorkSweep(deps: {
  kind: WorkItem['kind'];
  pageSize: number;
  store: Pick<RunStore, 'findDueWork'>;
  logger: Logger;
  failures: MetricsCounter | undefined;
  /** The item's backoff key (what a retry is identified by). */
  keyOf(item: WorkItem): string;
  handle(item: WorkItem, key: string): Promise<void>;
  /** The log message of a failed item. */
  failedMessage: string;
  now: () => number;
}): () => Promise<{ handled: number; queryMs: number; retriesPending: boolean }> {
  const backoff = createItemBackoff(deps.now);
  return async () => {
    backoff.beginSweep();
    const nowIso = new Date(deps.now()).toISOString();
    let after: SweepCursor | undefined;
    let handled = 0;
    let queryMs = 0;
    for (;;) {
      const queryStarted = deps.now();
      const page = await deps.store.findDueWork(deps.kind, nowIso, deps.pageSize, after);
      queryMs += deps.now() - queryStarted;
      for (const item of page) {
        const key = deps.keyOf(item);
        if (backoff.waiting(key)) continue;
        try {
          await deps.handle(item, key);
          backoff.succeeded(key);
          handled += 1;
        } catch (error) {
          // Isolated: this item waits for its backoff; the sweep goes on with the others.
          const count = backoff.failed(key);
          deps.failures?.inc();
          deps.logger.warn({ sweeper: deps.kind, runId: item.runId, tenantId: item.tenantId, failures: count, err: ensureError(error) }, deps.failedMessage);
        }
      }
      if (page.length < deps.pageSize) break;
      const last = page.at(-1)!;
      after = { key: last.dueAt, id: last._id };
    }
    backoff.endSweep();
    return { handled, queryMs, retriesPending: backoff.size > 0 };
  };
}

/** One outbox sweep (exported for tests). */
export function createOutboxSweep(deps: {
  store: Pick<RunStore, 'findDueWork'>;
  processor: Pick<RunProcessor, 'republish'>;
  logger: Logger;
  metrics?: Metrics;
  now?: () => number;
}): () => Promise<number> {
  const sweep = createWorkSweep({
    kind: 'outbox',
    pageSize: outboxSweepPageSize,
    store: deps.store,
    logger: deps.logger,
    failures: deps.metrics?.counter('outbox_republish_failures_total', 'Unpublished outboxes the sweeper failed to publish (each retried later with backoff)'),
    keyOf: (item) => item._id,
    handle: (item) => deps.processor.republish(item),
    failedMessage: 'could not publish an unpublished outbox; will retry',
    now: deps.now ?? Date.now,
  });
  return async () => (await sweep()).queryMs;
}

/** The deadline sweeper's page size. */
export const deadlineSweepPageSize = 500;

/** How often a watermarked sweeper reads its list even when its watermark says nothing is due. */
export const fullDeadlineSweepMs = 60_000;

/**
 * When a sweeper of far-future work has something to do (issue 9, item 5: idle CPU with many
 * suspended runs; a sweep is a scan of its list on FerretDB): the earliest item not yet due,
 * learnt from the last sweep and lowered by every item this process writes. Until then a tick is
 * skipped without touching the database. Items other replicas write are theirs to sweep; a full
 * sweep every `fullSweepMs` still finds them (and those of a replica that died), so such an item
 * is acted on at most `fullSweepMs` late. Used by the deadline and retention sweepers.
 */
export function createWorkWatermark(options: { now?: () => number; fullSweepMs?: number } = {}) {
  const now = options.now ?? Date.now;
  const fullSweepMs = options.fullSweepMs ?? fullDeadlineSweepMs;
  let nextDueAt = Number.NEGATIVE_INFINITY; // unknown until the first sweep
  let lastFullSweepAt = Number.NEGATIVE_INFINITY;
  let sweeping = false;
  let writtenDuringSweep = Number.POSITIVE_INFINITY;
  return {
    /** An item this process wrote, due at `dueAtIso` (called after the write landed). */
    written(dueAtIso: string): void {
      const at = Date.parse(dueAtIso);
      nextDueAt = Math.min(nextDueAt, at);
      // A sweep in flight may have read the list before this write: `end` keeps it.
      if (sweeping) writtenDuringSweep = Math.min(writtenDuringSweep, at);
    },
    /** Whether a sweep is needed now, and whether it is the periodic full one. */
    due(): { sweep: boolean; full: boolean } {
      const at = now();
      const full = at - lastFullSweepAt >= fullSweepMs;
      return { sweep: full || at >= nextDueAt, full };
    },
    begin(): number {
      sweeping = true;
      writtenDuringSweep = Number.POSITIVE_INFINITY;
      return now();
    },
    /**
     * The sweep begun at `startedAt` ended: `earliest` is the earliest item due after what it
     * handled (null: none); `retriesPending` when items wait for a retry (sweep again next tick).
     */
    end(startedAt: number, full: boolean, earliest: string | null, retriesPending: boolean): void {
      sweeping = false;
      if (full) lastFullSweepAt = startedAt;
      nextDueAt = Math.min(earliest === null ? Number.POSITIVE_INFINITY : Date.parse(earliest), writtenDuringSweep, retriesPending ? now() : Number.POSITIVE_INFINITY);
    },
  };
}
export type WorkWatermark = ReturnType<typeof createWorkWatermark>;

/**
 * A sweep behind a watermark: skipped while nothing is due; otherwise runs `sweep` (after
 * `onFullSweep` on a full one), then reads the earliest item left to set the watermark. Resolves
 * to the time its queries took (the sweep's pacing).
 */
function watermarked(deps: {
  kind: WorkItem['kind'];
  watermark: WorkWatermark;
  store: Pick<RunStore, 'earliestDueAfter'>;
  sweep: () => Promise<{ handled: number; queryMs: number; retriesPending: boolean }>;
  onFullSweep?: () => Promise<void>;
  onHandled(count: number): void;
  now: () => number;
}): () => Promise<number> {
  const { watermark, now } = deps;
  return async () => {
    const { sweep: needed, full } = watermark.due();
    if (!needed) return 0;
    const startedAt = watermark.begin();
    let ended = false;
    try {
      let fullMs = 0;
      if (full && deps.onFullSweep) {
        const fullStarted = now();
        await deps.onFullSweep();
        fullMs = now() - fullStarted;
      }
      const { handled, queryMs, retriesPending } = await deps.sweep();
      if (handled) deps.onHandled(handled);
      const earliestStarted = now();
      const earliest = await deps.store.earliestDueAfter(deps.kind, new Date(startedAt).toISOString());
      watermark.end(startedAt, full, earliest, retriesPending);
      ended = true;
      return fullMs + queryMs + (now() - earliestStarted);
    } finally {
      // A sweep that failed learnt nothing: sweep again at the next tick.
      if (!ended) watermark.end(startedAt, false, null, true);
    }
  };
}

type DeadlineStore = Pick<RunStore, 'findDueWork' | 'earliestDueAfter' | 'moveLegacyDeadlines'>;

/**
 * Finds deadline items (`run_deadlines`) that have passed and sends each run a `timer` message;
 * the run's transition decides what the deadline means. Nothing waits in memory: deadlines live
 * in MongoDB and any replica enforces them (the watermark only skips sweeps that would find
 * nothing). The msg id dedupes the timers of several replicas. Each sweep pages through every
 * due item (earliest first), so runs whose deadlines stay due (stuck, or not processed yet)
 * cannot fill a page and starve the rest; a failed publish is isolated like the outbox sweeper's.
 */
export function createDeadlineSweeper(deps: { store: DeadlineStore; watermark: WorkWatermark; js: JetStreamClient; logger: Logger; metrics?: Metrics; intervalMs?: number; now?: () => number }): Sweeper {
  return every(deps.intervalMs ?? 1_000, 'deadline', deps.logger, createDeadlineSweep(deps));
}

/** One deadline sweep tick (exported for tests): skipped while the watermark says nothing is due. */
export function createDeadlineSweep(deps: {
  store: DeadlineStore;
  watermark: WorkWatermark;
  js: Pick<JetStreamClient, 'publish'>;
  logger: Logger;
  metrics?: Metrics;
  now?: () => number;
}): () => Promise<number> {
  const sweep = createWorkSweep({
    kind: 'deadline',
    pageSize: deadlineSweepPageSize,
    store: deps.store,
    logger: deps.logger,
    failures: deps.metrics?.counter('deadline_timer_failures_total', 'Deadline timers the sweeper failed to publish (each retried later with backoff)'),
    // The timer's msg id: one timer per deadline, however many replicas send it.
    keyOf: (item) => `${item.runId}:timer:${item.dueAt}`,
    async handle(item, id) {
      const message = makeEnvelope('timer', { id, runId: item.runId, tenantId: item.tenantId }, { deadlineAt: item.dueAt });
      await publishJson(deps.js as JetStreamClient, subjects.runInbox(item.runId, 'timer'), message, id);
    },
    failedMessage: 'could not send a deadline timer; will retry',
    now: deps.now ?? Date.now,
  });
  const now = deps.now ?? Date.now;
  return watermarked({
    kind: 'deadline',
    watermark: deps.watermark,
    store: deps.store,
    sweep,
    now,
    async onFullSweep() {
      const moved = await deps.store.moveLegacyDeadlines();
      if (moved) deps.logger.info({ count: moved, from: collectionNames.runWork, to: collectionNames.runDeadlines }, 'moved deadline items an older version wrote');
    },
    onHandled: (count) => deps.logger.info({ count, collection: collectionNames.runDeadlines }, 'deadline timers sent'),
  });
}

/** The retention sweeper's page size. */
export const retentionSweepPageSize = 200;

/**
 * Prunes ended runs' history once `RUN_RETENTION` has passed (issue 9): FerretDB has no TTL
 * indexes, so each run that ends leaves a `retention:<runId>` item in `run_retention` (due at its end
 * plus the retention, see run-processor.ts `settle`), and this sweep hands every due one to
 * `pruneRunHistory` (read model marked `prunedAt`, then every per-run history collection deleted
 * by exact `_id`), then deletes the item. Crash windows: dying between the deletes, or after them
 * and before the item's delete, leaves the item due, and the next sweep (any replica's) does
 * the rest: every step is idempotent. A run whose read model does not record its end yet is
 * retried with the item backoff; failures are isolated per item like the other sweeps'.
 */
export function createRetentionSweeper(deps: {
  store: Pick<RunStore, 'findDueWork' | 'pruneRunHistory' | 'deleteWork' | 'earliestDueAfter'>;
  watermark: WorkWatermark;
  logger: Logger;
  metrics?: Metrics;
  intervalMs?: number;
  now?: () => number;
}): Sweeper {
  return every(deps.intervalMs ?? 5_000, 'retention', deps.logger, createRetentionSweep(deps));
}

/** One retention sweep (exported for tests). */
export function createRetentionSweep(deps: {
  store: Pick<RunStore, 'findDueWork' | 'pruneRunHistory' | 'deleteWork' | 'earliestDueAfter'>;
  watermark: WorkWatermark;
  logger: Logger;
  metrics?: Metrics;
  now?: () => number;
}): () => Promise<number> {
  const now = deps.now ?? Date.now;
  const pruned = deps.metrics?.counter('runs_pruned_total', 'Ended runs whose history the retention sweeper deleted (RUN_RETENTION)');
  const sweep = createWorkSweep({
    kind: 'retention',
    pageSize: retentionSweepPageSize,
    store: deps.store,
    logger: deps.logger,
    failures: deps.metrics?.counter('run_prune_failures_total', 'Ended runs the retention sweeper failed to prune (each retried later with backoff)'),
    keyOf: (item) => item._id,
    async handle(item) {
      const outcome = await deps.store.pruneRunHistory(item.runId, new Date(now()));
      // Not an error of the store: the terminal transition's read model has not landed yet (its
      // writer is between the item and the read model, or died there and its input comes back).
      if (outcome === 'not_settled') throw new Error(`run ${item.runId} has not ended in its read model yet`);
      // Pruned (or nothing was ever stored): the item is done. A crash before this delete repeats the prune, harmlessly.
      await deps.store.deleteWork(item._id);
      if (outcome === 'pruned') pruned?.inc();
    },
    failedMessage: 'could not prune an ended run; will retry',
    now,
  });
  return watermarked({
    kind: 'retention',
    watermark: deps.watermark,
    store: deps.store,
    sweep,
    now,
    onHandled: (count) => deps.logger.info({ count, collection: collectionNames.runRetention }, 'ended runs pruned'),
  });
}
