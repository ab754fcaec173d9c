import type { Agent, ApprovalLedgerEntry, LoadedSummary, McpListReply, McpListRequest, RunState, RunStatus, TenantLeases, TransitionDocument, WorkItem, WsTicketEntry } from '@abide/shared';

/**
 * What the gateway needs from MongoDB and NATS, as small interfaces: `main.ts` wires the real
 * implementations (`mongo-store.ts`, `nats-bus.ts`, `nats-event-source.ts`), unit tests wire
 * in-memory fakes (`testing/fakes.ts`).
 */

/** A run's exact latest state (rolled forward past the read model). */
export type LoadedRun = {
  state: RunState;
  version: number;
  /** The read model's `lastSeq` (may lag). */
  lastSeq: number | null;
  /** Whether the latest transition's outbox is known published (the read model's `publishedVersion` reaches it; false while the read model lags a moment behind the publish). */
  published: boolean;
  /** The run ended and its history was pruned after `RUN_RETENTION` (the read model is all that is left). */
  pruned?: true;
};

/** What `GET /v1/runs/:runId/history` shows of a transition. */
export type TransitionHeader = Pick<TransitionDocument, 'runId' | 'tenantId' | 'version' | 'at' | 'cause'> & {
  state: Pick<TransitionDocument['state'], 'status' | 'step' | 'awaiting'>;
};

/** `conversation_locks`: one active run per conversation (DESIGN §3). */
export type ConversationLock = { _id: string; runId: string; at: Date };

/** A page position in the newest-first list of runs. */
export type RunListPosition = { createdAt: string; runId: string };

export type RunListQuery = {
  tenantId: string;
  conversationId?: string | undefined;
  status?: RunStatus | undefined;
  limit: number;
  /** Only runs strictly after this position (older). */
  after?: RunListPosition | undefined;
};

/** What the approvals inbox reads of a suspended run (no messages, no agent snapshot). */
export type SuspendedRunSummary = Pick<RunState, 'runId' | 'createdAt' | 'pendingApprovals' | 'toolCalls'>;

export type GatewayStore = {
  /** The agent in force: `agents` by `_id`, rolled forward through `agent_versions`. */
  findAgent(tenantId: string, agentId: string): Promise<Agent | null>;
  /** Version `version` of the tenant's agent (`agent_versions` by `_id`, through the agent cache), or null. */
  findAgentVersion(tenantId: string, agentId: string, version: number): Promise<Agent | null>;
  /** Inserts `agent_versions` `<tenantId>:<agentId>:<version>`; false if that version exists. */
  insertAgentVersion(agent: Agent): Promise<boolean>;
  /** Rewrites `agents` by `_id` (never moves it back to an older version when it can tell). */
  writeAgent(agent: Agent): Promise<void>;

  /** The run's latest transition, or null if it does not exist. */
  loadRun(runId: string): Promise<LoadedRun | null>;
  /**
   * The run's summary exactly as of now: the read model rolled forward by applying later deltas
   * to it (constant reads, however long the run); for reads that need no messages or finished
   * tool calls (`GET /v1/runs/:runId`).
   */
  loadRunSummary(runId: string): Promise<LoadedSummary | null>;
  /** One transition with its whole state, folded from its base (`<runId>:<base>` … `<runId>:<version>` by `_id`). */
  loadTransition(runId: string, version: number): Promise<TransitionDocument | null>;
  /** One transition's header by `_id`, without the run state's bulk (messages, tool calls): for the history. */
  loadTransitionHeader(runId: string, version: number): Promise<TransitionHeader | null>;
  /**
   * Runs from the read model, newest first, each rolled forward, as summaries (no messages or
   * finished tool calls: `loadRun` has those). `hasMore` says whether another page exists.
   */
  listRuns(query: RunListQuery): Promise<{ runs: LoadedSummary[]; last: RunListPosition | null; hasMore: boolean }>;
  /**
   * The tenant's suspended runs from the read model (newest first, not rolled forward: an inbox
   * may lag by a moment, decisions are checked against the exact state), only the fields the
   * approvals inbox shows.
   */
  listSuspendedRuns(query: { tenantId: string; limit: number; after?: RunListPosition | undefined }): Promise<{
    runs: SuspendedRunSummary[];
    last: RunListPosition | null;
    hasMore: boolean;
  }>;
  /**
   * The conversation's latest ended run by its head (`conversations`, by `_id`): null when it has
   * none, undefined when it has no head and the heads are not known complete (a conversation
   * older than heads: `conversationRuns` finds it).
   */
  conversationHead(tenantId: string, conversationId: string): Promise<{ runId: string } | null | undefined>;
  /** The newest runs of a conversation (read model order), rolled forward, as summaries: a query, scanned by FerretDB. */
  conversationRuns(tenantId: string, conversationId: string, limit: number): Promise<LoadedSummary[]>;
  /** Inserts a transition; false if that version exists. */
  insertTransition(transition: TransitionDocument): Promise<boolean>;
  writeReadModel(transition: TransitionDocument): Promise<void>;
  /** Inserts a `run_work` item unless its `_id` exists. */
  insertWork(item: WorkItem): Promise<void>;
  /** Deletes a `run_work` item by `_id`. */
  deleteWork(id: string): Promise<void>;

  insertLock(lock: ConversationLock): Promise<boolean>;
  findLock(lockId: string): Promise<ConversationLock | null>;
  /** Deletes the lock only if `runId` still holds it. */
  deleteLock(lockId: string, runId: string): Promise<void>;
};

