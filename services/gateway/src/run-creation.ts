import {
  ApiError,
  hashJson,
  isTerminalStatus,
  newId,
  runIdFromIdempotencyKey,
  transitionId,
  zeroUsage,
  type Agent,
  type CreateRunBody,
  type Logger,
  type ModelMessage,
  type RunState,
  type RunStatus,
  type TransitionDocument,
} from '@abide/shared';
import type { GatewayBus, GatewayStore, LoadedRun } from './ports.ts';
import type { RateLimiter } from './rate-limiter.ts';

/** A lock whose holder run does not exist is freed after this long (DESIGN §3). */
export const staleLockMs = 30_000;
/** Runs of a conversation looked at to find its latest ended run. */
const conversationLookback = 10;
const maxLockAttempts = 5;

export type CreateRunRequest = {
  tenantId: string;
  body: CreateRunBody;
  idempotencyKey?: string | undefined;
  /** The id of the request that creates the run (recorded as the transition's `cause`). */
  requestId: string;
};

export type CreateRunResult = {
  /** False when an earlier request with the same `Idempotency-Key` created the run. */
  created: boolean;
  runId: string;
  status: RunStatus;
  conversationId: string;
};

export const conversationLockId = (tenantId: string, conversationId: string) => `${tenantId}:${conversationId}`;

/** The run input as model messages (a string is one user message). */
export function inputMessages(input: CreateRunBody['input']): ModelMessage[] {
  return typeof input === 'string' ? [{ role: 'user', content: input }] : input;
}

/** The state of a run at version 1 (`queued`). */
export function initialRunState(fields: {
  runId: string;
  tenantId: string;
  agent: Agent;
  conversationId: string;
  history: ModelMessage[];
  body: CreateRunBody;
  requestHash: string;
  at: string;
}): RunState {
  return {
    schemaVersion: 1,
    runId: fields.runId,
    tenantId: fields.tenantId,
    agentId: fields.agent.agentId,
    agentSnapshot: fields.agent,
    conversationId: fields.conversationId,
    status: 'queued',
    step: 0,
    awaiting: { kind: null, step: 0 },
    messages: [...fields.history, ...inputMessages(fields.body.input)],
    historyLength: fields.history.length,
    toolCalls: [],
    pendingApprovals: [],
    llmAttempts: [],
    usage: { ...zeroUsage },
    output: null,
    error: null,
    cancelReason: null,
    requestHash: fields.requestHash,
    metadata: fields.body.metadata ?? null,
    nextDeadlineAt: null,
    createdAt: fields.at,
    updatedAt: fields.at,
  };
}

/**
 * Creating a run (DESIGN §3, "a way that works"), shared by `POST /v1/runs` and the WebSocket
 * `run.create` frame. Every crash window ends in a run that completes or in nothing visible:
 * - before the lock: nothing was written;
 * - after the lock, before the transition: a lock naming a run that does not exist, freed by
 *   the 30-s rule (or taken by a retry with the same Idempotency-Key, whose runId it names);
 * - after the transition: the run exists; the orchestrator's sweeper publishes its unpublished
 *   outbox (`start`) after 5 s, and a retry with the same key republishes it at once.
 */
