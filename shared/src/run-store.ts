import type { Collections } from './mongo.ts';
import { workIds } from './names.ts';
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
  /**
   * Whether its outbox is known to be published. Stored `false` at the commit and never updated
   * (no mark on the critical path, docs/decisions.md "one write per step"): a loaded transition's
   * flag is derived from the read model (`publishedVersion`), or set by the process that published it.
   */
  published: boolean;
  /** The stream sequence of the last event published up to this transition (older data only; the read model holds it now). */
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

/**
 * A work item (`_id` from `workIds`): pending work a sweeper acts on once `dueAt` (ISO time) has
 * passed. Each kind has its own collection (`run_work` for outboxes, `run_deadlines` for
 * deadlines), holding one item per run with pending work of that kind, so its size follows the
 * runs in flight, never the history, and a sweep of one kind never reads the other's items.
 */
export type WorkItem = { _id: string; kind: 'outbox' | 'deadline'; runId: string; tenantId: string; dueAt: string };

/**
 * The run's commit protocol (DESIGN §3): a transition commits by inserting version v+1; a
 * duplicate key means another replica won. Reads roll forward from the read model by `_id`.
 * Documents are stored with their keys escaped (`stored-keys.ts`): tool arguments and results
 * are free JSON and may hold keys FerretDB refuses.
 */
