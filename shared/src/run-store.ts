import type { Agent } from './agent.ts';
import { agentFromDocument, createAgentCache, type AgentCache } from './agent-cache.ts';
import type { Collections } from './mongo.ts';
import { agentIds, workIds } from './names.ts';
import type { OutboxEntry } from './outbox.ts';
import { applyDelta, encodeDelta, type RunDelta } from './run-delta.ts';
import { isTerminalStatus, type RunState, type RunStatus } from './run-state.ts';
import { applyDeltaToSummary, summarizeRunState, type RunSummary } from './run-summary.ts';
import { decodeStoredKeys, encodeStoredKeys } from './stored-keys.ts';
import { createWorkTimeline, type TimelineKind } from './work-timeline.ts';

/**
 * A committed transition (`run_transitions`, append-only, `_id: "<runId>:<version>"`) with the
 * run's whole state, as loaded; stored as a `StoredTransition` (its state a delta, mostly).
 */
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
 * A transition as `run_transitions` stores it (issue 9, item 2): the whole state (`state`) on a
 * base version (1, every `snapshotEvery`-th after it, and every transition written before deltas
 * existed), otherwise only what it changed (`delta`, `run-delta.ts`) against the version before.
 * A transition with `state` is a full base whatever its version, so older data still loads.
 */
export type StoredTransition = Omit<TransitionDocument, 'state'> & { state?: RunState; delta?: RunDelta };

/**
 * Every how many versions a transition stores the whole state again, so a cold load reads at
 * most this many transitions. Versions 1, 1 + N, 1 + 2N, … are bases; the workload's 5-step run
 * (7 versions) never writes a second one.
 */
export const snapshotEvery = 128;

/** The base a cold load of `version` starts from: the last version at or before it that stores the whole state. */
export const baseVersionOf = (version: number) => version - ((version - 1) % snapshotEvery);

/**
 * A `run_transitions` document: the header as fields, and what the transition carries
 * (`state` or `delta`, `outbox`) as one JSON string, `body`. FerretDB 1.24 stores a document as
 * JSON with a type schema beside it and decodes it level by level on every read; a transition's
 * nested messages, tool calls and outbox made that about a third of its CPU under load (measured with a
 * run's real 5 KB transition: a find 2.2× and an insert ~15% cheaper as one string). Nothing
 * queries inside a transition (it is read only by exact `_id`), so nothing is lost there; the
 * string needs no key escaping either (`stored-keys.ts`): any JSON is stored exactly. `status`,
 * `step` and `awaiting` are copied out of the body for the history API's projection.
 * Documents written before this (no `body`) are read as they are (`unpackTransition`).
 */
export type TransitionRecord = Pick<TransitionDocument, '_id' | 'runId' | 'tenantId' | 'version' | 'at' | 'cause' | 'published' | 'traceparent'> &
  Pick<RunState, 'status' | 'step' | 'awaiting'> & { body: string };

/**
 * A base's state as its body stores it: without the agent, which `agentVersionId` names instead
 * (DESIGN §3: referenced by its `agent_versions` `_id`, never embedded). Bases written before
 * that, and every transition stored without `body`, still carry `agentSnapshot`.
 */
type PackedState = { [field: string]: unknown; agentSnapshot?: Agent };

/** What a `TransitionRecord`'s `body` holds. */
type TransitionBody = Pick<StoredTransition, 'delta' | 'outbox'> & { state?: PackedState; agentVersionId?: string };

/**
 * A `run_transitions` document read back (`unpackTransition`): a base's agent may still be only
 * named (`agentVersionId`); `resolveTransitionAgent` reads it.
 */
export type UnpackedTransition = Omit<StoredTransition, 'state'> & { state?: PackedState; agentVersionId?: string };

