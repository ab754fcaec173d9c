import { agentFromDocument, agentIds, createAgentCache, createAgentVersionReader, createHeadsCompleteCheck, readConversationHead, decodeStoredKeys, type AgentCache, encodeStoredKeys, isDuplicateKeyError, readModelSummary, summarizeRunState, transitionId, type Agent, type Collections, type LoadedSummary, type RunDocument, type RunStore, type TransitionDocument } from '@abide/shared';
import type { Db } from 'mongodb';
import type { ConversationLock, GatewayStore, LoadedRun, RunListQuery, TransitionHeader } from './ports.ts';

/**
 * The gateway's MongoDB access (DESIGN §3). Races are decided by inserts; every hot path goes by
 * `_id`; reads roll forward past a lagging `agents` / `runs` document.
 */
export function createMongoStore(options: { db: Db; collections: Collections; runStore: RunStore; agentCache?: AgentCache }): GatewayStore {
  const { db, collections, runStore } = options;
  const agentCache = options.agentCache ?? createAgentCache();
  const headsComplete = createHeadsCompleteCheck(collections);
  const readAgentVersion = createAgentVersionReader(collections, agentCache);

  /**
   * A read-model document's summary rolled forward through `run_transitions` by `_id` (stored
   * with escaped keys, shared stored-keys.ts; `readModelSummary` decodes them). A pruned run's
   * read model is its whole final state and nothing follows it.
   */
  const rollForward = (document: RunDocument): Promise<LoadedSummary> => runStore.rollSummaryForward(document._id, readModelSummary(document));

  /** The run's exact latest state, folded from its transitions (a cold load), or a pruned run's final state. */
  async function loadRun(runId: string): Promise<LoadedRun | null> {
    const latest = await runStore.loadLatest(runId);
    if (!latest) return null;
    return {
      state: latest.transition.state,
      version: latest.transition.version,
      lastSeq: latest.lastSeq,
      published: latest.transition.published,
      ...(latest.pruned ? { pruned: true as const } : {}),
    };
  }

  /** The agent in force, read whole: `agents`, rolled forward through `agent_versions`. */
  async function readAgent(tenantId: string, agentId: string): Promise<Agent | null> {
    const current = await collections.agents.findOne({ _id: agentIds.document(tenantId, agentId) });
    let agent = current ? agentFromDocument(current) : null;
    // `agents` may lag behind `agent_versions` (a writer died between the two writes, or a slower one lost).
    for (let probe = (agent?.version ?? 0) + 1; ; probe += 1) {
      const next = await collections.agentVersions.findOne({ _id: agentIds.version(tenantId, agentId, probe) });
      if (!next) break;
      agent = agentFromDocument(next);
    }
    return agent;
  }

  return {
    /**
     * The agent in force. With a version of it cached, one read: a probe of `agent_versions` for
     * the version after the cached one. Versions are contiguous (each PUT inserts the version
     * after the newest it read, and nothing deletes one), so when that one does not exist the
     * cached copy is the newest version, an immutable document. The probe starts after the call
     * does, so a PUT answered before it (here or on another replica: its `agent_versions` insert
     * came first) or one that died after that insert is seen, as by the whole read.
     */
    async findAgent(tenantId, agentId) {
      const cached = agentCache.latest(tenantId, agentId);
      if (cached) {
        const next = await collections.agentVersions.findOne({ _id: agentIds.version(tenantId, agentId, cached.version + 1) }, { projection: { _id: 1 } });
        if (!next) return structuredClone(cached);
      }
      const agent = await readAgent(tenantId, agentId);
      if (agent) agentCache.remember(agent);
      return agent;
    },

    findAgentVersion: readAgentVersion,

    async insertAgentVersion(agent) {
      try {
        await collections.agentVersions.insertOne(encodeStoredKeys({ _id: agentIds.version(agent.tenantId, agent.agentId, agent.version), ...agent }));
        return true;
      } catch (error) {
        if (isDuplicateKeyError(error)) return false;
        throw error;
      }
    },

    async writeAgent(agent) {
      const _id = agentIds.document(agent.tenantId, agent.agentId);
      const replaced = await collections.agents.replaceOne({ _id, version: { $lt: agent.version } }, encodeStoredKeys({ _id, ...agent }));
      if (replaced.matchedCount === 0) {
        try {
          await collections.agents.insertOne(encodeStoredKeys({ _id, ...agent }));
        } catch (error) {
          // A newer version is in place already: readers roll forward anyway.
          if (!isDuplicateKeyError(error)) throw error;
        }
      }
      // This version is in `agent_versions` for good: the next creation only probes for a later one.
      agentCache.remember(agent);
    },

    loadRun,

    async loadRunSummary(runId) {
      const document = (await collections.runs.findOne({ _id: runId })) as RunDocument | null;
      if (document) return rollForward(document);
      // No read model yet (a new run's first write may still be in flight): fold from the transitions.
      const run = await loadRun(runId);
      return run ? { ...run, state: summarizeRunState(run.state) } : null;
    },

    loadTransition: (runId, version) => runStore.loadVersion(runId, version),

    async loadTransitionHeader(runId, version) {
      // By exact `_id`, projected: a transition stored packed (`packTransition`) has its header
      // fields beside its body; one older code wrote holds the run's whole state (a base: its
      // messages too) or carries them whole in `delta.set` (run-delta.ts).
      const projection = { runId: 1, tenantId: 1, version: 1, at: 1, cause: 1, status: 1, step: 1, awaiting: 1, 'state.status': 1, 'state.step': 1, 'state.awaiting': 1, 'delta.set.status': 1, 'delta.set.step': 1, 'delta.set.awaiting': 1 };
      type HeaderFields = TransitionHeader['state'];
      const found = (await collections.runTransitions.findOne({ _id: transitionId(runId, version) }, { projection })) as (Omit<TransitionHeader, 'state'> & Partial<HeaderFields> & { state?: HeaderFields; delta?: { set: HeaderFields } }) | null;
      if (!found) return null;
      const { state, delta, status, step, awaiting, ...header } = found;
      const fields = status !== undefined && step !== undefined && awaiting !== undefined ? { status, step, awaiting } : (state ?? delta?.set);
      if (!fields) throw new Error(`transition ${transitionId(runId, version)} has neither a state nor a delta`);
      return { ...header, state: { status: fields.status, step: fields.step, awaiting: fields.awaiting } };
    },

    async listRuns(query: RunListQuery) {
      const filter: Record<string, unknown> = { tenantId: query.tenantId };
      if (query.conversationId !== undefined) filter.conversationId = query.conversationId;
      if (query.status !== undefined) filter.status = query.status;
      if (query.after) {
        filter.$or = [{ createdAt: { $lt: query.after.createdAt } }, { createdAt: query.after.createdAt, _id: { $lt: query.after.runId } }];
      }
      const documents = (await collections.runs
        .find(filter)
        .sort({ createdAt: -1, _id: -1 })
        .limit(query.limit + 1)
        .toArray()) as unknown as RunDocument[];
      const hasMore = documents.length > query.limit;
      const page = documents.slice(0, query.limit);
      const runs = await Promise.all(page.map(rollForward));
      const lastDocument = page.at(-1);
      return { runs, last: lastDocument ? { createdAt: lastDocument.createdAt, runId: lastDocument._id } : null, hasMore };
    },

    async listSuspendedRuns(query) {
      const filter: Record<string, unknown> = { tenantId: query.tenantId, status: 'suspended' };
      if (query.after) {
        filter.$or = [{ createdAt: { $lt: query.after.createdAt } }, { createdAt: query.after.createdAt, _id: { $lt: query.after.runId } }];
      }
      const documents = (await collections.runs
        .find(filter, { projection: { _id: 1, createdAt: 1, pendingApprovals: 1, toolCalls: 1 } })
        .sort({ createdAt: -1, _id: -1 })
        .limit(query.limit + 1)
        .toArray()) as unknown as (Pick<RunDocument, '_id' | 'createdAt' | 'pendingApprovals' | 'toolCalls'>)[];
      const hasMore = documents.length > query.limit;
      const page = documents.slice(0, query.limit);
      // Stored with escaped keys (shared stored-keys.ts): tool-call args are tenant JSON.
      const runs = page.map((document) => {
        const { _id, createdAt, pendingApprovals, toolCalls } = decodeStoredKeys(document);
        return { runId: _id, createdAt, pendingApprovals, toolCalls };
      });
      const last = page.at(-1);
      return { runs, last: last ? { createdAt: last.createdAt, runId: last._id } : null, hasMore };
    },

    conversationHead: (tenantId, conversationId) => readConversationHead(collections, tenantId, conversationId, headsComplete),

    async conversationRuns(tenantId, conversationId, limit) {
      const documents = (await collections.runs
        .find({ tenantId, conversationId })
        .sort({ createdAt: -1, _id: -1 })
        .limit(limit)
        .toArray()) as unknown as RunDocument[];
      return Promise.all(documents.map(rollForward));
    },

    insertTransition: (transition) => runStore.insertTransition(transition),

    writeReadModel: (transition) => runStore.writeReadModel(transition, null),
    insertWork: (item) => runStore.insertWork(item),
    deleteWork: (id) => runStore.deleteWork(id),

    async insertLock(lock: ConversationLock) {
      return (await collections.writes.conversationLocks.insert(lock)) === 'ok';
    },

    async findLock(lockId) {
      return (await collections.conversationLocks.findOne({ _id: lockId })) as ConversationLock | null;
    },

    async deleteLock(lockId, runId) {
      await collections.writes.conversationLocks.delete(lockId, { runId });
    },
  };
}
