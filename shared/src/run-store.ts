import type { Collections } from './mongo.ts';
import { workIds } from './names.ts';
import type { OutboxEntry } from './outbox.ts';
import { isTerminalStatus, type RunState, type RunStatus } from './run-state.ts';
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
  /**
   * The W3C `traceparent` of the span that made this transition (issue 10): its outbox's messages
   * continue that trace whenever they are published, and the run's next transition continues it
   * even when its cause came from another trace (an approval, a cancel). Absent when tracing is off.
   */
  traceparent?: string;
  /** The stream sequence of the last event published up to this transition (older data only; the read model holds it now). */
  lastSeq?: number | null;
};

/**
 * The read model (`runs`, `_id: runId`): the latest state, which may lag by a transition.
 * `prunedAt` (ISO time): the run's history was pruned after `RUN_RETENTION`; the read model is
 * then all that is kept of the run, and readers take it as the run's exact final state.
 */
export type RunDocument = RunState & { _id: string; version: number; lastSeq: number | null; publishedVersion: number; prunedAt?: string };

export const transitionId = (runId: string, version: number) => `${runId}:${version}`;

/**
 * The collections that hold a run's history, each with the `_id`s of one run's documents given
 * its latest version. Retention deletes exactly these, one exact `_id` at a time (FerretDB 1.24
 * scans for any other filter, so no range or `$in` deletes): a new per-run collection joins
 * this list and is pruned with the rest.
 */
export const runHistoryCollections: readonly { collection: Exclude<keyof Collections, 'writes'>; ids(runId: string, latestVersion: number): string[] }[] = [
  { collection: 'runTransitions', ids: (runId, latestVersion) => Array.from({ length: latestVersion }, (_, index) => transitionId(runId, index + 1)) },
];

/** Deletes by `_id` sent per `delete` command when pruning. */
const pruneBatchSize = 500;

/** What pruning a run's history found (`pruneRunHistory`). */
export type PruneOutcome =
  /** Its history is gone (now, or by an earlier sweep); the read model is marked `prunedAt`. */
  | 'pruned'
  /** The read model does not record the run as ended and published yet: try again later. */
  | 'not_settled'
  /** Neither a read model nor a first transition: nothing to prune. */
  | 'missing';

/** Another replica committed this version first: reload and re-apply. */
export class TransitionConflictError extends Error {
  override readonly name = 'TransitionConflictError';
}

/** A page position in a sweep: the sort key and `_id` of the last item seen. */
export type SweepCursor = { key: string; id: string };

/**
 * A work item (`_id` from `workIds`): pending work a sweeper acts on once `dueAt` (ISO time) has
 * passed. Each kind has its own collection (`run_work` for outboxes, `run_deadlines` for
 * deadlines, `run_retention` for ended runs to prune), holding one item per run with pending work
 * of that kind, so a sweep of one kind never reads another's items (the outbox sweep, every 2 s,
 * reads a list that is empty when nothing is being created).
 */
export type WorkItem = { _id: string; kind: 'outbox' | 'deadline' | 'retention'; runId: string; tenantId: string; dueAt: string };

/**
 * The run's commit protocol (DESIGN §3): a transition commits by inserting version v+1; a
 * duplicate key means another replica won. Reads roll forward from the read model by `_id`.
 * Documents are stored with their keys escaped (`stored-keys.ts`): tool arguments and results
 * are free JSON and may hold keys FerretDB refuses.
 */
