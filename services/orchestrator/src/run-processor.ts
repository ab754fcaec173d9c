import {
  AbideError,
  type CrashPoints,
  findUnpublishableEntry,
  publishOutbox,
  transitionId,
  TransitionConflictError,
  type Logger,
  type Metrics,
  type OutboxPublisherDeps,
  type RunStore,
  type TransitionDocument,
} from '@abide/shared';
import type { KeyedQueue } from './keyed-queue.ts';
import { transition, type RunInput } from './run-state-machine.ts';

export type RunProcessorDeps = {
  store: RunStore;
  publisher: OutboxPublisherDeps;
  queue: KeyedQueue;
  logger: Logger;
  metrics?: Metrics;
  now?: () => Date;
  /**
   * Test-only crash points: `orchestrator.after_commit` (inserted, outbox not published),
   * `orchestrator.after_publish` (the outbox of a transition this call committed is published,
   * not marked published, read model not written, message not acked) and
   * `orchestrator.after_republish` (the same for an outbox left unpublished by someone else).
   */
  crashPoints?: CrashPoints;
  /** Latest transitions kept in memory, so a hot run is read with one probe instead of two reads. */
  cacheSize?: number;
};

export type ApplyOutcome = { kind: 'committed'; version: number } | { kind: 'ignored'; reason: string } | { kind: 'unknown_run' };

/** How many times a lost commit race is reloaded and re-applied before the message is handed back. */
const maxConflictRetries = 8;

/**
 * Applies inputs to runs (DESIGN §3): load the exact latest transition, publish its outbox if a
 * crash left it unpublished, compute the next state with the pure transition function, commit it
 * by inserting version v+1 (a duplicate key means another replica won: reload, re-apply), then
 * publish the outbox (events first, then work), mark it published and rewrite the read model.
 * A crash anywhere leaves either nothing (the message is redelivered) or a committed but
 * unpublished transition, which the next message of the run or the sweeper publishes.
 */
