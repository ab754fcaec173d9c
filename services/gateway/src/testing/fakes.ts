import { encodeJson, makeBusEvent, summarizeRunState, type Agent, type LoadedSummary, type ApprovalLedgerEntry, type BusEvent, type WsTicketEntry, type RunEventFields, type RunEventType, type TransitionDocument, type WorkItem } from '@abide/shared';
import type { ConversationLock, EventSource, GatewayBus, GatewayStore, LoadedRun, RunListQuery } from '../ports.ts';

/**
 * In-memory stand-ins for MongoDB and NATS with the semantics the gateway relies on: inserts
 * fail on an existing `_id`, reads roll forward, the ledger's create is first-wins, and the
 * event stream keeps per-subject order with stream sequences.
 */

const clone = <T>(value: T): T => structuredClone(value);

export function createMemoryStore() {
  const agents = new Map<string, Agent>();
  const agentVersions = new Map<string, Agent>();
  const conversationHeads = new Map<string, string | null>();
  const transitions = new Map<string, TransitionDocument>();
  const readModels = new Map<string, { version: number; lastSeq: number | null }>();
  const work = new Map<string, WorkItem>();
  const locks = new Map<string, ConversationLock>();
  let failNext: { method: string; error: Error } | undefined;

  function maybeFail(method: string): void {
    if (failNext?.method === method) {
      const { error } = failNext;
      failNext = undefined;
      throw error;
    }
  }

  function loaded(runId: string, fromVersion: number, lastSeq: number | null): LoadedRun | null {
    let latest = fromVersion > 0 ? transitions.get(`${runId}:${fromVersion}`) : undefined;
    for (let probe = fromVersion + 1; transitions.has(`${runId}:${probe}`); probe += 1) latest = transitions.get(`${runId}:${probe}`);
    return latest ? clone({ state: latest.state, version: latest.version, lastSeq, published: latest.published }) : null;
  }

  /** The read model's runs rolled forward, as summaries (what `runs` keeps). */
  function readModelRuns(): LoadedSummary[] {
    return [...readModels]
      .map(([runId, model]) => loaded(runId, model.version, model.lastSeq))
      .filter((run): run is LoadedRun => run !== null)
      .map((run) => ({ ...run, state: summarizeRunState(run.state) }));
  }

  const store: GatewayStore = {
    async findAgentVersion(tenantId, agentId, version) {
      const agent = agentVersions.get(`${tenantId}:${agentId}:${version}`);
      return agent ? clone(agent) : null;
    },
    async findAgent(tenantId, agentId) {
      let agent = agents.get(`${tenantId}:${agentId}`);
      for (let probe = (agent?.version ?? 0) + 1; agentVersions.has(`${tenantId}:${agentId}:${probe}`); probe += 1) {
        agent = agentVersions.get(`${tenantId}:${agentId}:${probe}`);
      }
      return agent ? clone(agent) : null;
    },
    async insertAgentVersion(agent) {
      const id = `${agent.tenantId}:${agent.agentId}:${agent.version}`;
      if (agentVersions.has(id)) return false;
      agentVersions.set(id, clone(agent));
      return true;
    },
    async writeAgent(agent) {
      const id = `${agent.tenantId}:${agent.agentId}`;
      if ((agents.get(id)?.version ?? 0) < agent.version) agents.set(id, clone(agent));
    },
    async loadRun(runId) {
      maybeFail('loadRun');
      const model = readModels.get(runId);
      return loaded(runId, model?.version ?? 0, model?.lastSeq ?? null);
    },
    async loadRunSummary(runId) {
      const run = await store.loadRun(runId);
      return run ? { ...run, state: summarizeRunState(run.state) } : null;
    },
    async loadTransition(runId, version) {
      const transition = transitions.get(`${runId}:${version}`);
      return transition ? clone(transition) : null;
    },
    async loadTransitionHeader(runId, version) {
      const transition = transitions.get(`${runId}:${version}`);
      if (!transition) return null;
      const { state } = clone(transition);
      return { runId: transition.runId, tenantId: transition.tenantId, version: transition.version, at: transition.at, cause: transition.cause, state: { status: state.status, step: state.step, awaiting: state.awaiting } };
    },
    async listRuns(query: RunListQuery) {
      const sorted = readModelRuns()
        .filter((run) => run.state.tenantId === query.tenantId)
        .filter((run) => query.conversationId === undefined || run.state.conversationId === query.conversationId)
        .filter((run) => query.status === undefined || run.state.status === query.status)
        .sort((a, b) => (a.state.createdAt === b.state.createdAt ? (a.state.runId < b.state.runId ? 1 : -1) : a.state.createdAt < b.state.createdAt ? 1 : -1))
        .filter(
          (run) =>
            !query.after ||
            run.state.createdAt < query.after.createdAt ||
            (run.state.createdAt === query.after.createdAt && run.state.runId < query.after.runId),
        );
      const page = sorted.slice(0, query.limit);
      const last = page.at(-1);
      return { runs: page, last: last ? { createdAt: last.state.createdAt, runId: last.state.runId } : null, hasMore: sorted.length > query.limit };
    },
    async listSuspendedRuns(query) {
      const page = await store.listRuns({ ...query, status: 'suspended' });
      return { ...page, runs: page.runs.map(({ state }) => ({ runId: state.runId, createdAt: state.createdAt, pendingApprovals: state.pendingApprovals, toolCalls: state.toolCalls })) };
    },
    async conversationHead(tenantId, conversationId) {
      // A head a test recorded (as a terminal outbox would), else "heads not complete": the query.
      const head = conversationHeads.get(`${tenantId}:${conversationId}`);
      return head === undefined ? undefined : head === null ? null : { runId: head };
    },
    async conversationRuns(tenantId, conversationId, limit) {
      return (await store.listRuns({ tenantId, conversationId, limit })).runs;
    },
    async insertTransition(transition) {
      maybeFail('insertTransition');
      if (transitions.has(transition._id)) return false;
      transitions.set(transition._id, clone(transition));
      return true;
    },
    async writeReadModel(transition) {
      const current = readModels.get(transition.runId);
      if (!current || current.version < transition.version) readModels.set(transition.runId, { version: transition.version, lastSeq: current?.lastSeq ?? null });
    },
    async insertWork(item) {
      if (!work.has(item._id)) work.set(item._id, clone(item));
    },
    async deleteWork(id) {
      work.delete(id);
    },
    async insertLock(lock) {
      if (locks.has(lock._id)) return false;
      locks.set(lock._id, clone(lock));
      return true;
    },
    async findLock(lockId) {
      const lock = locks.get(lockId);
      return lock ? clone(lock) : null;
    },
    async deleteLock(lockId, runId) {
      if (locks.get(lockId)?.runId === runId) locks.delete(lockId);
    },
  };

  return {
    store,
    agents,
    agentVersions,
    /** Conversation heads by `<tenantId>:<conversationId>`: a run id, or null for "complete, none". */
    conversationHeads,
    transitions,
    readModels,
    locks,
    /** `run_work` items by `_id`. */
    work,
    /** Makes the next call of `method` throw `error`. */
    failNext(method: string, error: Error) {
      failNext = { method, error };
    },
    /** Commits a transition as the orchestrator would (state changed by `change`), optionally without updating the read model. */
    advance(runId: string, change: (state: TransitionDocument['state']) => void, options: { readModel?: boolean; published?: boolean } = {}) {
      let latest: TransitionDocument | undefined;
      for (let probe = 1; transitions.has(`${runId}:${probe}`); probe += 1) latest = transitions.get(`${runId}:${probe}`);
      if (!latest) throw new Error(`no run ${runId}`);
      const state = clone(latest.state);
      change(state);
      const version = latest.version + 1;
      const transition: TransitionDocument = { ...clone(latest), _id: `${runId}:${version}`, version, state, outbox: [], published: options.published ?? true };
      transitions.set(transition._id, transition);
      if (options.readModel ?? true) readModels.set(runId, { version, lastSeq: readModels.get(runId)?.lastSeq ?? null });
      return transition;
    },
  };
}
export type MemoryStore = ReturnType<typeof createMemoryStore>;

