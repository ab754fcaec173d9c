import {
  AbideError,
  isTerminalStatus,
  outboxEntryId,
  type WorkItem,
  type CrashPoints,
  encodeOutbox,
  findUnpublishableEntry,
  publishOutbox,
  transitionId,
  TransitionConflictError,
  workIds,
  type Logger,
  type Metrics,
  type MetricsHistogram,
  type EncodedOutbox,
  type OutboxPublisherDeps,
  type RunState,
  type RunStore,
  type TransitionDocument,
} from '@abide/shared';
import type { KeyedQueue } from './keyed-queue.ts';
import { deadlineHorizonMs, transition, type RunInput } from './run-state-machine.ts';
import { createTransitionCache, type CachedTransition } from './transition-cache.ts';
import { createTransitionSpans, type TransitionSpans } from './transition-tracing.ts';

export type RunProcessorDeps = {
  store: RunStore;
  publisher: OutboxPublisherDeps;
  queue: KeyedQueue;
  logger: Logger;
  metrics?: Metrics;
  /** `abide_commit_duration_seconds{result}` (orchestrator-metrics.ts): the commit insert's latency, by outcome. */
  commitLatency?: MetricsHistogram;
  now?: () => Date;
  /**
   * Test-only crash points: `orchestrator.after_commit` (inserted, outbox not published),
   * `orchestrator.after_publish` (the outbox of a transition this call committed is published,
   * read model and deadline item not written, message not acked) and
   * `orchestrator.after_republish` (the same for an outbox this process found unpublished).
   */
  crashPoints?: CrashPoints;
  /** Latest transitions kept in memory, so a hot run is read with one probe instead of two reads (`transition-cache.ts`). */
  cacheSize?: number;
  /** The byte bound of that cache. @default 16 MiB */
  cacheBytes?: number;
  /** `RUN_RETENTION` in ms: an ended run's history is pruned this long after it ended (`retention` work item). Null or absent: kept forever. */
  retentionMs?: number | null;
  /**
   * How long the read model of a run that moves on by itself waits before it is written (then
   * for the newest version ready): its next transitions within that time cost no write.
   * @default 1000
   */
  readModelDelayMs?: number;
};

/**
 * What a process knows of a run's deadline item (`run_deadlines`): it wrote it for run version
 * `version`, or knew for that version that it need not (`deadlineWriteNeeded`); either way the
 * stored item is due no later than `dueAt`, that version's `deadlineItemDue` (null: it deleted
 * the item). `retention`: it also inserted the run's retention item at that version.
 */
export type KnownDeadlineItem = { version: number; dueAt: string | null; retention: boolean };

/** Below this `deadlineHorizonMs`, a run's item is due at its deadline (`deadlineItemDue`): an item due sooner would fire that often. */
export const minDeadlineItemHorizonMs = 60_000;

/**
 * When the run's deadline item is due after a transition of `state` at `atMs` (docs/decisions.md,
 * "a running run's deadline item is due within the run's deadline horizon"): no later than the
 * run's deadline, and for a run that works (not one waiting for people) no later than `atMs` plus
 * its `deadlineHorizonMs`, the least time any of its deadlines lies ahead of the transition that
 * sets it. So along a run's steps the due times never decrease (each step's is at least the one
 * before), and the item written at the run's first step serves every step after it
 * (`deadlineWriteNeeded`); a run still working past the horizon gets an early timer, which moves
 * the item on by at most the horizon. A run waiting for people is due at its deadline: one early
 * timer, then quiet until the approval expires.
 */
export function deadlineItemDue(state: RunState, atMs: number): string | null {
  const deadline = state.nextDeadlineAt;
  if (deadline === null || state.status === 'suspended') return deadline;
  const horizon = deadlineHorizonMs(state);
  if (horizon < minDeadlineItemHorizonMs || atMs + horizon >= Date.parse(deadline)) return deadline;
  return new Date(atMs + horizon).toISOString();
}