export function createRunStore(collections: Collections, options: { onWorkWritten?: (kind: WorkItem['kind'], dueAt: string) => void } = {}) {
  const { runs, runTransitions, runWork, writes } = collections;
  const workCollections = { outbox: 'runWork', deadline: 'runDeadlines', retention: 'runRetention' } as const;
  const workCollection = (kind: WorkItem['kind']) => collections[workCollections[kind]];
  const workWriter = (kind: WorkItem['kind']) => writes[workCollections[kind]];
  /** A work item's kind from its `_id` (`workIds`: `<kind>:<runId>`). */
  const kindOfWork = (id: string): WorkItem['kind'] => {
    const kind = id.slice(0, id.indexOf(':'));
    if (kind !== 'outbox' && kind !== 'deadline' && kind !== 'retention') throw new Error(`not a work item id: ${id}`);
    return kind;
  };

  /** A pruned run's read model as its latest transition: all that is left of it (no outbox, published). */
  function fromPrunedReadModel(stored: RunDocument): TransitionDocument {
    const { _id: runId, version, lastSeq: _lastSeq, publishedVersion: _published, prunedAt, ...state } = decodeStoredKeys(stored);
    return { _id: transitionId(runId, version), runId, tenantId: state.tenantId, version, at: new Date(prunedAt ?? 0), cause: '', state, outbox: [], published: true };
  }

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
    async loadLatest(runId: string): Promise<{ transition: TransitionDocument; lastSeq: number | null; pruned?: true } | null> {
      const run = (await runs.findOne({ _id: runId }, { projection: { version: 1, lastSeq: 1, publishedVersion: 1, prunedAt: 1 } })) as { version?: number; lastSeq?: number | null; publishedVersion?: number; prunedAt?: string } | null;
      const version = run?.version ?? 0;
      const lastSeq = run?.lastSeq ?? null;
      if (run?.prunedAt !== undefined) {
        // Ended and pruned (`pruneRunHistory`): the read model is its final state; nothing follows it.
        const stored = (await runs.findOne({ _id: runId })) as RunDocument | null;
        if (stored) return { transition: fromPrunedReadModel(stored), lastSeq, pruned: true };
      }
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

    /**
     * Prunes an ended run's history (retention, issue 9): marks the read model `prunedAt`, then
     * deletes the run's documents from every `runHistoryCollections` entry by exact `_id`. Only
     * once the read model records the run as ended with its last transition published (the
     * terminal transition's retention item is written just before that read model: until it
     * lands, nothing is touched). Marked first, so a reader never takes a partly pruned history
     * for a whole one. Idempotent: a crash between any two writes leaves the run marked and
     * partly pruned, its retention item still there, and the next sweep deletes the rest (a
     * delete of a missing `_id` is a no-op).
     */
    async pruneRunHistory(runId: string, now: Date): Promise<PruneOutcome> {
      const run = (await runs.findOne({ _id: runId }, { projection: { status: 1, version: 1, publishedVersion: 1, prunedAt: 1 } })) as Pick<RunDocument, 'status' | 'version' | 'publishedVersion' | 'prunedAt'> | null;
      if (!run) return (await loadTransition(runId, 1)) ? 'not_settled' : 'missing';
      if (!isTerminalStatus(run.status) || (run.publishedVersion ?? 0) < run.version) return 'not_settled';
      if (run.prunedAt === undefined) await runs.updateOne({ _id: runId }, { $set: { prunedAt: now.toISOString() } });
      for (const { collection, ids } of runHistoryCollections) {
        const all = ids(runId, run.version);
        for (let start = 0; start < all.length; start += pruneBatchSize) {
          const batch = all.slice(start, start + pruneBatchSize);
          // One `delete` command, one exact-`_id` statement per document.
          await collections[collection].bulkWrite(batch.map((_id) => ({ deleteOne: { filter: { _id } } })), { ordered: false });
        }
      }
      return 'pruned';
    },

    /** Inserts a work item unless one with its `_id` exists (then the existing one stands). */
    async insertWork(item: WorkItem): Promise<void> {
      await workWriter(item.kind).insert(item);
      // A duplicate keeps the first item, due no later than this one: the watermark only moves earlier, so either is safe.
      options.onWorkWritten?.(item.kind, item.dueAt);
    },

    /** Deletes a work item by `_id` (idempotent). */
    async deleteWork(id: string): Promise<void> {
      await workWriter(kindOfWork(id)).delete(id);
    },

    /**
     * Sets the run's deadline item to `dueAt` (by `_id`, upserted), or deletes it when null;
     * tells `onWorkWritten` (the deadline sweeper's watermark) once the item is written.
     */
    async writeDeadline(runId: string, tenantId: string, dueAt: string | null): Promise<void> {
      const _id = workIds.deadline(runId);
      if (dueAt === null) {
        await writes.runDeadlines.delete(_id);
        return;
      }
      const item: WorkItem = { _id, kind: 'deadline', runId, tenantId, dueAt };
      await writes.runDeadlines.replace(item, { upsert: true });
      options.onWorkWritten?.('deadline', dueAt);
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
     * How many runs of the read model are in each of `statuses` (absent: none), in one
     * `$group` pass. Not indexed by status (FerretDB would scan anyway): the metrics call it at
     * most every 30 s.
     */
    async countRunsByStatus(statuses: readonly RunStatus[]): Promise<Partial<Record<RunStatus, number>>> {
      const groups = await runs
        .aggregate<{ _id: RunStatus; count: number }>([{ $match: { status: { $in: [...statuses] } } }, { $group: { _id: '$status', count: { $sum: 1 } } }])
        .toArray();
      return Object.fromEntries(groups.map((group) => [group._id, group.count]));
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
