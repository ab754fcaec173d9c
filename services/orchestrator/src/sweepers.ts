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
  type TimelineKind,
  type WorkTimeline,
  timelineGraceMs,
  timelineSlotOf,
  timelineSlotStart,
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
 * Runs `tick` every `intervalMs`, never two at once, until stopped. The outbox sweep reads only
 * `run_work` (new runs' items, empty when nothing is being created; FerretDB scans it: it has no
 * index on `dueAt`); the deadline and retention sweeps read the work timeline by exact `_id`
 * (`createTimelineSweep`), never a list that grows with the runs. A slow query still stretches the pause after
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

/** Slots a timeline sweep reads per tick at most (a replica catching up after a long stop reads the rest at the next ticks). */
export const timelineSlotsPerTick = 600;
/** How often a timeline sweeper records its cursor (a replica that starts reads on from it). */
export const timelineCursorWriteMs = 30_000;

/** What a timeline sweep reads: the timeline, and the items its entries point to. */
export type TimelineSweepStore = Pick<RunStore, 'loadWork' | 'indexWork'> & { timeline: Pick<WorkTimeline, 'read' | 'clear' | 'readCursor' | 'writeCursor'> };

/** A sweep over the timeline of one kind (deadline, retention): its tick, and how late it is. */
export type TimelineSweep = {
  (): Promise<number>;
  /**
   * The due time (ms) of the oldest item this replica knows due and not yet handled: the start
   * of the first slot it has not read though it is over, or an item waiting for its retry; null
   * when nothing is behind.
   */
  oldestPendingDueAt(): number | null;
};

/**
 * Acts on the items of `kind` as they fall due, reading the timeline (`work-timeline.ts`)
 * slot by slot by exact `_id` (issue 9, item 5): an idle tick reads one entry `_id` that is not
 * there; nothing reads the item lists, which grow with the live runs. Each slot is read
 * `timelineGraceMs` after it ends; for each entry the item is read by `_id` and handed to `handle`
 * only if it is still due (a stale entry, its item moved later or gone, is skipped), once per
 * slot. When every item of the slot was handled the slot's entries are deleted; an item that
 * fails is logged, counted and retried with the item backoff, its slot kept (re-read at later
 * ticks) and the other items and slots go on. Every replica reads every slot (its in-memory
 * cursor, recorded in the timeline every `timelineCursorWriteMs` for a replica that starts);
 * what two replicas both send is deduplicated by its msg id, and a crash re-reads from the
 * recorded cursor. With no cursor recorded (a new database, or items written by an older version
 * without entries), the first tick indexes the stored items once. Resolves to the time its
 * queries took (the pacing of `every`).
 */
function createTimelineSweep(deps: {
  kind: TimelineKind;
  store: TimelineSweepStore;
  logger: Logger;
  failures: MetricsCounter | undefined;
  keyOf(item: WorkItem): string;
  handle(item: WorkItem, key: string): Promise<void>;
  failedMessage: string;
  onHandled(count: number): void;
  /** Runs before the one-time index (with no cursor recorded). */
  beforeIndex?: () => Promise<void>;
  now: () => number;
}): TimelineSweep {
  const { kind, store, now } = deps;
  const backoff = createItemBackoff(now);
  let cursor: number | undefined;
  /** Slots read with items left to retry: the earliest due time among those, and the keys already handled (not sent again). */
  const unfinished = new Map<number, { earliestLeft: number; handled: Set<string> }>();
  let recorded: number | undefined;
  let recordedAt = Number.NEGATIVE_INFINITY;

  /** Reads one slot and handles its due items; true when all were handled (its entries are then deleted). */
  async function sweepSlot(slot: number, nowIso: string, spent: { handleMs: number; handled: number }): Promise<boolean> {
    const entries = await store.timeline.read(kind, slot);
    if (entries.length === 0) return true;
    let earliestLeft: number | undefined;
    const seen = new Set<string>();
    const handled = unfinished.get(slot)?.handled ?? new Set<string>();
    for (const entry of entries) {
      if (seen.has(entry.runId)) continue; // one run's item, pointed to twice in this slot
      seen.add(entry.runId);
      const item = await store.loadWork(kind, entry.runId);
      if (!item || item.dueAt > nowIso) continue; // stale: moved later (its own entry is in its slot) or gone
      const key = deps.keyOf(item);
      if (handled.has(key)) continue;
      if (backoff.waiting(key)) {
        earliestLeft = Math.min(earliestLeft ?? Number.POSITIVE_INFINITY, Date.parse(item.dueAt));
        continue;
      }
      const handleStarted = now();
      try {
        await deps.handle(item, key);
        backoff.succeeded(key);
        handled.add(key);
        spent.handled += 1;
      } catch (error) {
        // Isolated: this item waits for its backoff (its slot is kept); the others go on.
        const count = backoff.failed(key);
        deps.failures?.inc();
        deps.logger.warn({ sweeper: kind, runId: item.runId, tenantId: item.tenantId, failures: count, err: ensureError(error) }, deps.failedMessage);
        earliestLeft = Math.min(earliestLeft ?? Number.POSITIVE_INFINITY, Date.parse(item.dueAt));
      } finally {
        spent.handleMs += now() - handleStarted;
      }
    }
    if (earliestLeft !== undefined) {
      unfinished.set(slot, { earliestLeft, handled });
      return false;
    }
    // Every item of the slot was handled (or is stale): its entries go, highest first.
    await store.timeline.clear(kind, slot, entries.length);
    unfinished.delete(slot);
    return true;
  }

  const sweep = async () => {
    const started = now();
    const spent = { handleMs: 0, handled: 0 };
    if (cursor === undefined) {
      const stored = await store.timeline.readCursor(kind);
      if (stored === null) {
        // Before the index: items written meanwhile write their own entries.
        const startSlot = timelineSlotOf(started);
        await deps.beforeIndex?.();
        const indexed = await store.indexWork(kind);
        if (indexed > 0) deps.logger.info({ sweeper: kind, count: indexed }, 'indexed stored items in the work timeline');
        await store.timeline.writeCursor(kind, startSlot);
        cursor = startSlot;
        recorded = startSlot;
        recordedAt = started;
      } else {
        cursor = stored;
        recorded = stored;
        recordedAt = started;
      }
    }
    const nowIso = new Date(started).toISOString();
    backoff.beginSweep();
    for (const slot of [...unfinished.keys()]) await sweepSlot(slot, nowIso, spent);
    const lastOver = timelineSlotOf(started - timelineGraceMs) - 1;
    for (let read = 0; cursor <= lastOver && read < timelineSlotsPerTick; read += 1) {
      await sweepSlot(cursor, nowIso, spent);
      cursor += 1;
    }
    // Only items seen in this sweep keep their backoff: a failed item's slot is re-read at every tick until it is handled.
    backoff.endSweep();
    const safe = Math.min(cursor, ...unfinished.keys());
    if (safe !== recorded && started - recordedAt >= timelineCursorWriteMs) {
      await store.timeline.writeCursor(kind, safe);
      recorded = safe;
      recordedAt = started;
    }
    if (spent.handled) deps.onHandled(spent.handled);
    return now() - started - spent.handleMs;
  };
  return Object.assign(sweep, {
    oldestPendingDueAt(): number | null {
      const at = now();
      let oldest: number | null = cursor !== undefined && cursor <= timelineSlotOf(at - timelineGraceMs) - 1 ? timelineSlotStart(cursor) : null;
      for (const { earliestLeft } of unfinished.values()) oldest = oldest === null ? earliestLeft : Math.min(oldest, earliestLeft);
      return oldest;
    },
  });
}

