import {
  ApiError,
  workIds,
  hashJson,
  isTerminalStatus,
  lockIds,
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
  traceparentField,
} from '@abide/shared';
import type { GatewayBus, GatewayStore, LoadedRun } from './ports.ts';
import type { RateLimiter } from './rate-limiter.ts';

/** The outbox sweeper leaves a new run's `start` to its creator for this long. */
const outboxGraceMs = 5_000;
/**
 * How long the work item of a run whose `start` is out waits for its delete: the deletes of the
 * runs created meanwhile go out together (one `bulkWrite`), and none lands while the orchestrator
 * commits the run's first step. Far below `outboxGraceMs`: the sweeper never sees such an item.
 */
export const workItemDeleteDelayMs = 200;

/** A lock whose holder run does not exist is freed after this long (DESIGN §3). */
export const staleLockMs = 30_000;
/** Runs of a conversation looked at to find its latest ended run. */
const conversationLookback = 10;
const maxLockAttempts = 5;
/** `Retry-After` of a creation refused for the tenant's active-run limit: runs end when they end, so a fixed pause. */
const activeRunsRetryAfterSeconds = 5;

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

export const conversationLockId = lockIds.conversation;

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
  /** The tenant's active-run slot the run took (issue 8). */
  runSlot?: number | undefined;
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
    ...(fields.runSlot === undefined ? {} : { runSlot: fields.runSlot }),
    createdAt: fields.at,
    updatedAt: fields.at,
  };
}

/**
 * Creating a run (DESIGN §3, "a way that works"), shared by `POST /v1/runs` and the WebSocket
 * `run.create` frame. The conversation lock and the tenant's active-run slot (issue 8: a lock
 * like the conversation's) are inserted at once, then the outbox work item (`run_work`
 * `outbox:<runId>`), then version 1. Every crash window ends in a run that completes or in
 * nothing visible:
 * - before the locks: nothing was written;
 * - during or after them, before the transition: either lock or both name a run that does not
 *   exist, freed by the 30-s rule (or taken by a retry with the same Idempotency-Key, whose runId
 *   it names). A creation refused there (conversation busy, no free slot) gives the other back at
 *   once;
 * - after the work item, before the transition: the orchestrator's outbox sweeper finds no run
 *   and deletes the item a minute after it was due;
 * - after the transition: the run exists; the orchestrator's outbox sweeper publishes its
 *   `start` from the work item after 5 s, and a retry with the same key republishes it at once;
 * - after publishing `start`, before deleting the work item: the sweeper finds the run's outbox
 *   published (or republishes it: `Nats-Msg-Id` drops the repeat) and deletes the item.
 * A slot whose run ended is freed by the orchestrator's terminal outbox, or by the next creation
 * that finds it.
 */