/**
 * Whether settling run version `version`, whose deadline item is due at `dueAt`
 * (`deadlineItemDue`; null: no deadline), must write the item, given what this process knows of
 * it (docs/decisions.md, "deadline items fire no later than the deadline"). A deadline item need
 * only fire no later than the run's real deadline: one that fires early finds no deadline due, is
 * ignored, and the item is moved on then (the stale-timer path). So the write is skipped when
 * this process handled the item for this very version already, or for the version just before
 * (contiguous: nothing it does not know of came between) with a due time no later than `dueAt`.
 * Never skipped: a first write of a run this process does not know (another replica's, or before
 * a restart), a due time earlier than what is known stored, and a delete (`dueAt` null) of
 * another version.
 */
export function deadlineWriteNeeded(known: KnownDeadlineItem | undefined, version: number, dueAt: string | null): boolean {
  if (!known) return true;
  if (known.version === version) return false;
  if (known.version !== version - 1 || dueAt === null || known.dueAt === null) return true;
  return Date.parse(dueAt) < Date.parse(known.dueAt);
}

/** Whether the run moves on by itself after `transition`: its outbox sends work (a model or tool request, an inbox message) whose answer is the run's next input. */
export function movesOn(transition: Pick<TransitionDocument, 'outbox'>): boolean {
  return transition.outbox.some((entry) => entry.kind === 'llm_request' || entry.kind === 'tool_request' || entry.kind === 'inbox');
}

export type ApplyOutcome = { kind: 'committed'; version: number } | { kind: 'ignored'; reason: string } | { kind: 'unknown_run' };

/** How many times a lost commit race is reloaded and re-applied before the message is handed back. */
const maxConflictRetries = 8;

/**
 * Applies inputs to runs (DESIGN §3 as revised in docs/decisions.md, "one write per step"): load
 * the exact latest transition, publish its outbox if it is not known to be published, compute
 * the next state with the pure transition function, commit it by inserting version v+1 (a
 * duplicate key means another replica won: reload, re-apply), then publish the outbox (events
 * first, then work). The commit insert is the only write the run's next step waits for; the
 * deadline item and (for a run that waits or has ended) the read model are written after the
 * publish, outside the run's queue, and the input is acked only once they are written (`apply`
 * returns then); the read model of a run that moves on by itself follows within
 * `readModelDelayMs`, after the ack (`settle`). Crash windows:
 * - after the commit, before the publish: the input is not acked and comes back after
 *   `ack_wait`; its cause equals the latest transition's, which is not known published (the read
 *   model lags it), so its outbox is published (again, `Nats-Msg-Id` drops repeats) first. Any
 *   other input of the run that comes first does the same before applying anything on top: a
 *   transition is never committed on one whose outbox is not known published;
 * - after the publish, before the read model / deadline item / ack: the same redelivery
 *   publishes again (dropped as duplicates inside the window) and writes them;
 * - after the read model, before the ack: the redelivery finds the transition published and
 *   applied, and is acked (`ack`, not `ackAck`: a lost ack only costs this redelivery);
 * - after the ack, before a delayed read model: the read model lags and does not record the
 *   latest transition published, so whoever applies the run's next input (or loads it) publishes
 *   that outbox again first (the first window's rule), then writes it.
 */