export function createRunProcessor(deps: RunProcessorDeps) {
  const { store, publisher, queue, logger } = deps;
  const now = deps.now ?? (() => new Date());
  const cache = new Map<string, { transition: TransitionDocument; lastSeq: number | null }>();
  const cacheSize = deps.cacheSize ?? 10_000;
  const committed = deps.metrics?.counter('transitions_committed_total', 'Transitions committed');
  const conflicts = deps.metrics?.counter('transition_conflicts_total', 'Commit races lost to another replica');
  const ignoredInputs = deps.metrics?.counter('inputs_ignored_total', 'Stale or duplicate inputs acked and ignored');
  const oversize = deps.metrics?.counter('transitions_oversize_total', 'Transitions replaced by a run failure because a message of theirs could never be published');

  function remember(runId: string, entry: { transition: TransitionDocument; lastSeq: number | null }) {
    cache.delete(runId);
    cache.set(runId, entry);
    if (cache.size > cacheSize) cache.delete(cache.keys().next().value!);
  }

  /** The exact latest transition: rolled forward from what this process last saw (another replica may have committed since). */
  async function loadLatest(runId: string) {
    const cached = cache.get(runId);
    if (cached) {
      let latest = cached.transition;
      for (;;) {
        const next = await store.loadTransition(runId, latest.version + 1);
        if (!next) break;
        latest = next;
      }
      return { transition: latest, lastSeq: cached.lastSeq };
    }
    return store.loadLatest(runId);
  }

  /**
   * What to apply the next input to. On the hot path this is the cached transition, unread: if
   * another replica committed since, inserting v+1 fails with a duplicate key and the run is
   * reloaded, so a stale cache can cost a retry but never a wrong commit. An input ignored
   * against an unverified cache is re-checked against the exact latest state before it is acked.
   */
  async function loadForApply(runId: string, verified: boolean) {
    const cached = cache.get(runId);
    if (cached && !verified) return { ...cached, verified: false };
    const latest = await loadLatest(runId);
    return latest ? { ...latest, verified: true } : null;
  }

  /**
   * Publishes a committed transition's outbox, marks it published and rewrites the read model.
   * `committedHere`: the transition was just committed by this call (not left unpublished by a crash or a slower replica).
   */
  async function publish(committedTransition: TransitionDocument, previousLastSeq: number | null, committedHere = false): Promise<number | null> {
    // The read model first: the outbox's work causes the next transition, so read-model writes
    // follow the runs' causal order and a slower writer cannot overwrite a newer state with an
    // older one (the write goes by `_id` alone, which FerretDB can push down).
    await store.writeReadModel(committedTransition, previousLastSeq);
    const lastEventSeq = await publishOutbox(publisher, committedTransition);
    deps.crashPoints?.hit(committedHere ? 'orchestrator.after_publish' : 'orchestrator.after_republish');
    const lastSeq = lastEventSeq ?? previousLastSeq;
    const published = { ...committedTransition, published: true, lastSeq };
    await store.markPublished(committedTransition.runId, committedTransition.version, lastSeq);
    remember(committedTransition.runId, { transition: published, lastSeq });
    return lastSeq;
  }

  async function applyNow(runId: string, tenantId: string | undefined, input: RunInput, cause: string): Promise<ApplyOutcome> {
    let verified = false;
    for (let attempt = 0; attempt <= maxConflictRetries; attempt += 1) {
      const latest = await loadForApply(runId, verified);
      if (!latest) return { kind: 'unknown_run' };
      let { transition: current, lastSeq } = latest;
      if (tenantId !== undefined && current.tenantId !== tenantId) return { kind: 'unknown_run' };
      if (!current.published) lastSeq = await publish(current, lastSeq);
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
      const unpublishable = findUnpublishableEntry(publisher, next);
      if (unpublishable) {
        result = transition(current.state, { type: 'fail', error: unpublishable }, { now: at });
        if (result.kind !== 'changed') throw new Error(`run ${runId}: a failure could not be applied to a ${current.state.status} run`);
        next.state = result.state;
        next.outbox = result.outbox;
        oversize?.inc();
        logger.warn({ runId, tenantId: next.tenantId, step: current.state.step, cause, reason: unpublishable.message }, 'a transition would publish a message too large for the bus; failing the run instead');
      }
      try {
        await store.commit(next);
      } catch (error) {
        if (error instanceof TransitionConflictError) {
          conflicts?.inc();
          cache.delete(runId);
          logger.debug({ runId, version: next.version }, 'lost a commit race; reloading');
          continue;
        }
        throw error;
      }
      committed?.inc();
      deps.crashPoints?.hit('orchestrator.after_commit');
      logger.info({ runId, tenantId: next.tenantId, step: next.state.step, version: next.version, status: next.state.status, cause }, 'transition committed');
      await publish(next, lastSeq, true);
      return { kind: 'committed', version: next.version };
    }
    throw new AbideError('internal', `run ${runId}: lost ${maxConflictRetries + 1} commit races in a row`, { retryable: true, retryAfterMs: 200 });
  }

  return {
    /** Applies `input` to the run, serialized with every other input of the run in this process. */
    apply(runId: string, tenantId: string | undefined, input: RunInput, cause: string): Promise<ApplyOutcome> {
      return queue.run(runId, () => applyNow(runId, tenantId, input, cause));
    },
    /** Publishes a transition left unpublished (the sweeper's job), unless it was published meanwhile. */
    republish(stale: TransitionDocument): Promise<void> {
      return queue.run(stale.runId, async () => {
        const fresh = await store.loadTransition(stale.runId, stale.version);
        if (!fresh || fresh.published) return;
        logger.warn({ runId: stale.runId, version: stale.version }, 'publishing an outbox left unpublished');
        // Not cached here (e.g. a fresh process after a crash): the read model knows the last event's seq,
        // which an outbox without events must not reset.
        const lastSeq = cache.has(stale.runId) ? cache.get(stale.runId)!.lastSeq : ((await store.loadLatest(stale.runId))?.lastSeq ?? null);
        await publish(fresh, lastSeq);
      });
    },
    /** The latest state as this process knows it (rolled forward). */
    loadLatest,
  };
}
export type RunProcessor = ReturnType<typeof createRunProcessor>;
