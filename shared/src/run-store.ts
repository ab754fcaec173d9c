import type { Collections } from './mongo.ts';
import { isDuplicateKeyError } from './errors.ts';
import type { OutboxEntry } from './outbox.ts';
import type { RunState } from './run-state.ts';
import { decodeStoredKeys, encodeStoredKeys } from './stored-keys.ts';

/** A committed transition (`run_transitions`, append-only, `_id: "<runId>:<version>"`). */
export type TransitionDocument = {
  _id: string;
  runId: string;
  tenantId: string;
  version: number;
  at: Date;
  /** The id of the message that caused it. */
  cause: string;
  state: RunState;
  outbox: OutboxEntry[];
  published: boolean;
  /** The stream sequence of the last event published up to this transition (set with `published`). */
  lastSeq?: number | null;
};

/** The read model (`runs`, `_id: runId`): the latest state, which may lag by a transition. */
export type RunDocument = RunState & { _id: string; version: number; lastSeq: number | null; publishedVersion: number };

export const transitionId = (runId: string, version: number) => `${runId}:${version}`;

/** Another replica committed this version first: reload and re-apply. */
export class TransitionConflictError extends Error {
  override readonly name = 'TransitionConflictError';
}

/** A page position in a sweep: the sort key and `_id` of the last item seen. */
export type SweepCursor = { key: string; id: string };

/** A run whose deadline has passed (the deadline sweeper's work list). */
export type DueRun = { runId: string; tenantId: string; nextDeadlineAt: string };

/**
 * The run's commit protocol (DESIGN §3): a transition commits by inserting version v+1; a
 * duplicate key means another replica won. Reads roll forward from the read model by `_id`.
 * Documents are stored with their keys escaped (`stored-keys.ts`): tool arguments and results
 * are free JSON and may hold keys FerretDB refuses.
 */
export function createRunStore(collections: Collections) {
  const { runs, runTransitions } = collections;

  async function loadTransition(runId: string, version: number): Promise<TransitionDocument | null> {
    const stored = await runTransitions.findOne({ _id: transitionId(runId, version) });
    return stored ? decodeStoredKeys(stored as unknown as TransitionDocument) : null;
  }

  return {
    loadTransition,

    /**
     * The exact latest transition of a run, rolled forward past the read model by `_id`
     * (`<runId>:<v+1>`, `+2`, …), with the read model's `lastSeq`; null if the run does not exist.
     */
    async loadLatest(runId: string, hint?: { version: number; lastSeq: number | null }): Promise<{ transition: TransitionDocument; lastSeq: number | null } | null> {
      let version = hint?.version;
      let lastSeq = hint?.lastSeq ?? null;
      if (version === undefined) {
        const run = (await runs.findOne({ _id: runId }, { projection: { version: 1, lastSeq: 1 } })) as { version?: number; lastSeq?: number | null } | null;
        version = run?.version ?? 0;
        lastSeq = run?.lastSeq ?? null;
      }
      let latest = version > 0 ? await loadTransition(runId, version) : null;
      // The read model may lag (or not exist yet, right after creation): roll forward.
      for (let probe = version + 1; ; probe += 1) {
        const next = await loadTransition(runId, probe);
        if (!next) break;
        latest = next;
      }
      return latest ? { transition: latest, lastSeq: latest.lastSeq ?? lastSeq } : null;
    },

    /** Inserts the transition; throws `TransitionConflictError` if the version exists. */
    async commit(transition: TransitionDocument): Promise<void> {
      try {
        await runTransitions.insertOne(encodeStoredKeys(transition));
      } catch (error) {
        if (isDuplicateKeyError(error)) throw new TransitionConflictError(`transition ${transition._id} exists`, { cause: error });
        throw error;
      }
    },

    /** Marks the outbox published, with the sequence of the last event published so far. */
    async markPublished(runId: string, version: number, lastSeq: number | null = null): Promise<void> {
      await runTransitions.updateOne({ _id: transitionId(runId, version) }, { $set: { published: true, lastSeq } });
    },

    /**
     * Rewrites the read model by `_id` (it may lag; readers roll forward).
     */
    async writeReadModel(transition: TransitionDocument, lastSeq: number | null): Promise<void> {
      const document: RunDocument = encodeStoredKeys({
        ...transition.state,
        _id: transition.runId,
        version: transition.version,
        lastSeq,
        publishedVersion: transition.published ? transition.version : transition.version - 1,
      });
      if (transition.version === 1) {
        try {
          await runs.insertOne(document);
          return;
        } catch (error) {
          if (!isDuplicateKeyError(error)) throw error;
        }
      }
      // By `_id` alone: FerretDB pushes down only an exact `_id` filter and scans for anything
      // more. A slower writer may move the read model back a version for a moment; readers roll
      // forward from it by `_id`, and the next commit rewrites it.
      const replaced = await runs.replaceOne({ _id: transition.runId }, document);
      if (replaced.matchedCount > 0) return;
      // No read model yet (its creator crashed before writing it), or a newer one: insert decides.
      try {
        await runs.insertOne(document);
      } catch (error) {
        if (!isDuplicateKeyError(error)) throw error;
      }
    },

    /**
     * Transitions whose outbox is still unpublished, older than `before` (for the sweeper), oldest
     * first, one page after `after`: a sweep pages through all of them, so items that keep failing
     * never hide the ones behind them.
     */
    async findUnpublished(before: Date, limit: number, after?: SweepCursor): Promise<TransitionDocument[]> {
      const page = after
        ? { $or: [{ at: { $gt: new Date(after.key) } }, { at: new Date(after.key), _id: { $gt: after.id } }] }
        : {};
      const found = await runTransitions
        .find({ published: false, at: { $lt: before }, ...page })
        .sort({ at: 1, _id: 1 })
        .limit(limit)
        .toArray();
      return found.map((document) => decodeStoredKeys(document as unknown as TransitionDocument));
    },

    /**
     * Runs whose deadline has passed by `nowIso`, earliest first, one page after `after`
     * (small projections; the deadline sweeper pages through all of them).
     */
    async findDueDeadlines(nowIso: string, limit: number, after?: SweepCursor): Promise<DueRun[]> {
      const page = after
        ? { $or: [{ nextDeadlineAt: { $gt: after.key, $lte: nowIso } }, { nextDeadlineAt: after.key, _id: { $gt: after.id } }] }
        : { nextDeadlineAt: { $ne: null, $lte: nowIso } };
      const found = await runs
        .find(page, { projection: { _id: 1, tenantId: 1, nextDeadlineAt: 1 } })
        .sort({ nextDeadlineAt: 1, _id: 1 })
        .limit(limit)
        .toArray();
      return found.map((run) => ({ runId: String(run._id), tenantId: String(run.tenantId), nextDeadlineAt: String(run.nextDeadlineAt) }));
    },
  };
}
export type RunStore = ReturnType<typeof createRunStore>;