export function createRunStore(collections: Collections, options: { onDeadlineWritten?: (dueAt: string) => void } = {}) {
  const { runs, runTransitions, runWork, runDeadlines, writes } = collections;
  const workCollection = (kind: WorkItem['kind']) => (kind === 'deadline' ? runDeadlines : runWork);

  async function loadTransition(runId: string, version: number): Promise<TransitionDocument | null> {
    const stored = await runTransitions.findOne({ _id: transitionId(runId, version) });
    return stored ? decodeStoredKeys(stored as unknown as TransitionDocument) : null;
  }

  return {
    loadTransition,

    /**
     * The exact latest transition of a run, rolled forward past the read model by `_id`
     * (`<runId>:<v+1>`, `+2`, …), with the read model's `lastSeq`; null if the run does not exist.
     * Its `published` says whether the read model records its outbox as published (a later
     * version's existence proves it too: nothing is committed on an unpublished transition).
     */
    async loadLatest(runId: string): Promise<{ transition: TransitionDocument; lastSeq: number | null } | null> {
      const run = (await runs.findOne({ _id: runId }, { projection: { version: 1, lastSeq: 1, publishedVersion: 1 } })) as { version?: number; lastSeq?: number | null; publishedVersion?: number } | null;
      const version = run?.version ?? 0;
      const lastSeq = run?.lastSeq ?? null;
      let latest = version > 0 ? await loadTransition(runId, version) : null;
      // The read model may lag (or not exist yet, right after creation): roll forward.
      for (let probe = version + 1; ; probe += 1) {
        const next = await loadTransition(runId, probe);
        if (!next) break;
        latest = next;
      }
      if (!latest) return null;
      const published = latest.published || (run?.publishedVersion ?? 0) >= latest.version;
      return { transition: { ...latest, published }, lastSeq: latest.lastSeq ?? lastSeq };
    },

    /**
     * Inserts the transition (group-committed with the other runs' commits of this process);
     * false when the version exists: another writer committed it first.
     */
    async insertTransition(transition: TransitionDocument): Promise<boolean> {
      return (await writes.runTransitions.insert(encodeStoredKeys(transition))) === 'ok';
    },

    /** Inserts the transition; throws `TransitionConflictError` if the version exists. */
    async commit(transition: TransitionDocument): Promise<void> {
      if ((await writes.runTransitions.insert(encodeStoredKeys(transition))) === 'duplicate') throw new TransitionConflictError(`transition ${transition._id} exists`);
    },

    /**
     * Rewrites the read model by `_id` (it may lag; readers roll forward). Callers keep it from
     * moving backwards (the orchestrator writes a run's read model serialized, newest only).
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
        // Version 1's read model is only ever inserted: the gateway writes it in parallel with
        // publishing `start`, so the orchestrator's version 2 may be there already (a duplicate
        // means the same or a newer version, never to be replaced by version 1).
        await writes.runs.insert(document);
        return;
      }
      // By `_id` alone: FerretDB pushes down only an exact `_id` filter and scans for anything
      // more. A slower writer may move the read model back a version for a moment; readers roll
      // forward from it by `_id`, and the next commit rewrites it. Upserted: no read model yet
      // (its creator crashed before writing it) is inserted; a concurrent insert of the same
      // `_id` winning makes this one a duplicate, ignored like the version-1 insert.
      await writes.runs.replace(document, { upsert: true });
    },

    /** Inserts a work item unless one with its `_id` exists (then the existing one stands). */
    async insertWork(item: WorkItem): Promise<void> {
      await writes.runWork.insert(item);
    },

    /** Deletes a work item by `_id` (idempotent). */
    async deleteWork(id: string): Promise<void> {
      await writes.runWork.delete(id);
    },

    /**
     * Sets the run's deadline item to `dueAt` (by `_id`, upserted), or deletes it when null;
     * tells `onDeadlineWritten` (the deadline sweeper's watermark) once the item is written.
     */
    async writeDeadline(runId: string, tenantId: string, dueAt: string | null): Promise<void> {
      const _id = workIds.deadline(runId);
      if (dueAt === null) {
        await writes.runDeadlines.delete(_id);
        return;
      }
      const item: WorkItem = { _id, kind: 'deadline', runId, tenantId, dueAt };
      await writes.runDeadlines.replace(item, { upsert: true });
      options.onDeadlineWritten?.(dueAt);
    },

    /** The earliest `dueAt` of `kind` after `afterIso` (a scan on FerretDB: the sweeper asks only after a sweep), or null. */
    async earliestDueAfter(kind: WorkItem['kind'], afterIso: string): Promise<string | null> {
      const [first] = await workCollection(kind)
        .find({ kind, dueAt: { $gt: afterIso } }, { projection: { dueAt: 1 } })
        .sort({ dueAt: 1, _id: 1 })
        .limit(1)
        .toArray();
      return first ? String(first.dueAt) : null;
    },

    /**
     * Moves deadline items an older version wrote into `run_work` to `run_deadlines` (the
     * deadline sweeper does it at each full sweep, so items an old replica writes during a
     * rolling upgrade are picked up too). Inserted, never replacing: an item already in
     * `run_deadlines` was written by newer code and is the run's latest. A crash between the
     * insert and the delete leaves the legacy item for the next move.
     */
    async moveLegacyDeadlines(): Promise<number> {
      const legacy = (await runWork.find({ kind: 'deadline' }).toArray()) as unknown as WorkItem[];
      for (const item of legacy) {
        await writes.runDeadlines.insert(item);
        await writes.runWork.delete(item._id);
      }
      return legacy.length;
    },

    /**
     * Work items of `kind` due by `nowIso`, earliest first, one page after `after`: a sweep pages
     * through all of them, so items that keep failing never hide the ones behind them. Reads only
     * the kind's work collection, whose size follows the runs with pending work, not every run
     * ever stored.
     */
    async findDueWork(kind: WorkItem['kind'], nowIso: string, limit: number, after?: SweepCursor): Promise<WorkItem[]> {
      const page = after
        ? { $or: [{ dueAt: { $gt: after.key, $lte: nowIso } }, { dueAt: after.key, _id: { $gt: after.id } }] }
        : { dueAt: { $lte: nowIso } };
      const found = await workCollection(kind)
        .find({ kind, ...page })
        .sort({ dueAt: 1, _id: 1 })
        .limit(limit)
        .toArray();
      return found as unknown as WorkItem[];
    },
  };
}
export type RunStore = ReturnType<typeof createRunStore>;