export function createRunCreator(deps: { store: GatewayStore; bus: GatewayBus; logger: Logger; rateLimiter?: RateLimiter; now?: () => Date }) {
  const { store, bus, logger } = deps;
  const now = deps.now ?? (() => new Date());

  /** The answer for a run that exists already under this Idempotency-Key. */
  async function answerExisting(run: LoadedRun, requestHash: string): Promise<CreateRunResult> {
    if (run.state.requestHash !== requestHash) {
      throw new ApiError('idempotency_key_reused', 'this Idempotency-Key was used with another request body');
    }
    if (run.version === 1 && !run.published) await finishCreation(run.state.runId);
    return { created: false, runId: run.state.runId, status: run.state.status, conversationId: run.state.conversationId };
  }

  /** Completes a creation whose request died after committing (read model, outbox): all steps are idempotent. */
  async function finishCreation(runId: string): Promise<void> {
    const transition = await store.loadTransition(runId, 1);
    if (!transition || transition.published) return;
    await store.writeReadModel(transition);
    await publishStart(transition);
  }

  async function publishStart(transition: TransitionDocument): Promise<void> {
    try {
      await deps.bus.publishOutbox(transition);
      await store.markPublished(transition.runId, transition.version);
    } catch (error) {
      // The run is committed; the orchestrator's sweeper publishes the outbox after 5 s.
      logger.warn({ runId: transition.runId, err: error }, 'could not publish the start of a new run; the sweeper will');
    }
  }

  /** Takes the conversation's lock for `runId`, or throws 409 `conversation_busy`. */
  async function acquireLock(tenantId: string, conversationId: string, runId: string): Promise<void> {
    const lockId = conversationLockId(tenantId, conversationId);
    for (let attempt = 0; attempt < maxLockAttempts; attempt += 1) {
      if (await store.insertLock({ _id: lockId, runId, at: now() })) return;
      const lock = await store.findLock(lockId);
      if (!lock) continue; // released meanwhile: insert again
      if (lock.runId === runId) return; // a retry of the same Idempotency-Key took it before dying
      const holder = await store.loadRun(lock.runId);
      const free = holder ? isTerminalStatus(holder.state.status) : now().getTime() - new Date(lock.at).getTime() >= staleLockMs;
      if (!free) throw new ApiError('conversation_busy', `conversation ${conversationId} has an active run (${lock.runId})`);
      // Its holder ended (the orchestrator releases it too) or never came to exist: free it, insert again.
      await store.deleteLock(lockId, lock.runId);
    }
    throw new ApiError('conversation_busy', `conversation ${conversationId} is being taken by another request`);
  }

  /**
   * Gives the conversation back after a failure between taking its lock and committing the run,
   * rather than hold it for 30 s. The insert may have failed after the write reached the store (a
   * lost reply): the lock is released only when the run is known not to exist; when that cannot
   * be known (the store is unreachable), the 30-s rule and the run's own end release it.
   */
  async function releaseUncommittedLock(tenantId: string, conversationId: string, runId: string): Promise<void> {
    try {
      if (await store.loadRun(runId)) return;
      await store.deleteLock(conversationLockId(tenantId, conversationId), runId);
    } catch (releaseError) {
      // Logged, not thrown: the caller rethrows the error that stopped the creation.
      logger.warn({ runId, err: releaseError }, 'could not release a conversation lock; the 30-s rule will');
    }
  }

  /** The conversation so far: the messages of its latest ended run. */
  async function conversationHistory(tenantId: string, conversationId: string): Promise<ModelMessage[]> {
    const runs = await store.conversationRuns(tenantId, conversationId, conversationLookback);
    const latestEnded = runs.find((run) => isTerminalStatus(run.state.status));
    return latestEnded ? latestEnded.state.messages : [];
  }

  return async function createRun(request: CreateRunRequest): Promise<CreateRunResult> {
    const { tenantId, body } = request;
    const requestHash = hashJson(body);
    const runId = request.idempotencyKey === undefined ? newId('run') : runIdFromIdempotencyKey(tenantId, request.idempotencyKey);

    if (request.idempotencyKey !== undefined) {
      const existing = await store.loadRun(runId);
      if (existing) return answerExisting(existing, requestHash);
    }
    deps.rateLimiter?.take(tenantId);
    const agent = await store.findAgent(tenantId, body.agentId);
    if (!agent) throw new ApiError('agent_not_found', `agent ${body.agentId} not found`);
    const conversationId = body.conversationId ?? newId('conv');

    // Everything the client sent was validated by the route (stored-json keys and depth included):
    // nothing below refuses the body, so a refusal never holds the conversation.
    await acquireLock(tenantId, conversationId, runId);
    let committed: boolean;
    let transition: TransitionDocument;
    try {
      // Read after taking the lock: no other run of the conversation is active, its history is final.
      const history = body.conversationId === undefined ? [] : await conversationHistory(tenantId, conversationId);
      const at = now();
      const state = initialRunState({ runId, tenantId, agent, conversationId, history, body, requestHash, at: at.toISOString() });
      transition = {
        _id: transitionId(runId, 1),
        runId,
        tenantId,
        version: 1,
        at,
        cause: `create:${request.requestId}`,
        state,
        outbox: [{ kind: 'inbox', inboxKind: 'start', payload: {} }],
        published: false,
      };
      committed = await store.insertTransition(transition);
    } catch (error) {
      await releaseUncommittedLock(tenantId, conversationId, runId);
      throw error;
    }

    if (!committed) {
      // A concurrent request with the same Idempotency-Key committed first.
      const existing = await store.loadRun(runId);
      if (!existing) throw new Error(`run ${runId}: version 1 exists but cannot be read`);
      return answerExisting(existing, requestHash);
    }
    await store.writeReadModel(transition).catch((error: unknown) => {
      // Readers roll forward from the transitions; the orchestrator rewrites the read model on its next commit.
      logger.warn({ runId, err: error }, 'could not write the read model of a new run');
    });
    await publishStart(transition);
    logger.info({ runId, tenantId, conversationId, agentId: agent.agentId, agentVersion: agent.version }, 'run created');
    return { created: true, runId, status: 'queued', conversationId };
  };
}
export type CreateRun = ReturnType<typeof createRunCreator>;