export function createFakeBus() {
  const published: { subject: string; message: unknown; msgId: string }[] = [];
  const outboxes: TransitionDocument[] = [];
  const ledger = new Map<string, ApprovalLedgerEntry>();
  const tickets = new Map<string, WsTicketEntry>();
  let failPublishes = 0;
  /** Runs just before a ledger create (to simulate a concurrent decision winning the race). */
  let beforeCreate: ((key: string) => void) | undefined;
  const bus: GatewayBus = {
    async publish(subject, message, msgId) {
      if (failPublishes > 0) {
        failPublishes -= 1;
        throw Object.assign(new Error('timeout'), { name: 'TimeoutError' });
      }
      published.push({ subject, message: clone(message), msgId });
    },
    async publishOutbox(transition) {
      if (failPublishes > 0) {
        failPublishes -= 1;
        throw Object.assign(new Error('timeout'), { name: 'TimeoutError' });
      }
      outboxes.push(clone(transition));
    },
    ledger: {
      async get(key) {
        const entry = ledger.get(key);
        return entry ? clone(entry) : null;
      },
      async create(key, entry) {
        beforeCreate?.(key);
        if (ledger.has(key)) return false;
        ledger.set(key, clone(entry));
        return true;
      },
    },
    tickets: {
      async create(key, entry) {
        if (tickets.has(key)) throw new Error(`ticket ${key} exists`);
        tickets.set(key, clone(entry));
      },
      async consume(key) {
        const entry = tickets.get(key);
        tickets.delete(key);
        return entry ?? null;
      },
    },
  };
  return {
    bus,
    tickets,
    published,
    outboxes,
    ledger,
    failPublishes(count: number) {
      failPublishes = count;
    },
    onBeforeCreate(hook: ((key: string) => void) | undefined) {
      beforeCreate = hook;
    },
  };
}
export type FakeBus = ReturnType<typeof createFakeBus>;

