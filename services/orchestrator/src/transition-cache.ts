import { isTerminalStatus, type TransitionDocument } from '@abide/shared';

/** What the orchestrator keeps per run: its latest transition and the stream sequence of its last event. */
export type CachedTransition = { transition: TransitionDocument; lastSeq: number | null };

export type TransitionCacheOptions = {
  /** Runs kept at most. @default 10_000 */
  maxEntries?: number | undefined;
  /** Sum of the entries' sizes (`sizeOf`) kept at most. @default 16 MiB */
  maxBytes?: number | undefined;
  /** An entry's size: by default the length of its state as JSON, a proxy for what it holds on the heap. */
  sizeOf?: (entry: CachedTransition) => number;
};

/** The default byte bound: the workload's finished 5-step run is ~18 KB of JSON, so this holds ~900 such runs. */
export const defaultTransitionCacheBytes = 16 * 1024 * 1024;

/**
 * The orchestrator's latest-transition cache (a hot run is applied without a read), least
 * recently used first out, bounded by entries and by bytes: a whole state grows with its run
 * (every message, every tool call), so a count bound alone lets a few thousand long runs hold
 * gigabytes. An entry larger than the whole budget is not kept. A run that has ended is dropped
 * once its last transition is published: it takes no more steps, and a late input for it is
 * loaded from the store like any cache miss. Only ever an optimization: a miss costs a read.
 */
export function createTransitionCache(options: TransitionCacheOptions = {}) {
  const maxEntries = options.maxEntries ?? 10_000;
  const maxBytes = options.maxBytes ?? defaultTransitionCacheBytes;
  const sizeOf = options.sizeOf ?? ((entry: CachedTransition) => JSON.stringify(entry.transition.state).length);
  const entries = new Map<string, { entry: CachedTransition; bytes: number }>();
  let bytes = 0;

  function remove(runId: string): void {
    const found = entries.get(runId);
    if (!found) return;
    entries.delete(runId);
    bytes -= found.bytes;
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
      entries.set(runId, { entry, bytes: size });
      bytes += size;
      for (const [oldest, found] of entries) {
        if (entries.size <= maxEntries && bytes <= maxBytes) break;
        entries.delete(oldest);
        bytes -= found.bytes;
      }
    },

    /** Runs kept and the sum of their sizes (for tests and metrics). */
    get size(): { entries: number; bytes: number } {
      return { entries: entries.size, bytes };
    },
  };
}

export type TransitionCache = ReturnType<typeof createTransitionCache>;