/** The document a stored transition is written as. */
export function packTransition(stored: StoredTransition): TransitionRecord {
  const { _id, runId, tenantId, version, at, cause, published, traceparent, state, delta, outbox } = stored;
  const header = state ?? delta?.set;
  if (!header || header.status === undefined || header.step === undefined || header.awaiting === undefined) throw new Error(`transition ${_id} has neither a state nor a delta with its header fields`);
  let body: TransitionBody;
  if (state) {
    const { agentSnapshot, ...rest } = state;
    body = { state: rest, agentVersionId: agentIds.version(agentSnapshot.tenantId, agentSnapshot.agentId, agentSnapshot.version), outbox };
  } else {
    body = { delta, outbox };
  }
  return {
    _id, runId, tenantId, version, at, cause, published,
    ...(traceparent !== undefined ? { traceparent } : {}),
    status: header.status, step: header.step, awaiting: header.awaiting,
    body: JSON.stringify(body),
  };
}

/** A `run_transitions` document as a stored transition: packed (`packTransition`), or as older code wrote it (keys escaped, no `body`). */
export function unpackTransition(document: Record<string, unknown>): UnpackedTransition {
  if (typeof document.body !== 'string') return decodeStoredKeys(document as unknown as StoredTransition);
  const { body, status: _status, step: _step, awaiting: _awaiting, ...header } = document as unknown as TransitionRecord;
  return { ...header, ...(JSON.parse(body) as TransitionBody) };
}

/** Reads version `version` of a tenant's agent from `agent_versions` (null when there is none). */
export type AgentVersionReader = (tenantId: string, agentId: string, version: number) => Promise<Agent | null>;

/**
 * An unpacked transition with its agent in place: a base that names its agent gets the version
 * read by `readAgentVersion`, for the run's own tenant and agent (the name must be theirs). The
 * version must exist: every agent a run is created with was read from `agents` or
 * `agent_versions`, and each PUT inserts its `agent_versions` document before `agents` is
 * rewritten, so a missing one is corrupt data, never loaded silently.
 */
export async function resolveTransitionAgent(unpacked: UnpackedTransition, readAgentVersion: AgentVersionReader): Promise<StoredTransition> {
  const { agentVersionId, state, ...header } = unpacked;
  if (!state) return header;
  // A base's state is a `RunState` but for its agent (written by `packTransition` from one).
  if (state.agentSnapshot) return { ...header, state: state as RunState };
  const { tenantId, agentId } = state as Pick<RunState, 'tenantId' | 'agentId'>;
  const version = Number(agentVersionId?.slice(agentVersionId.lastIndexOf(':') + 1));
  if (agentVersionId === undefined || tenantId !== unpacked.tenantId || agentIds.version(tenantId, agentId, version) !== agentVersionId) {
    throw new Error(`transition ${unpacked._id} stores a state without its agent and names ${agentVersionId ?? 'no agent version'}, not a version of its own agent`);
  }
  const agent = await readAgentVersion(tenantId, agentId, version);
  if (!agent) throw new Error(`transition ${unpacked._id} names agent version ${agentVersionId}, which is not stored`);
  if (agent.tenantId !== tenantId || agent.agentId !== agentId || agent.version !== version) throw new Error(`transition ${unpacked._id} names agent version ${agentVersionId}, which holds an agent of another tenant or agent`);
  return { ...header, state: { ...state, agentSnapshot: agent } as RunState };
}

/**
 * Reads `agent_versions` by `_id` through `cache` (`agent-cache.ts`; a version never changes
 * once inserted, so a kept one is never stale): a cold load of a run on the version kept reads
 * no agent. Each call returns its own copy.
 */
export function createAgentVersionReader(collections: Pick<Collections, 'agentVersions'>, cache: AgentCache = createAgentCache()): AgentVersionReader {
  return async (tenantId, agentId, version) => {
    const kept = cache.version(tenantId, agentId, version);
    if (kept) return structuredClone(kept);
    const document = await collections.agentVersions.findOne({ _id: agentIds.version(tenantId, agentId, version) });
    if (!document) return null;
    const agent = agentFromDocument(document);
    cache.remember(agent);
    return agent;
  };
}