export function createRunProcessor(deps: RunProcessorDeps) {
  const { store, publisher, queue, logger } = deps;
  const retentionMs = deps.retentionMs ?? null;
  const readModelDelayMs = deps.readModelDelayMs ?? 1_000;
  const now = deps.now ?? (() => new Date());
  // The cache's use, for sizing `ORCHESTRATOR_CACHE_BYTES`: misses and evictions that climb under a
  // steady load mean runs are read from the store for every input (docs/operations.md).
  const evictions = deps.metrics?.counter('run_cache_evictions_total', 'Runs dropped from the run cache to stay within ORCHESTRATOR_CACHE_BYTES (or its entry bound)', []);
  const cache = createTransitionCache({ maxEntries: deps.cacheSize, maxBytes: deps.cacheBytes, onEvict: () => evictions?.inc() });
  const cacheLookups = deps.metrics?.counter('run_cache_lookups_total', 'Inputs by where their run came from: kept in memory (hit), carried by the start message (carried), read from the store (miss)', ['result']);
  deps.metrics?.gauge('run_cache_runs', 'Runs kept in the run cache', () => cache.size.entries);
  deps.metrics?.gauge('run_cache_bytes', 'Bytes the run cache counts against ORCHESTRATOR_CACHE_BYTES (run states as JSON, each agent version once)', () => cache.size.bytes);
  const committed = deps.metrics?.counter('transitions_committed_total', 'Transitions committed');
  const conflicts = deps.metrics?.counter('transition_conflicts_total', 'Commit races lost to another replica');
  const ignoredInputs = deps.metrics?.counter('inputs_ignored_total', 'Stale or duplicate inputs acked and ignored');
  const oversize = deps.metrics?.counter('transitions_oversize_total', 'Transitions replaced by a run failure because a message of theirs could never be published');

  function remember(runId: string, entry: CachedTransition) {
    cache.remember(runId, entry);
  }

  /** The exact latest transition: rolled forward from what this process last saw (another replica may have committed since). */
  async function loadLatest(runId: string) {
    const cached = cache.get(runId);
    if (cached) return { transition: await store.rollForward(cached.transition), lastSeq: cached.lastSeq };
    return store.loadLatest(runId);
  }

  /**
   * What to apply the next input to. On the hot path this is the cached transition, unread: if
   * another replica committed since, inserting v+1 fails with a duplicate key and the run is
   * reloaded, so a stale cache can cost a retry but never a wrong commit. An input ignored
   * against an unverified cache is re-checked against the exact latest state before it is acked.
   */
  async function loadForApply(runId: string, verified: boolean, cause: string, first: TransitionDocument | undefined) {
    const cached = cache.get(runId);
    if (cached && !verified) {
      cacheLookups?.inc({ result: 'hit' });
      return { ...cached, verified: false };
    }
    // Version 1 as its `start` carried it (first delivery, `inbox-handler.ts`): committed before
    // that message was published, and taken like a cached copy: unread, so if version 2 exists
    // (another copy of the `start` was applied) its insert fails and the run is loaded.
    if (!cached && first && !verified) {
      cacheLookups?.inc({ result: 'carried' });
      return { transition: first, lastSeq: null, verified: false };
    }
    // A read: a run not kept (or a re-check of one that was: `verified`, not counted again).
    if (!verified) cacheLookups?.inc({ result: 'miss' });
    if (!cached && cause === outboxEntryId(runId, 1, 0)) {
      // A run's `start`, its first input: version 1 and the probe for version 2 at once (the
      // read model holds nothing more: its `lastSeq` is null until an event is published).
      const first = await store.loadFirstIfLatest(runId);
      if (first) return { transition: first, lastSeq: null, verified: true };
    }
    const latest = await loadLatest(runId);
    return latest ? { ...latest, verified: true } : null;
  }

  /** Per run, what this process knows of its deadline item (bounded by the cache's entry count; forgotten when a write of it fails). */
  const deadlineItems = new Map<string, KnownDeadlineItem>();
  const deadlineItemsLimit = deps.cacheSize ?? 10_000;

  function knowDeadlineItem(runId: string, version: number, dueAt: string | null, retention = false) {
    const previous = deadlineItems.get(runId);
    if (previous && previous.version > version) return;
    deadlineItems.delete(runId);
    deadlineItems.set(runId, { version, dueAt, retention: retention || (previous?.version === version && previous.retention) });
    if (deadlineItems.size > deadlineItemsLimit) deadlineItems.delete(deadlineItems.keys().next().value!);
  }

  /**
   * Writes the run's deadline item after `published`, due at `deadlineItemDue`: nothing when
   * `deadlineWriteNeeded` says the stored one already fires no later; otherwise lowered to that
   * time (never later: `lowerDeadline`), or deleted when the run has no deadline. Returns what it did.
   */
  async function settleDeadlineItem(published: TransitionDocument): Promise<'skipped' | 'lowered' | 'deleted'> {
    const { runId, tenantId, version } = published;
    const dueAt = deadlineItemDue(published.state, published.at.getTime());
    if (!deadlineWriteNeeded(deadlineItems.get(runId), version, dueAt)) {
      knowDeadlineItem(runId, version, dueAt);
      return 'skipped';
    }
    if (dueAt === null) await store.writeDeadline(runId, tenantId, null);
    else await store.lowerDeadline(runId, tenantId, dueAt);
    knowDeadlineItem(runId, version, dueAt);
    return dueAt === null ? 'deleted' : 'lowered';
  }

  /** Per run, the read-model write in flight (or queued) in this process: a chain, newest last (by `rankOf`). */
  const settling = new Map<string, { rank: number; done: Promise<void> }>();
  /** Order of read-model writes: by version, and a version's published write after its unpublished one. */
  const rankOf = (transition: TransitionDocument) => transition.version * 2 + (transition.published ? 1 : 0);
  /**
   * Per run, the newest published transition whose work items are written and whose read model
   * waits for `readModelDelayMs` (a run that moves on by itself, `movesOn`), and the timer that
   * writes it.
   */
  const delayedReadModels = new Map<string, { transition: TransitionDocument; lastSeq: number | null }>();
  const readModelTimers = new Map<string, NodeJS.Timeout>();

  /** Appends `write` to the run's chain of writes in this process (unless a write of the same or a higher rank is queued: it covers this one). */
  function chain(runId: string, rank: number, write: () => Promise<void>): { entry: { rank: number; done: Promise<void> }; queued: boolean } {
    const queued = settling.get(runId);
    if (queued && queued.rank >= rank) return { entry: queued, queued: false };
    const entry = { rank, done: (queued?.done ?? Promise.resolve()).then(write, write) };
    settling.set(runId, entry);
    void entry.done.then(
      () => {
        if (settling.get(runId) === entry) settling.delete(runId);
      },
      () => {
        // The write's own caller handles its failure (`settle`, `writeDelayedReadModel`).
        if (settling.get(runId) === entry) settling.delete(runId);
      },
    );
    return { entry, queued: true };
  }

  /**
   * After writes for `published`, looks for a newer version another replica may have committed on
   * top of it: its read model and deadline item may have landed before these writes, and would
   * stay behind for good if that was the run's last transition. Unless this process already knows
   * a newer version (its own writes of it follow in this chain), look for the next version by
   * `_id`; if it exists, bring the run to its latest (publishing it first if not known published,
   * then writing it), so both end at the latest whatever the order writes landed in. (A filter on
   * the version would make the writes conditional instead, but FerretDB 1.24 scans the collection
   * for any filter other than a lone `_id`: measured, 350 ms a write at 10,000 runs.) No probe
   * where no newer version can be: nothing is ever committed on an ended run (the transition
   * function ignores every input of one).
   */
  async function catchUpIfNewer(published: TransitionDocument): Promise<void> {
    const { runId } = published;
    if (isTerminalStatus(published.state.status)) return;
    const latestKnown = cache.get(runId);
    if (latestKnown && latestKnown.transition.version > published.version) return;
    if (await store.exists(runId, published.version + 1)) void catchUp(runId);
  }

  /**
   * Writes the read model, then probes for a newer version (`catchUpIfNewer`), except after a
   * write recording this version not yet published: the one recording it published follows and
   * probes (or, if the publish fails or the process dies first, the redelivered input's does).
   */
  async function writeReadModel(published: TransitionDocument, lastSeq: number | null): Promise<void> {
    const { runId } = published;
    const delayed = delayedReadModels.get(runId);
    if (delayed && rankOf(delayed.transition) <= rankOf(published)) delayedReadModels.delete(runId);
    await store.writeReadModel(published, lastSeq);
    if (published.published) await catchUpIfNewer(published);
  }

  /**
   * Writes the run's delayed read model (`delayReadModel`): the newest published transition whose
   * work items are written, whether or not a newer one is committed (so a run that keeps moving
   * faster than the delay still has its read model written once per delay). Its input is acked
   * already: a failure is logged, and the run's next write (or a reader's roll-forward) covers it.
   */
  function writeDelayedReadModel(runId: string): Promise<void> {
    readModelTimers.delete(runId);
    const ready = delayedReadModels.get(runId);
    if (!ready) return Promise.resolve();
    return chain(runId, rankOf(ready.transition), async () => {
      const current = delayedReadModels.get(runId);
      if (!current) return;
      await writeReadModel(current.transition, current.lastSeq).catch((error: unknown) => {
        // Logged, not retried: the input was acked; readers roll forward past a lagging read model, and the run's next write covers it.
        logger.warn({ runId, version: current.transition.version, err: error }, 'could not write a delayed read model');
      });
    }).entry.done;
  }

  /** Queues the read model of `published` (its work items written) for `readModelDelayMs`, replacing an older one queued. */
  function delayReadModel(published: TransitionDocument, lastSeq: number | null) {
    const { runId } = published;
    const queued = delayedReadModels.get(runId);
    if (queued && rankOf(queued.transition) >= rankOf(published)) return;
    delayedReadModels.set(runId, { transition: published, lastSeq });
    if (readModelTimers.has(runId)) return;
    const timer = setTimeout(() => void writeDelayedReadModel(runId), readModelDelayMs);
    timer.unref();
    readModelTimers.set(runId, timer);
  }

  /**
   * Writes what follows a published transition off the step's critical path: the run's deadline
   * item (`run_deadlines`: lowered to this version's deadline, never moved later, or deleted;
   * skipped when the stored one already fires no later, `settleDeadlineItem`), for a run that has ended its retention item (with
   * `RUN_RETENTION` set), then the read model with `publishedVersion` = its version. In that
   * order: a read model that records version v as published implies v's work items are written
   * (a deadline item due no later than v's deadline), so a redelivered input that finds v
   * published has nothing left to redo (and the retention sweep waits for that read model before
   * it prunes anything). The input is acked once the work items are written. The read model of a
   * transition after which the run moves on by itself (`movesOn`: a model or tool request, an
   * inbox message in its outbox) is delayed by `readModelDelayMs` and written after the ack, once
   * per delay for the newest ready version (docs/decisions.md, "a running run's read model is
   * written at most once per second"); a run that waits or has ended has its read model written
   * before the ack. Serialized per run in this process and never backwards: a write is skipped
   * when this process knows a newer version (the newer one's own write covers it). A sweeper's
   * republish writes only the latest state it loaded, never an older one (the bug issue 9 names).
   */
  function settle(published: TransitionDocument, lastSeq: number | null): Promise<void> {
    const { runId } = published;
    /** The run's work items after this version: its deadline item, and for a run that has ended its retention item. */
    const writeWorkItems = async () => {
      const deadlineWrite = await settleDeadlineItem(published);
      const knownItem = deadlineItems.get(runId);
      if (retentionMs != null && isTerminalStatus(published.state.status) && !(knownItem?.version === published.version && knownItem.retention)) {
        // Insert-unless-exists: a repeat (redelivery, another replica) keeps the first due time.
        // Once per version in this process (a run that ends is settled twice, see `applyNow`).
        const dueAt = new Date(now().getTime() + retentionMs).toISOString();
        await store.insertWork({ _id: workIds.retention(runId), kind: 'retention', runId, tenantId: published.tenantId, dueAt });
        // An ended run has no deadline: its item is deleted (`deadlineItemDue` is null).
        knowDeadlineItem(runId, published.version, null, true);
      }
      return deadlineWrite;
    };
    const write = async () => {
      const known = cache.get(runId);
      if (known && known.transition.version > published.version) return;
      if (!published.published) {
        // The write before the events of a run that waits or has ended go out (`applyNow`): this
        // read model records the version as not yet published, so it implies nothing about the
        // work items, and they are written after the events (the write after the publish, which
        // records the version published, follows them), not before: on the local store two writes
        // at once wait on each other, so the events waited for both (issue 9). Window: the events
        // out, the work items not written (the process died, or a write failed and the input is
        // nakked) → the input is redelivered, finds the version not known published, publishes it
        // again (dropped as duplicates) and writes them. Until then an ended run's deadline item
        // may fire and is ignored (no deadline of an ended run is due), and a waiting run's
        // approval deadline is not yet stored, as in the window after any commit.
        await writeReadModel(published, lastSeq);
        return;
      }
      const deadlineWrite = await writeWorkItems();
      if (movesOn(published)) {
        delayReadModel(published, lastSeq);
        // A delete of the deadline item may have landed after the item of a newer version another
        // replica committed: probed now, before the ack, as the read-model write would have (the
        // delayed write probes again for the read model). A lowered item cannot land later than
        // a newer version's deadline: no probe.
        if (deadlineWrite === 'deleted') await catchUpIfNewer(published);
        return;
      }
      await writeReadModel(published, lastSeq);
    };
    const { entry, queued } = chain(runId, rankOf(published), write);
    if (!queued) return entry.done;
    void entry.done.catch((error: unknown) => {
      // The waiting input is nakked with this error and redelivered; until then the run's
      // cached transition is no longer known published, so the redelivery (or the run's next
      // input) publishes and writes again.
      deadlineItems.delete(runId);
      const cached = cache.get(runId);
      if (cached && cached.transition.version === published.version) remember(runId, { ...cached, transition: { ...cached.transition, published: false } });
      logger.warn({ runId, version: published.version, err: error }, 'could not write the read model; the input will be redelivered');
    });
    return entry.done;
  }

  /**
   * Brings the run's read model to its latest transition after a write that may have landed
   * behind another replica's (see `writeReadModel`). Not awaited by that write (it queues behind
   * it); a crash here leaves a lagging read model, which readers roll forward past.
   */
  function catchUp(runId: string): Promise<void> {
    return queue
      .run(runId, async () => {
        const latest = await loadLatest(runId);
        if (!latest) return;
        // Published by this process (its own write of it is queued after the one that called
        // this), or recorded so by a read model read after that write: nothing to bring forward.
        if (latest.transition.published) return;
        await publish(latest.transition, latest.lastSeq);
      })
      .catch((error: unknown) => {
        // Logged, not retried: readers roll forward past a lagging read model, and the run's next input writes it again.
        logger.warn({ runId, err: error }, 'could not bring the read model to the latest transition');
      });
  }

  /**
   * Publishes a committed transition's outbox; the read model follows off the critical path
   * (`settle`). `committedHere`: the transition was just committed by this call (not left
   * unpublished by a crash or a slower replica).
   */
  async function publish(committedTransition: TransitionDocument, previousLastSeq: number | null, committedHere = false, prepared?: EncodedOutbox): Promise<number | null> {
    const lastEventSeq = await publishOutbox(publisher, committedTransition, prepared);
    deps.crashPoints?.hit(committedHere ? 'orchestrator.after_publish' : 'orchestrator.after_republish');
    const lastSeq = lastEventSeq ?? previousLastSeq;
    const published = { ...committedTransition, published: true };
    remember(committedTransition.runId, { transition: published, lastSeq });
    void settle(published, lastSeq);
    return lastSeq;
  }

  /**
   * True when `cause` is the message the transition's outbox sent last (a `start` published by
   * the gateway): the message arriving proves the whole outbox went out, in order.
   */
  function deliveredBy(current: TransitionDocument, cause: string): boolean {
    return current.outbox.length > 0 && cause === outboxEntryId(current.runId, current.version, current.outbox.length - 1);
  }

  async function applyNow(runId: string, tenantId: string | undefined, input: RunInput, cause: string, spans: TransitionSpans, first: TransitionDocument | undefined): Promise<ApplyOutcome> {
    let verified = false;
    for (let attempt = 0; attempt <= maxConflictRetries; attempt += 1) {
      // The carried version 1 serves the first attempt only: after a lost race the run is read.
      const latest = await loadForApply(runId, verified, cause, attempt === 0 ? first : undefined);
      if (!latest) return { kind: 'unknown_run' };
      let { transition: current, lastSeq } = latest;
      if (tenantId !== undefined && current.tenantId !== tenantId) return { kind: 'unknown_run' };
      if (!current.published && !deliveredBy(current, cause)) {
        logger.info({ runId, version: current.version }, 'publishing an outbox not known to be published');
        lastSeq = await publish(current, lastSeq);
      }
      if (current.cause === cause && current.version > 1) {
        ignoredInputs?.inc({ reason: 'duplicate' });
        return { kind: 'ignored', reason: 'input already applied' };
      }
      const at = now();
      let result = transition(current.state, input, { now: at });
      if (result.kind === 'ignored') {
        if (!latest.verified) {
          verified = true;
          attempt -= 1;
          continue;
        }
        ignoredInputs?.inc({ reason: 'stale' });
        // A timer from a deadline item that fired before the run's deadline (one left earlier on
        // purpose, `deadlineWriteNeeded` and `deadlineItemDue`, or by a write that lost a race
        // with another replica's): move the item on to when it is due now (`deadlineItemDue`).
        // For a working run that is at most the horizon from now, and no version committed after
        // the probe below can be due before it: each deadline is set at least the horizon after
        // its transition, or carried from `current`'s. For a waiting run it is its deadline, the
        // due time every process that knows `current` knows, so a later version due earlier is
        // written, not skipped (docs/decisions.md).
        if (input.type === 'deadline') {
          const movedTo = deadlineItemDue(current.state, now().getTime());
          await store.writeDeadline(runId, current.tenantId, movedTo);
          knowDeadlineItem(runId, current.version, movedTo);
          // This write moves the item later, the only one that does: another replica may have
          // committed on top of `current` and lowered the item to its earlier deadline before it
          // landed. If a newer version exists, lower the item to the latest one's due time (a
          // lowering never hurts: at worst it fires early once more).
          if (await store.exists(runId, current.version + 1)) {
            const latest = await loadLatest(runId);
            const dueAt = latest ? deadlineItemDue(latest.transition.state, latest.transition.at.getTime()) : null;
            if (latest && dueAt !== null) {
              await store.lowerDeadline(runId, current.tenantId, dueAt);
              knowDeadlineItem(runId, latest.transition.version, dueAt);
            }
          }
        }
        return result;
      }
      const next: TransitionDocument = {
        _id: transitionId(runId, current.version + 1),
        runId,
        tenantId: current.tenantId,
        version: current.version + 1,
        at,
        cause,
        state: result.state,
        outbox: result.outbox,
        published: false,
      };
      // Sizes are checked before the commit (issue 8, finding 5): a transition with a message
      // that can never be published (over the server's max_payload, an event over RUN_EVENTS'
      // max_msg_size, a model request over LLM_REQUEST_MAX_BYTES) is never committed; the run
      // fails with `message_too_large` instead, from the same state, and nothing else waits on it.
      // Encoded once: the check reads the sizes, the publish after the commit sends the same bytes.
      let prepared: EncodedOutbox | undefined = encodeOutbox(publisher, next);
      const unpublishable = findUnpublishableEntry(publisher, next, prepared);
      if (unpublishable) {
        result = transition(current.state, { type: 'fail', error: unpublishable }, { now: at });
        if (result.kind !== 'changed') throw new Error(`run ${runId}: a failure could not be applied to a ${current.state.status} run`);
        next.state = result.state;
        next.outbox = result.outbox;
        prepared = undefined;
        oversize?.inc();
        logger.warn({ runId, tenantId: next.tenantId, step: current.state.step, cause, reason: unpublishable.message }, 'a transition would publish a message too large for the bus; failing the run instead');
      }
      // Its `run.transition` span; the traceparent stored with it carries the run's trace (issue 10).
      Object.assign(next, spans.start(current, next, input.type));
      const commitStarted = performance.now();
      try {
        await store.commit(next, current.state);
        deps.commitLatency?.observe({ result: 'committed' }, (performance.now() - commitStarted) / 1_000);
      } catch (error) {
        if (error instanceof TransitionConflictError) {
          deps.commitLatency?.observe({ result: 'conflict' }, (performance.now() - commitStarted) / 1_000);
          conflicts?.inc();
          cache.delete(runId);
          logger.debug({ runId, version: next.version }, 'lost a commit race; reloading');
          continue;
        }
        throw error;
      }
      committed?.inc();
      deps.crashPoints?.hit('orchestrator.after_commit');
      // A transition after which the run waits for a person or has ended (no work message in its
      // outbox) has no next step to delay: its read model is written before its events go out (as
      // not yet published; the write after the publish, after the work items, records that), so a
      // client that sees `run.suspended` or the terminal event finds the run in that state in
      // listings (the approvals inbox). A crash between the two is the "after the commit" window.
      if (!movesOn(next)) await settle(next, lastSeq);
      logger.info({ runId, tenantId: next.tenantId, step: next.state.step, version: next.version, status: next.state.status, cause }, 'transition committed');
      await publish(next, lastSeq, true, prepared);
      return { kind: 'committed', version: next.version };
    }
    throw new AbideError('internal', `run ${runId}: lost ${maxConflictRetries + 1} commit races in a row`, { retryable: true, retryAfterMs: 200 });
  }

  /** Waits for this process's read-model write of the run, if one is in flight (before an input's ack). */
  async function settled(runId: string): Promise<void> {
    await settling.get(runId)?.done;
  }

  return {
    /**
     * Applies `input` to the run, serialized with every other input of the run in this process;
     * resolves once the transition's read model is written too (the caller acks then), though
     * the run's next input does not wait for that write. `first`: version 1 as the run's `start`
     * carried it (committed, published), used instead of reading it when nothing is cached.
     */
    async apply(runId: string, tenantId: string | undefined, input: RunInput, cause: string, first?: TransitionDocument): Promise<ApplyOutcome> {
      const { outcome, pending } = await queue.run(runId, async () => {
        const spans = createTransitionSpans();
        const applied = await applyNow(runId, tenantId, input, cause, spans, first).catch((error: unknown) => {
          spans.finish(error);
          throw error;
        });
        spans.finish();
        return { outcome: applied, pending: settled(runId) };
      });
      await pending;
      return outcome;
    },
    /**
     * Finishes an outbox work item (a new run whose creator may have died before publishing its
     * `start`): publishes the run's latest outbox unless it is known published, then deletes the item.
     */
    async republish(item: WorkItem): Promise<void> {
      const pending = await queue.run(item.runId, async () => {
        const latest = await loadLatest(item.runId);
        if (!latest) return { found: false, done: Promise.resolve() };
        if (!latest.transition.published) {
          logger.warn({ runId: item.runId, version: latest.transition.version }, 'publishing an outbox left unpublished');
          await publish(latest.transition, latest.lastSeq);
        }
        return { found: true, done: settled(item.runId) };
      });
      await pending.done;
      // No version 1 a minute after the item was due: its creator died between the two inserts.
      if (!pending.found && Date.parse(item.dueAt) + 60_000 > now().getTime()) return;
      await store.deleteWork(item._id);
    },
    /** Writes every delayed read model now (at shutdown, after the consumers stopped: a process that exits without it leaves them lagging, as a crash would). */
    async flushReadModels(): Promise<void> {
      const runIds = [...readModelTimers.keys()];
      for (const runId of runIds) clearTimeout(readModelTimers.get(runId));
      // Each write logs its own failure; a settle it waited behind failed its own input already.
      await Promise.allSettled(runIds.map(writeDelayedReadModel));
    },
    /** The latest state as this process knows it (rolled forward). */
    loadLatest,
  };
}
export type RunProcessor = ReturnType<typeof createRunProcessor>;
