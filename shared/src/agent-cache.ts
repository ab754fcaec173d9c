import type { Agent } from './agent.ts';
import { decodeStoredKeys } from './stored-keys.ts';

/** Options of `createAgentCache`. */
export type AgentCacheOptions = {
  /** Agents kept (one version each). @default 1000 */
  maxEntries?: number;
  /** Approximate bytes kept (JSON length of the agents): definitions go up to 256 KiB each. @default 8 MiB */
  maxBytes?: number;
};

/** An agent as stored in `agents` or `agent_versions`, without MongoDB's `_id` (keys decoded). */
export function agentFromDocument(document: Record<string, unknown>): Agent {
  const { _id: _ignored, ...agent } = decodeStoredKeys(document);
  return agent as Agent;
}

/**
 * Agents by (tenant, agent), each with the one version last seen: an `agent_versions` document
 * never changes once inserted, so a version read once can be served again. The gateway serves
 * `latest` once it has checked that the version is still the one in force (its store probes
 * `agent_versions` for the next version on every lookup: an agent PUT takes effect for the next
 * run); the run store serves `version` to a cold load whose transition names that version.
 * LRU, bounded by count and by approximate bytes. The key holds the tenant, and an entry is
 * served only for the tenant its agent names, so no tenant reads another's agent.
 */
export function createAgentCache(options: AgentCacheOptions = {}) {
  const maxEntries = options.maxEntries ?? 1_000;
  const maxBytes = options.maxBytes ?? 8 * 1_048_576;
  const entries = new Map<string, { agent: Agent; bytes: number }>();
  let cachedBytes = 0;
  // A JSON pair, not a joined string: no tenant id and agent id can spell another pair's key.
  const keyOf = (tenantId: string, agentId: string) => JSON.stringify([tenantId, agentId]);

  function drop(key: string): void {
    const entry = entries.get(key);
    if (!entry) return;
    cachedBytes -= entry.bytes;
    entries.delete(key);
  }

  return {
    /** The version last seen of the tenant's agent (most recently used now), or undefined. */
    latest(tenantId: string, agentId: string): Agent | undefined {
      const key = keyOf(tenantId, agentId);
      const entry = entries.get(key);
      if (!entry || entry.agent.tenantId !== tenantId || entry.agent.agentId !== agentId) return undefined;
      // Most recently used last: the map's insertion order is the LRU order.
      entries.delete(key);
      entries.set(key, entry);
      return entry.agent;
    },

    /** Exactly version `version` of the tenant's agent if it is the one kept (most recently used now), or undefined. */
    version(tenantId: string, agentId: string, version: number): Agent | undefined {
      const kept = entries.get(keyOf(tenantId, agentId));
      if (!kept || kept.agent.version !== version) return undefined;
      return this.latest(tenantId, agentId);
    },

    /** Keeps `agent` (a version read from the store) unless a newer version of it is kept already. */
    remember(agent: Agent): void {
      const key = keyOf(agent.tenantId, agent.agentId);
      const kept = entries.get(key);
      if (kept && kept.agent.version >= agent.version) return;
      drop(key);
      const bytes = JSON.stringify(agent).length;
      if (bytes > maxBytes) return;
      entries.set(key, { agent: structuredClone(agent), bytes });
      cachedBytes += bytes;
      while (entries.size > maxEntries || cachedBytes > maxBytes) drop(entries.keys().next().value!);
    },

    /** What the cache holds (for tests). */
    stats(): { entries: number; bytes: number } {
      return { entries: entries.size, bytes: cachedBytes };
    },
  };
}
export type AgentCache = ReturnType<typeof createAgentCache>;
