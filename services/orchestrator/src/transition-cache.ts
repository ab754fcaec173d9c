import { isTerminalStatus, type Agent, type RunState, type TransitionDocument } from '@abide/shared';

/** What the orchestrator keeps per run: its latest transition and the stream sequence of its last event. */
export type CachedTransition = { transition: TransitionDocument; lastSeq: number | null };

export type TransitionCacheOptions = {
  /** Runs kept at most. @default 10_000 */
  maxEntries?: number | undefined;
  /** Sum of the entries' sizes (`sizeOf`) kept at most. @default 64 MiB (`ORCHESTRATOR_CACHE_BYTES`) */
  maxBytes?: number | undefined;
  /** An entry's size without its agent: by default about the length of its state as JSON, agent left out (counted once per version), a proxy for what it holds on the heap. */
  sizeOf?: (entry: CachedTransition) => number;
  /** Called for each run dropped to stay within the bounds (not for a run dropped because it ended). */
  onEvict?: () => void;
};

/**
 * The default byte bound (`ORCHESTRATOR_CACHE_BYTES`). A waiting run of the workload is ~5 KB of
 * JSON without its agent, so this holds ~13,000 of them. 16 MiB held ~3,400: with 4,000 runs
 * approved at once the cache overflowed, nearly every input became a cold load (~8,700 of
 * them in 75 s), FerretDB saturated and the runs completed at ~10 a second instead of ~30.
 */
export const defaultTransitionCacheBytes = 64 * 1024 * 1024;

/**
 * The orchestrator's latest-transition cache (a hot run is applied without a read), least
 * recently used first out, bounded by entries and by bytes: a whole state grows with its run
 * (every message, every tool call), so a count bound alone lets a few thousand long runs hold
 * gigabytes. An entry larger than the whole budget is not kept. A run that has ended is dropped
 * once its last transition is published: it takes no more steps, and a late input for it is
 * loaded from the store like any cache miss. Only ever an optimization: a miss costs a read.
 *
 * The runs of one agent version share one copy of it: an entry's agent is replaced by the copy
 * already kept for its version (a version never changes), counted once in the bytes while an
 * entry uses it. An agent can be a large part of a waiting run's state (the workload's is
 * ~3.5 KB as stored, more than its version 1 without it), so the same budget holds more runs
 * before an input of a run becomes a cold load.
 */
export function createTransitionCache(options: TransitionCacheOptions = {}) {
  /**
   * JSON sizes of the messages, tool call arguments and outcomes measured so far, by object: a
   * state shares them with the states before it (`draftOf`, `applyDelta`), so each is measured
   * once, not at every step of its run (measuring the whole state was ~0.5 ms per step at 200
   * steps). A state is never changed once kept, so a measured object keeps its size.
   */
  const measured = new WeakMap<object, number>();
  function bytesOf(value: unknown): number {
    if (typeof value !== 'object' || value === null) return JSON.stringify(value ?? null).length;
    let size = measured.get(value);
    if (size === undefined) {
      size = JSON.stringify(value).length;
      measured.set(value, size);
    }
    return size;
  }
  /** About the length of the state as JSON, its agent left out (counted once per version). */
  function stateBytes(state: RunState): number {
    const { agentSnapshot: _counted, messages, toolCalls, ...rest } = state;
    let size = JSON.stringify(rest).length;
    for (const message of messages) size += bytesOf(message) + 1;
    for (const { args, outcome, ...call } of toolCalls) size += JSON.stringify(call).length + bytesOf(args) + bytesOf(outcome) + 1;
    return size;
  }

  const maxEntries = options.maxEntries ?? 10_000;
  const maxBytes = options.maxBytes ?? defaultTransitionCacheBytes;
  const sizeOf = options.sizeOf ?? ((entry: CachedTransition) => stateBytes(entry.transition.state));
  const entries = new Map<string, { entry: CachedTransition; bytes: number }>();
  /** The agent versions the entries use, one copy each, with how many entries use it. */
  const agents = new Map<string, { agent: Agent; users: number; bytes: number }>();
  let bytes = 0;
  // A JSON triple, not a joined string: no ids can spell another version's key.
  const versionKey = (agent: Agent) => JSON.stringify([agent.tenantId, agent.agentId, agent.version]);

  /** Points the state at the kept copy of its agent version (keeping this one if none is), and counts a user. */
  function shareAgent(state: RunState): void {
    const key = versionKey(state.agentSnapshot);
    let shared = agents.get(key);
    if (!shared) {
      shared = { agent: state.agentSnapshot, users: 0, bytes: JSON.stringify(state.agentSnapshot).length };
      agents.set(key, shared);
      bytes += shared.bytes;
    }
    shared.users += 1;
    state.agentSnapshot = shared.agent;
  }

  function releaseAgent(state: RunState): void {
    const key = versionKey(state.agentSnapshot);
    const shared = agents.get(key);
    if (!shared) return;
    shared.users -= 1;
    if (shared.users > 0) return;
    agents.delete(key);
    bytes -= shared.bytes;
  }

  function drop(runId: string, found: { entry: CachedTransition; bytes: number }): void {
    entries.delete(runId);
    bytes -= found.bytes;
    releaseAgent(found.entry.transition.state);
  }

  function remove(runId: string): void {
    const found = entries.get(runId);
    if (found) drop(runId, found);
  }

  return {
    get(runId: string): CachedTransition | undefined {
      return entries.get(runId)?.entry;
    },

    delete(runId: string): void {
      remove(runId);
    },

    /** Keeps `entry` as the run's latest (most recently used), evicting the least recently used beyond the bounds. */
    remember(runId: string, entry: CachedTransition): void {
      remove(runId);
      if (entry.transition.published && isTerminalStatus(entry.transition.state.status)) return;
      const size = sizeOf(entry);
      if (size > maxBytes) return;
      shareAgent(entry.transition.state);
      entries.set(runId, { entry, bytes: size });
      bytes += size;
      for (const [oldest, found] of entries) {
        if (entries.size <= maxEntries && bytes <= maxBytes) break;
        drop(oldest, found);
        options.onEvict?.();
      }
    },

    /** Runs kept and the sum of their sizes and of their agents' (for tests and metrics). */
    get size(): { entries: number; bytes: number; agents: number } {
      return { entries: entries.size, bytes, agents: agents.size };
    },
  };
}

export type TransitionCache = ReturnType<typeof createTransitionCache>;