/** The stored form of a transition committed on `previous` (the state of the version before). */
export function toStoredTransition(transition: TransitionDocument, previous: RunState | null): StoredTransition {
  const { state, ...header } = transition;
  if (previous === null || baseVersionOf(transition.version) === transition.version) return transition;
  return { ...header, delta: encodeDelta(previous, state) };
}

/** A stored transition folded onto the state of the version before it (ignored for a base). */
export function fromStoredTransition(stored: StoredTransition, previous: RunState | null): TransitionDocument {
  const { state, delta, ...header } = stored;
  if (state) return { ...header, state };
  if (!delta) throw new Error(`transition ${stored._id} has neither a state nor a delta`);
  if (!previous) throw new Error(`transition ${stored._id} is a delta and no earlier state was loaded`);
  return { ...header, state: applyDelta(previous, delta) };
}

/**
 * Folds a run's stored transitions (decoded, in version order, from a base) into full
 * transitions: what the stores do on a cold load, exported so tests that read `run_transitions`
 * directly check the same states.
 */
export function foldStoredTransitions(stored: readonly StoredTransition[]): TransitionDocument[] {
  const folded: TransitionDocument[] = [];
  for (const document of stored) {
    const previous = folded.at(-1);
    if (previous && previous.version + 1 !== document.version) throw new Error(`transition ${document._id} follows version ${previous.version}`);
    folded.push(fromStoredTransition(document, previous?.state ?? null));
  }
  return folded;
}

/**
 * The read model (`runs`, `_id: runId`): the latest state's summary (`run-summary.ts`: no
 * messages, finished tool calls or agent snapshot), which may lag by a transition. Documents
 * written before summaries existed hold the whole state (`readModelSummary` reads both).
 * `prunedAt` (ISO time): the run's history was pruned after `RUN_RETENTION`; the read model then
 * holds the run's whole final state (`pruneRunHistory` writes it before deleting anything), all
 * that is kept of the run, and readers take it as the run's exact final state.
 */
export type RunDocument = (RunSummary | RunState) & { _id: string; version: number; lastSeq: number | null; publishedVersion: number; prunedAt?: string };

/** A run's summary at a version, with what the read model says of it (rolled forward past it by readers). */
export type LoadedSummary = { state: RunSummary; version: number; lastSeq: number | null; published: boolean };

/** A read-model document as stored (keys escaped; a whole state if written by older code), as a loaded summary. */
export function readModelSummary(document: RunDocument): LoadedSummary {
  const { _id: _ignored, version, lastSeq, publishedVersion, prunedAt: _pruned, ...fields } = decodeStoredKeys(document);
  const state = 'agentSnapshot' in fields ? summarizeRunState(fields as unknown as RunState) : (fields as RunSummary);
  return { state, version, lastSeq: lastSeq ?? null, published: (publishedVersion ?? 0) >= version };
}

/** The read-model document a transition is recorded as (before its keys are escaped for storage). */
export function readModelDocument(transition: TransitionDocument, lastSeq: number | null): RunDocument {
  return {
    ...summarizeRunState(transition.state),
    _id: transition.runId,
    version: transition.version,
    lastSeq,
    publishedVersion: transition.published ? transition.version : transition.version - 1,
  };
}

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
 * Read models are stored with their keys escaped (`stored-keys.ts`): tool arguments and results
 * are free JSON and may hold keys FerretDB refuses; transitions hold theirs in a JSON string
 * (`packTransition`).
 */