/** `RUN_EVENTS` in memory: one sequence across runs, readers filtered by run, live until aborted. */
export function createMemoryEventSource() {
  const messages: { seq: number; runId: string; data: Uint8Array }[] = [];
  let nextSeq = 1;
  let firstSeq = 1;
  const waiters = new Set<() => void>();
  let openReaders = 0;
  let readsOpened = 0;
  /** Bumped by `breakReaders`: a reader opened before the bump fails (or ends) at its next step. */
  let generation = 0;
  let breakMode: 'throw' | 'end' = 'throw';
  /** While true, a new reader fails as it opens (no node answers). */
  let refusing = false;

  function wake(): void {
    for (const waiter of [...waiters]) waiter();
  }

  const source: EventSource = {
    async firstSequence() {
      return messages.length === 0 ? 0 : firstSeq;
    },
    async lastSequenceOf(runId) {
      return messages.filter((message) => message.runId === runId).at(-1)?.seq ?? null;
    },
    async *read(runId, { after, signal, onLive }) {
      readsOpened += 1;
      if (refusing) throw new Error('no responders (fake)');
      openReaders += 1;
      const born = generation;
      try {
        onLive?.();
        let position = after ?? 0;
        while (!signal.aborted) {
          if (generation !== born) {
            if (breakMode === 'end') return;
            throw new Error('consumer lost (fake)');
          }
          const next = messages.find((message) => message.runId === runId && message.seq > position);
          if (next) {
            position = next.seq;
            yield { seq: next.seq, data: next.data };
            continue;
          }
          await new Promise<void>((resolve) => {
            const done = () => {
              waiters.delete(done);
              signal.removeEventListener('abort', done);
              resolve();
            };
            waiters.add(done);
            signal.addEventListener('abort', done, { once: true });
          });
        }
      } finally {
        openReaders -= 1;
      }
    },
  };

  return {
    source,
    get openReaders() {
      return openReaders;
    },
    /** Readers opened so far (resumes included). */
    get readsOpened() {
      return readsOpened;
    },
    /** Every open reader fails (`throw`) or ends without error (`end`), as when its node dies. */
    breakReaders(mode: 'throw' | 'end'): void {
      breakMode = mode;
      generation += 1;
      wake();
    },
    /** New readers fail as they open while `on` (every node down). */
    refuseReaders(on: boolean): void {
      refusing = on;
    },
    /** Appends raw data on `run.events.<runId>`; returns its seq. */
    appendRaw(runId: string, data: Uint8Array): number {
      const seq = nextSeq;
      nextSeq += 1;
      messages.push({ seq, runId, data });
      wake();
      return seq;
    },
    append(event: BusEvent): number {
      return this.appendRaw(event.runId, encodeJson(event));
    },
    /** Appends a well-formed event with the eventId `<runId>:<n>`. */
    emit<Type extends RunEventType>(runId: string, tenantId: string, eventId: string, type: Type, payload: RunEventFields<Type>): number {
      return this.append(makeBusEvent(type, { eventId, runId, tenantId }, payload));
    },
    /** Drops every message before `seq` (retention). */
    expireBefore(seq: number): void {
      while (messages.length > 0 && messages[0]!.seq < seq) messages.shift();
      firstSeq = seq;
    },
  };
}
export type MemoryEventSource = ReturnType<typeof createMemoryEventSource>;