/** KV `APPROVAL_LEDGER`: first decision wins (DESIGN §7). */
export type ApprovalLedger = {
  get(key: string): Promise<ApprovalLedgerEntry | null>;
  /** Atomic create; false if an entry exists already. */
  create(key: string, entry: ApprovalLedgerEntry): Promise<boolean>;
};

/** KV `WS_TICKETS`: single-use WebSocket tickets, keyed by a hash of the ticket. */
export type WsTicketStore = {
  /** Stores a new ticket (atomic create: a key that exists is an error). */
  create(key: string, entry: WsTicketEntry): Promise<void>;
  /** Reads and deletes the ticket in one compare-and-delete; null when missing, used or taken by a concurrent consumer. */
  consume(key: string): Promise<WsTicketEntry | null>;
};

export type GatewayBus = {
  /** Publishes JSON, waits for the PubAck; `msgId` dedupes inside the duplicate window. */
  publish(subject: string, message: unknown, msgId: string): Promise<void>;
  /** Publishes a committed transition's outbox (shared `publishOutbox`). */
  publishOutbox(transition: TransitionDocument): Promise<void>;
  ledger: ApprovalLedger;
  tickets: WsTicketStore;
  /**
   * Asks a tool-worker for an MCP server's `tools/list` (core NATS request/reply, issue 13);
   * throws a 503 `ApiError` when no worker answers. Absent: agents with MCP servers are refused (503).
   */
  listMcpTools?(request: McpListRequest): Promise<McpListReply>;
};

/** A raw message of `RUN_EVENTS`. */
export type StoredEvent = { seq: number; data: Uint8Array };

/** Reads `RUN_EVENTS` (DESIGN §6). */
export type EventSource = {
  /** The stream's first sequence (0 when empty). */
  firstSequence(): Promise<number>;
  /** The sequence of the last message on `run.events.<runId>`, or null if there is none. */
  lastSequenceOf(runId: string): Promise<number | null>;
  /**
   * The run's messages from `after + 1` (or from its first with no `after`), in order, then live,
   * until `signal` aborts or the caller stops iterating; the reader is removed afterwards.
   * A reader that loses its server-side state (a node failure, a stall) throws or ends; the
   * relay then opens a new one after the last message it read. `onLive` is called whenever the
   * reader shows it is working (open, a message, a heartbeat).
   */
  read(runId: string, options: { after: number | undefined; signal: AbortSignal; onLive?: () => void }): AsyncIterable<StoredEvent>;
};

/** Everything the routes reach outside the process. */
export type Backend = {
  store: GatewayStore;
  bus: GatewayBus;
  events: EventSource;
  /** Per-tenant leases on open SSE streams + WebSockets and on event subscriptions (issue 8); absent = unlimited (unit tests). */
  capacity?: { connections: TenantLeases; subscriptions: TenantLeases } | undefined;
};