export function createRunStore(collections: Collections, options: { now?: () => number; /** Agent versions kept for cold loads (shared with the gateway's agent lookups). */ agentCache?: AgentCache } = {}) {
  const { runs, runTransitions, runWork, writes } = collections;
  /** When deadline and retention items fall due (`work-timeline.ts`): every write of such an item with a due time writes its entry first. */
  const timeline = createWorkTimeline(collections, options);
  /** The live-status sets `abide_runs` counts (`writeStatusSets`). */
  const statusSets = { running: 'runsRunning', suspended: 'runsSuspended' } as const;
  /** Per run, the version and status this process last wrote the sets for; bounded. */
  const statusWritten = new Map<string, { version: number; status: RunStatus }>();

  /**
   * Puts the run in the set of its status (`runs_running`, `runs_suspended`: `{ _id: runId }`)
   * and out of the other one (out of both when it is queued or has ended), after its read model:
   * the sets say what the read model says, so `countRunsByStatus` counts the read model's live
   * runs with one `$collStats` per set instead of a pass over every run stored. Idempotent (an
   * insert of a member, a delete of a non-member, change nothing). Skipped only when this process
   * wrote the same status for this version or the one just before (nothing another replica wrote
   * can lie between); a run whose inputs other replicas handle, or whose read model is written
   * once a second, is written again. A slower writer moving the read model back a version moves
   * the sets back with it, and the same catch-up (the orchestrator's probe for a newer version
   * after each read-model write) moves both forward again.
   */
  async function writeStatusSets(runId: string, version: number, status: RunStatus): Promise<void> {
    const known = statusWritten.get(runId);
    if (known && known.status === status && (known.version === version || known.version === version - 1)) {
      statusWritten.set(runId, { version, status });
      return;
    }
    await Promise.all(
      Object.entries(statusSets).map(([setStatus, collection]) => (setStatus === status ? writes[collection].insert({ _id: runId }) : writes[collection].delete(runId))),
    );
    // An ended run is remembered too: its read model is written twice for its last version
    // (before and after its events go out), and the second write need not delete again.
    statusWritten.delete(runId);
    statusWritten.set(runId, { version, status });
    if (statusWritten.size > 10_000) statusWritten.delete(statusWritten.keys().next().value!);
  }
  /** How many transitions a cold load reads at once (each by exact `_id`). */
  const coldLoadBatch = 32;
  const workCollections = { outbox: 'runWork', deadline: 'runDeadlines', retention: 'runRetention' } as const;
  const workCollection = (kind: WorkItem['kind']) => collections[workCollections[kind]];
  const workWriter = (kind: WorkItem['kind']) => writes[workCollections[kind]];
  /** A work item's kind from its `_id` (`workIds`: `<kind>:<runId>`). */
  const kindOfWork = (id: string): WorkItem['kind'] => {
    const kind = id.slice(0, id.indexOf(':'));
    if (kind !== 'outbox' && kind !== 'deadline' && kind !== 'retention') throw new Error(`not a work item id: ${id}`);
    return kind;
  };

  /** A pruned run's read model (its whole final state) as its latest transition: all that is left of it (no outbox, published). */
  function fromPrunedReadModel(stored: RunDocument): TransitionDocument {
    const { _id: runId, version, lastSeq: _lastSeq, publishedVersion: _published, prunedAt, ...state } = decodeStoredKeys(stored);
    return { _id: transitionId(runId, version), runId, tenantId: state.tenantId, version, at: new Date(prunedAt ?? 0), cause: '', state: state as RunState, outbox: [], published: true };
  }

  const readAgentVersion = createAgentVersionReader(collections, options.agentCache);

  async function loadStored(runId: string, version: number): Promise<StoredTransition | null> {
    const stored = await runTransitions.findOne({ _id: transitionId(runId, version) });
    return stored ? resolveTransitionAgent(unpackTransition(stored), readAgentVersion) : null;
  }

  /** The transition after `previous`, folded onto its state; null if none is committed. */
  async function loadNext(previous: Pick<TransitionDocument, 'runId' | 'version' | 'state'>): Promise<TransitionDocument | null> {
    const stored = await loadStored(previous.runId, previous.version + 1);
    return stored ? fromStoredTransition(stored, previous.state) : null;
  }

  /**
   * Version `version` of a run, whole (a cold load): reads it and every version back to its base
   * by exact `_id` (FerretDB pushes down nothing else), in parallel batches, and folds them.
   */
  async function loadVersion(runId: string, version: number): Promise<TransitionDocument | null> {
    const stored: StoredTransition[] = [];
    for (let from = baseVersionOf(version); from <= version; from += coldLoadBatch) {
      const versions = Array.from({ length: Math.min(coldLoadBatch, version - from + 1) }, (_, index) => from + index);
      const batch = await Promise.all(versions.map((each) => loadStored(runId, each)));
      for (const document of batch) {
        if (!document) return null;
        stored.push(document);
      }
    }
    // Start at the last base read (a transition stored whole by older code is one too).
    const lastBase = stored.findLastIndex((document) => document.state !== undefined);
    return foldStoredTransitions(stored.slice(Math.max(lastBase, 0))).at(-1) ?? null;
  }

  /** Rolls `from` forward by `_id` (`<runId>:<v+1>`, `+2`, …) to the run's latest transition. */
  async function rollForward(from: TransitionDocument): Promise<TransitionDocument> {
    let latest = from;
    for (;;) {
      const next = await loadNext(latest);
      if (!next) return latest;
      latest = next;
    }
  }

  /**
   * A summary rolled forward by `_id` past the read model it came from, transition by transition
   * (a delta applies to the summary alone; one that does not, because a pending call's record is
   * older than the summary knows, folds the whole state at that version instead).
   */
  async function rollSummaryForward(runId: string, from: LoadedSummary): Promise<LoadedSummary> {
    let loaded = from;
    for (;;) {
      const stored = await loadStored(runId, loaded.version + 1);
      if (!stored) return loaded;
      let state = stored.state ? summarizeRunState(stored.state) : stored.delta ? applyDeltaToSummary(loaded.state, stored.delta) : null;
      if (!state) {
        const whole = await loadVersion(runId, stored.version);
        if (!whole) throw new Error(`transition ${stored._id} cannot be folded`);
        state = summarizeRunState(whole.state);
      }
      // Past the read model, a transition is not known published (transitions are never marked).
      loaded = { state, version: stored.version, lastSeq: stored.lastSeq ?? loaded.lastSeq, published: stored.published };
    }
  }

  return {
    timeline,
    loadNext,
    loadVersion,
    rollForward,
    rollSummaryForward,

    /** Whether version `version` of the run is committed (by `_id`, nothing else read). */
    async exists(runId: string, version: number): Promise<boolean> {
      return (await runTransitions.findOne({ _id: transitionId(runId, version) }, { projection: { _id: 1 } })) !== null;
    },

    /**
     * Version 1 of a run if it is the run's latest (a new run's first load, for its `start`):
     * `<runId>:1` and a probe of `<runId>:2` by `_id`, both at once, instead of the read model,
     * then version 1, then the probe, in series. Null when version 1 is missing (a run that does
     * not exist, or was pruned) or version 2 exists: the caller then loads with `loadLatest`.
     * The read model is not read, so its `published` is false (the stored flag): the caller
     * knows better (the `start` arriving proves version 1's one message went out).
     */
    async loadFirstIfLatest(runId: string): Promise<TransitionDocument | null> {
      const [first, second] = await Promise.all([loadStored(runId, 1), runTransitions.findOne({ _id: transitionId(runId, 2) }, { projection: { _id: 1 } })]);
      if (!first || second) return null;
      return fromStoredTransition(first, null);
    },

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
        // Ended and pruned (`pruneRunHistory`): the read model is its whole final state; nothing follows it.
        const stored = (await runs.findOne({ _id: runId })) as RunDocument | null;
        if (stored) return { transition: fromPrunedReadModel(stored), lastSeq, pruned: true };
      }
      // The read model may lag (or not exist yet, right after creation): roll forward.
      const known = await loadVersion(runId, Math.max(version, 1));
      if (!known) return null;
      const latest = await rollForward(known);
      const published = latest.published || (run?.publishedVersion ?? 0) >= latest.version;
      return { transition: { ...latest, published }, lastSeq: latest.lastSeq ?? lastSeq };
    },

    /**
     * Inserts version 1 of a run, whole (group-committed with the other writes of this process);
     * false when it exists: another writer (a retry with the same Idempotency-Key) committed it first.
     */
    async insertTransition(transition: TransitionDocument): Promise<boolean> {
      return (await writes.runTransitions.insert(packTransition(toStoredTransition(transition, null)))) === 'ok';
    },

    /**
     * Inserts the transition, stored as its delta against `previous` (the state of the version it
     * follows; null only for version 1), group-committed with the other runs' commits of this
     * process. The delta is inside the one document, so the insert stays the whole commit: a
     * replica that loses the race (duplicate key) leaves nothing behind.
     * Throws `TransitionConflictError` if the version exists.
     */
    async commit(transition: TransitionDocument, previous: RunState | null): Promise<void> {
      if ((await writes.runTransitions.insert(packTransition(toStoredTransition(transition, previous)))) === 'duplicate') throw new TransitionConflictError(`transition ${transition._id} exists`);
    },

    /**
     * Rewrites the read model by `_id` (it may lag; readers roll forward). Callers keep it from
     * moving backwards (the orchestrator writes a run's read model serialized, newest only).
     */
    async writeReadModel(transition: TransitionDocument, lastSeq: number | null): Promise<void> {
      const document = encodeStoredKeys(readModelDocument(transition, lastSeq));
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
      await writeStatusSets(transition.runId, transition.version, transition.state.status);
    },

    /**
     * Prunes an ended run's history (retention, issue 9): replaces the read model (a summary)
     * with the run's whole final state marked `prunedAt`, folded from its transitions (the
     * conversation's next run starts from its messages), then deletes the run's documents from
     * every `runHistoryCollections` entry by exact `_id`. Only once the read model records the run
     * as ended with its last transition published (the terminal transition's retention item is
     * written just before that read model: until it lands, nothing is touched). Marked first, so a
     * reader never takes a partly pruned history for a whole one, and nothing is deleted before
     * the final state is kept. Idempotent: a crash between any two writes leaves the run marked
     * and partly pruned, its retention item still there, and the next sweep deletes the rest (a
     * delete of a missing `_id` is a no-op).
     */
    async pruneRunHistory(runId: string, now: Date): Promise<PruneOutcome> {
      const run = (await runs.findOne({ _id: runId }, { projection: { status: 1, version: 1, lastSeq: 1, publishedVersion: 1, prunedAt: 1 } })) as Pick<RunDocument, 'status' | 'version' | 'lastSeq' | 'publishedVersion' | 'prunedAt'> | null;
      if (!run) return (await loadStored(runId, 1)) ? 'not_settled' : 'missing';
      if (!isTerminalStatus(run.status) || (run.publishedVersion ?? 0) < run.version) return 'not_settled';
      if (run.prunedAt === undefined) {
        const final = await loadVersion(runId, run.version);
        if (!final) throw new Error(`run ${runId}: version ${run.version} cannot be loaded to keep as its final state`);
        const kept: RunDocument = { ...final.state, _id: runId, version: run.version, lastSeq: run.lastSeq ?? null, publishedVersion: run.version, prunedAt: now.toISOString() };
        await writes.runs.replace(encodeStoredKeys(kept), { upsert: false });
      }
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

    /**
     * Inserts a work item unless one with its `_id` exists (then the existing one stands, due no
     * later: its own timeline entry fires it). A deadline or retention item's timeline entry is
     * written first.
     */
    async insertWork(item: WorkItem): Promise<void> {
      if (item.kind !== 'outbox') await timeline.schedule({ ...item, kind: item.kind });
      await workWriter(item.kind).insert(item);
    },

    /** The `kind` work item of a run, by `_id` (what a timeline entry points to), or null. */
    async loadWork(kind: TimelineKind, runId: string): Promise<WorkItem | null> {
      const found = await workCollection(kind).findOne({ _id: workIds[kind](runId) });
      return found ? (found as unknown as WorkItem) : null;
    },

    /**
     * Writes a timeline entry for every `kind` item stored (a scan of its list): what a sweeper
     * does once, when it finds no timeline cursor (a new database, or one an older version wrote
     * items into without entries). Returns how many.
     */
    async indexWork(kind: TimelineKind): Promise<number> {
      const items = (await workCollection(kind).find({ kind }).toArray()) as unknown as WorkItem[];
      await Promise.all(items.map((item) => timeline.schedule({ ...item, kind })));
      return items.length;
    },

    /** Deletes a work item by `_id` (idempotent). */
    async deleteWork(id: string): Promise<void> {
      await workWriter(kindOfWork(id)).delete(id);
    },

    /**
     * Sets the run's deadline item to `dueAt` (by `_id`, upserted), later or earlier, after its
     * timeline entry; or deletes it when null (its entries turn stale).
     */
    async writeDeadline(runId: string, tenantId: string, dueAt: string | null): Promise<void> {
      const _id = workIds.deadline(runId);
      if (dueAt === null) {
        await writes.runDeadlines.delete(_id);
        return;
      }
      const item: WorkItem = { _id, kind: 'deadline', runId, tenantId, dueAt };
      await timeline.schedule({ ...item, kind: 'deadline' });
      await writes.runDeadlines.replace(item, { upsert: true });
    },

    /**
     * Lowers the run's deadline item to `dueAt` (by `_id`, upserted): an item due earlier stays
     * as it is (`$min`; ISO times in one format order as strings). What the orchestrator writes
     * after a transition: an item only has to fire no later than the run's deadline (an early one
     * is ignored and moved, `writeDeadline`), and a write that lands late (a slower replica's, of
     * an older version) can then never leave the item later than a newer version's deadline.
     * Its timeline entry for `dueAt` is written first (if `$min` keeps an earlier time, that
     * time's entry exists already).
     */
    async lowerDeadline(runId: string, tenantId: string, dueAt: string): Promise<void> {
      const _id = workIds.deadline(runId);
      await timeline.schedule({ _id, kind: 'deadline', runId, tenantId, dueAt });
      await writes.runDeadlines.update(_id, { $min: { dueAt }, $set: { kind: 'deadline', runId, tenantId } }, { upsert: true });
    },

    /** The earliest `dueAt` of `kind` after `afterIso` (a scan on FerretDB; no sweeper asks it any more), or null. */
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
        await timeline.schedule({ ...item, kind: 'deadline' });
        await writes.runDeadlines.insert(item);
        await writes.runWork.delete(item._id);
      }
      return legacy.length;
    },

    /**
     * How many runs are `queued`, `running` or `suspended`, each read as one collection's document
     * count (`$collStats`: the store's own count, no document read, on FerretDB and MongoDB alike):
     * `running` and `suspended` from the status sets the read-model writes keep
     * (`writeStatusSets`), `queued` from `run_work` (new runs whose `start` is not yet known to be
     * out: the gateway deletes a run's item once it published it, before the orchestrator starts
     * the run). A collection never written counts 0.
     */
    async countRunsByStatus(statuses: readonly ('queued' | 'running' | 'suspended')[]): Promise<Partial<Record<RunStatus, number>>> {
      const counted = { queued: runWork, running: collections.runsRunning, suspended: collections.runsSuspended };
      const counts = await Promise.all(
        statuses.map(async (status) => {
          try {
            const [stats] = await counted[status].aggregate<{ count?: number }>([{ $collStats: { count: {} } }]).toArray();
            return [status, stats?.count ?? 0] as const;
          } catch (error) {
            // NamespaceNotFound: nothing was ever written there.
            if ((error as { code?: unknown }).code === 26) return [status, 0] as const;
            throw error;
          }
        }),
      );
      return Object.fromEntries(counts);
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