export function createRunCreator(deps: {
  store: GatewayStore;
  bus: GatewayBus;
  logger: Logger;
  rateLimiter?: RateLimiter;
  /** Runs a tenant may have between creation and their end (suspended ones included); undefined = no limit. */
  maxActiveRuns?: number | undefined;
  now?: () => Date;
  random?: () => number;
}) {
  const { store, bus, logger, maxActiveRuns } = deps;
  const now = deps.now ?? (() => new Date());
  const random = deps.random ?? Math.random;

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
    if (await publishStart(transition)) deleteOutboxItem(runId);
  }

  /** Publishes a new run's `start`; false when it could not (the sweeper will, from the work item). */
  async function publishStart(transition: TransitionDocument): Promise<boolean> {
    try {
      await deps.bus.publishOutbox(transition);
      return true;
    } catch (error) {
      // The run is committed; the orchestrator's sweeper publishes the outbox from its work item after 5 s.
      logger.warn({ runId: transition.runId, err: error }, 'could not publish the start of a new run; the sweeper will');
      return false;
    }
  }

  /** Work items of started runs waiting for their delete (`workItemDeleteDelayMs`). */
  const startedRunIds: string[] = [];
  let deleteTimer: NodeJS.Timeout | undefined;

  /**
   * Deletes a started run's outbox work item, off the answer's path, `workItemDeleteDelayMs`
   * later together with the others due by then (issued in one turn: one `bulkWrite`). A crash (or
   * failure, or the process stopping) before it leaves the item to the sweeper, which finds the
   * run started and deletes it.
   */
  function deleteOutboxItem(runId: string): void {
    startedRunIds.push(runId);
    if (deleteTimer) return;
    deleteTimer = setTimeout(() => {
      deleteTimer = undefined;
      for (const started of startedRunIds.splice(0)) {
        void store.deleteWork(workIds.outbox(started)).catch((error: unknown) => {
          logger.warn({ runId: started, err: error }, 'could not delete the outbox work item of a new run; the sweeper will');
        });
      }
    }, workItemDeleteDelayMs);
    deleteTimer.unref();
  }

  /**
   * Takes lock `lockId` (a conversation's or an active-run slot) for `runId` (DESIGN §3): insert;
   * a lock whose holder run ended, or never came to exist within 30 s, is freed and inserted again.
   * Returns the live holder's run id when the lock is held (undefined: lost every insert race).
   */
  async function takeLock(lockId: string, runId: string, attempts: number): Promise<{ taken: true; freedEnded: string | undefined } | { taken: false; holder: string | undefined }> {
    /** The ended run whose lock this freed: the latest run of the conversation, when taken after it. */
    let freedEnded: string | undefined;
    for (let attempt = 0; attempt < attempts; attempt += 1) {
      if (await store.insertLock({ _id: lockId, runId, at: now() })) return { taken: true, freedEnded };
      const lock = await store.findLock(lockId);
      if (!lock) continue; // released meanwhile: insert again
      if (lock.runId === runId) return { taken: true, freedEnded: undefined }; // a retry of the same Idempotency-Key took it before dying
      // Its status only: the read model rolled forward by `_id` (exact), not the run's whole state.
      const holder = await store.loadRunSummary(lock.runId);
      const free = holder ? isTerminalStatus(holder.state.status) : now().getTime() - new Date(lock.at).getTime() >= staleLockMs;
      if (!free) return { taken: false, holder: lock.runId };
      // Its holder ended (the orchestrator releases it too) or never came to exist: free it, insert again.
      await store.deleteLock(lockId, lock.runId);
      freedEnded = holder ? lock.runId : undefined;
    }
    return { taken: false, holder: undefined };
  }

  /**
   * Takes the conversation's lock for `runId`, or throws 409 `conversation_busy`. Returns the
   * ended run whose lock it freed, if it did: the run before this one, whose terminal outbox may
   * not have recorded it as the conversation's head yet.
   */
  async function acquireLock(tenantId: string, conversationId: string, runId: string): Promise<string | undefined> {
    const outcome = await takeLock(conversationLockId(tenantId, conversationId), runId, maxLockAttempts);
    if (outcome.taken) return outcome.freedEnded;
    if (outcome.holder !== undefined) throw new ApiError('conversation_busy', `conversation ${conversationId} has an active run (${outcome.holder})`);
    throw new ApiError('conversation_busy', `conversation ${conversationId} is being taken by another request`);
  }

  /**
   * Per tenant, the slots this process last saw held by a live run (taken by its own creations,
   * or found held): a hint of where not to look first, never a decision. A hinted slot may have
   * been freed since (its run ended: the orchestrator deletes it), so it is still probed, after
   * the others. Bounded: the least recently used tenant is forgotten past `hintedTenantsLimit`.
   */
  const knownHeld = new Map<string, Set<number>>();
  const hintedTenantsLimit = 10_000;
  function heldHint(tenantId: string): Set<number> {
    let held = knownHeld.get(tenantId);
    if (held) knownHeld.delete(tenantId);
    held ??= new Set<number>();
    knownHeld.set(tenantId, held);
    if (knownHeld.size > hintedTenantsLimit) knownHeld.delete(knownHeld.keys().next().value!);
    return held;
  }

  /**
   * Takes one of the tenant's `maxActiveRuns` slots for `runId`, or throws 429 `rate_limited`.
   * Probes the slots not known held first, from a random one (so concurrent creations rarely
   * race for the same slot), then the known-held ones: a creation near the limit tries a free
   * slot first instead of paying a failed insert, a read of the lock and of its holder for each
   * held one it meets. The limit is still decided by the inserts (the server's), whatever the hint
   * says; a refusal still probes every slot, so one freed since is found.
   */
  async function acquireRunSlot(tenantId: string, runId: string): Promise<number | undefined> {
    if (maxActiveRuns === undefined) return undefined;
    const held = heldHint(tenantId);
    const first = Math.floor(random() * maxActiveRuns);
    const rotation = Array.from({ length: maxActiveRuns }, (_, offset) => (first + offset) % maxActiveRuns);
    const order = [...rotation.filter((slot) => !held.has(slot)), ...rotation.filter((slot) => held.has(slot))];
    for (const slot of order) {
      const outcome = await takeLock(lockIds.runSlot(tenantId, slot), runId, 2);
      if (outcome.taken || outcome.holder !== undefined) held.add(slot);
      if (outcome.taken) return slot;
    }
    throw new ApiError('rate_limited', `the tenant has ${maxActiveRuns} active runs, its limit; retry when one ends`, {
      headers: { 'retry-after': String(activeRunsRetryAfterSeconds) },
    });
  }

  /** Gives a lock back when the run will not be committed (rather than hold it for 30 s). */
  async function releaseLock(lockId: string, runId: string): Promise<void> {
    await store.deleteLock(lockId, runId).catch((releaseError: unknown) => {
      logger.warn({ runId, lockId, err: releaseError }, 'could not release a lock; the 30-s rule will');
    });
  }

  /**
   * Whether the run is known not to exist. An insert that failed may have reached the store (a
   * lost reply); when the store cannot tell either, the answer is no, and the 30-s rule and the
   * run's own end release its locks.
   */
  async function runIsAbsent(runId: string): Promise<boolean> {
    try {
      return !(await store.loadRun(runId));
    } catch (error) {
      // Logged, not thrown: the caller rethrows the error that stopped the creation.
      logger.warn({ runId, err: error }, 'could not tell whether a failed creation committed; its locks wait for the 30-s rule');
      return false;
    }
  }

  /**
   * Gives back what a creation that will not commit took: the slot and the conversation lock, at
   * once. `absent`: the run is known not to exist (a run id of this request's own, no transition
   * insert sent); otherwise a read decides, as a retry with the same Idempotency-Key may have
   * committed the run that holds them.
   */
  async function giveBack(runId: string, tenantId: string, conversationId: string, taken: { lock: boolean; runSlot: number | undefined }, absent: boolean): Promise<void> {
    if (!absent && !(await runIsAbsent(runId))) return;
    if (taken.runSlot !== undefined) knownHeld.get(tenantId)?.delete(taken.runSlot);
    await Promise.all([
      taken.runSlot === undefined ? undefined : releaseLock(lockIds.runSlot(tenantId, taken.runSlot), runId),
      taken.lock ? releaseLock(conversationLockId(tenantId, conversationId), runId) : undefined,
    ]);
  }

  /**
   * The conversation so far: the messages of its latest ended run, read after taking its lock
   * (no other run of it is active). That run is the one whose lock this creation freed, if it
   * did, else the conversation's head (by `_id`); only a conversation older than heads, while the
   * orchestrator has not finished recording theirs, is looked up in `runs` (a scan on FerretDB).
   */
  async function conversationHistory(tenantId: string, conversationId: string, freedEnded: string | undefined): Promise<ModelMessage[]> {
    let latestEnded = freedEnded;
    if (latestEnded === undefined) {
      const head = await store.conversationHead(tenantId, conversationId);
      if (head === null) return [];
      latestEnded = head?.runId;
    }
    if (latestEnded === undefined) {
      const runs = await store.conversationRuns(tenantId, conversationId, conversationLookback);
      latestEnded = runs.find((run) => isTerminalStatus(run.state.status))?.state.runId;
      if (latestEnded === undefined) return [];
    }
    // Summaries carry no messages: the ended run's whole state is folded from its transitions.
    const ended = await store.loadRun(latestEnded);
    if (!ended) throw new Error(`run ${latestEnded}, the latest ended run of conversation ${conversationId}, cannot be loaded`);
    if (ended.state.tenantId !== tenantId || ended.state.conversationId !== conversationId) throw new Error(`run ${latestEnded} is not of conversation ${conversationId}`);
    return ended.state.messages;
  }

  return async function createRun(request: CreateRunRequest): Promise<CreateRunResult> {
    const { tenantId, body } = request;
    const requestHash = hashJson(body);
    // A run id of this request's own (no Idempotency-Key) is known to no other request.
    const ownRunId = request.idempotencyKey === undefined;
    const runId = ownRunId ? newId('run') : runIdFromIdempotencyKey(tenantId, request.idempotencyKey!);

    if (!ownRunId) {
      const existing = await store.loadRun(runId);
      if (existing) return answerExisting(existing, requestHash);
    }
    deps.rateLimiter?.take(tenantId);
    const conversationId = body.conversationId ?? newId('conv');

    // Everything the client sent was validated by the route (stored-json keys and depth included).
    // The agent, the conversation lock (then its history) and the active-run slot at once: the
    // agent's reads beside the locks' one `bulkWrite` (the same collection, issued in the same
    // turn), so the lookup adds no round trip. An unknown agent is refused after the locks were
    // taken and gives them back at once, like any refusal here. The work item after the locks,
    // not beside them: on FerretDB/SQLite two writes to different collections at once wait on
    // each other's lock (measured: slower than in series), and a refusal then has no item to give back.
    const taken: { lock: boolean; runSlot: number | undefined } = { lock: false, runSlot: undefined };
    const parts = await Promise.allSettled([
      store.findAgent(tenantId, body.agentId).then((found) => {
        if (!found) throw new ApiError('agent_not_found', `agent ${body.agentId} not found`);
        return found;
      }),
      acquireLock(tenantId, conversationId, runId).then((freedEnded) => {
        taken.lock = true;
        // Read after taking the lock: no other run of the conversation is active, its history is final.
        return body.conversationId === undefined ? [] : conversationHistory(tenantId, conversationId, freedEnded);
      }),
      acquireRunSlot(tenantId, runId).then((runSlot) => {
        taken.runSlot = runSlot;
      }),
    ]);
    // The first refusal in that order: an unknown agent before a busy conversation, as before.
    const refused = parts.find((part) => part.status === 'rejected');
    if (refused) {
      // Nothing else was written; with a run id of its own (no Idempotency-Key, so no retry
      // shares it) the run cannot exist, and what was taken is given back without a read.
      await giveBack(runId, tenantId, conversationId, taken, ownRunId);
      throw refused.reason;
    }
    const agent = (parts[0] as PromiseFulfilledResult<Agent>).value;
    const history = (parts[1] as PromiseFulfilledResult<ModelMessage[]>).value;
    const { runSlot } = taken;

    let committed: boolean;
    let transition: TransitionDocument;
    try {
      // The work item first: once version 1 exists, something is sure to publish its `start`.
      await store.insertWork({ _id: workIds.outbox(runId), kind: 'outbox', runId, tenantId, dueAt: new Date(now().getTime() + outboxGraceMs).toISOString() });
      const at = now();
      const state = initialRunState({ runId, tenantId, agent, conversationId, history, body, requestHash, at: at.toISOString(), runSlot });
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
        // The request's span (HTTP or WebSocket frame) starts the run's trace (issue 10).
        ...traceparentField(),
      };
      committed = await store.insertTransition(transition);
    } catch (error) {
      // Nothing committed (unless the insert's reply was lost): give the conversation and the slot
      // back rather than hold them for 30 s. The work item stays: an insert whose reply was lost
      // may still land, and its `start` needs the item; the sweeper deletes it if no run appears.
      if (await runIsAbsent(runId)) await giveBack(runId, tenantId, conversationId, taken, true);
      throw error;
    }

    if (!committed) {
      // A concurrent request with the same Idempotency-Key committed first.
      const existing = await store.loadRun(runId);
      if (!existing) throw new Error(`run ${runId}: version 1 exists but cannot be read`);
      // The run holds the slot its state names; ours (same runId) would wait for the run's end.
      if (runSlot !== undefined && existing.state.runSlot !== runSlot) {
          knownHeld.get(tenantId)?.delete(runSlot);
          await releaseLock(lockIds.runSlot(tenantId, runSlot), runId);
        }
      return answerExisting(existing, requestHash);
    }
    // Independent: the read model (for listings) and the start, in parallel. The work item is
    // deleted after both, not beside the read model: on FerretDB/SQLite two writes to different
    // collections at once wait on each other's lock (measured: slower than the same two in series).
    const readModel = store.writeReadModel(transition).catch((error: unknown) => {
      // Readers roll forward from the transitions; the orchestrator rewrites the read model on its next commit.
      logger.warn({ runId, err: error }, 'could not write the read model of a new run');
    });
    const [, started] = await Promise.all([readModel, publishStart(transition)]);
    if (started) deleteOutboxItem(runId);
    logger.info({ runId, tenantId, conversationId, agentId: agent.agentId, agentVersion: agent.version }, 'run created');
    return { created: true, runId, status: 'queued', conversationId };
  };
}
export type CreateRun = ReturnType<typeof createRunCreator>;