type DeadlineStore = TimelineSweepStore & Pick<RunStore, 'moveLegacyDeadlines'>;

/**
 * Sends each run whose deadline item (`run_deadlines`) has passed a `timer` message, as the
 * work timeline brings it due; the run's transition decides what the deadline means. Nothing
 * waits in memory: deadlines and their timeline entries live in MongoDB and every replica reads
 * every slot. The msg id dedupes the timers of several replicas; a failed publish is isolated
 * like the outbox sweeper's.
 */
export function createDeadlineSweeper(deps: { store: DeadlineStore; js: JetStreamClient; logger: Logger; metrics?: Metrics; intervalMs?: number; now?: () => number }): Sweeper & { oldestPendingDueAt(): number | null } {
  const sweep = createDeadlineSweep(deps);
  return { ...every(deps.intervalMs ?? 1_000, 'deadline', deps.logger, sweep), oldestPendingDueAt: sweep.oldestPendingDueAt };
}

/** One deadline sweep tick (exported for tests). */
export function createDeadlineSweep(deps: { store: DeadlineStore; js: Pick<JetStreamClient, 'publish'>; logger: Logger; metrics?: Metrics; now?: () => number }): TimelineSweep {
  return createTimelineSweep({
    kind: 'deadline',
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
    onHandled: (count) => deps.logger.info({ count, collection: collectionNames.runDeadlines }, 'deadline timers sent'),
    async beforeIndex() {
      // Deadline items a version before `run_deadlines` wrote into `run_work`: moved, then indexed with the rest.
      const moved = await deps.store.moveLegacyDeadlines();
      if (moved) deps.logger.info({ count: moved, from: collectionNames.runWork, to: collectionNames.runDeadlines }, 'moved deadline items an older version wrote');
    },
    now: deps.now ?? Date.now,
  });
}

type RetentionStore = TimelineSweepStore & Pick<RunStore, 'pruneRunHistory' | 'deleteWork'>;

/**
 * Prunes ended runs' history once `RUN_RETENTION` has passed (issue 9): FerretDB has no TTL
 * indexes, so each run that ends leaves a `retention:<runId>` item in `run_retention` (due at its end
 * plus the retention, see run-processor.ts `settle`), and this sweep hands every one the work
 * timeline brings due to `pruneRunHistory` (read model marked `prunedAt`, then every per-run
 * history collection deleted by exact `_id`), then deletes the item. Crash windows: dying between
 * the deletes, or after them and before the item's delete, leaves the item and its entry, and the
 * next sweep (any replica's, from the recorded cursor) does the rest: every step is idempotent. A
 * run whose read model does not record its end yet is retried with the item backoff; failures are
 * isolated per item like the other sweeps'.
 */
export function createRetentionSweeper(deps: { store: RetentionStore; logger: Logger; metrics?: Metrics; intervalMs?: number; now?: () => number }): Sweeper {
  return every(deps.intervalMs ?? 5_000, 'retention', deps.logger, createRetentionSweep(deps));
}

/** One retention sweep (exported for tests). */
export function createRetentionSweep(deps: { store: RetentionStore; logger: Logger; metrics?: Metrics; now?: () => number }): TimelineSweep {
  const now = deps.now ?? Date.now;
  const pruned = deps.metrics?.counter('runs_pruned_total', 'Ended runs whose history the retention sweeper deleted (RUN_RETENTION)');
  return createTimelineSweep({
    kind: 'retention',
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
    onHandled: (count) => deps.logger.info({ count, collection: collectionNames.runRetention }, 'ended runs pruned'),
    now,
  });
}
