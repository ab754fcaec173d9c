/**
 * Every subject, stream, consumer, bucket and store name of Abide (DESIGN §2).
 * No subject string is built anywhere else.
 */

/** Kinds of message a run's inbox accepts (`run.in.<runId>.<kind>`). */
export const runInboxKinds = ['start', 'llm_result', 'tool_result', 'cancel', 'timer'] as const;
export type RunInboxKind = (typeof runInboxKinds)[number];

export const streams = {
  runInbox: 'RUN_INBOX',
  approvals: 'APPROVALS',
  llmRequests: 'LLM_REQUESTS',
  toolRequests: 'TOOL_REQUESTS',
  runEvents: 'RUN_EVENTS',
  advisories: 'ADVISORIES',
} as const;
export type StreamName = (typeof streams)[keyof typeof streams];

export const consumers = {
  orchestrator: 'orchestrator',
  orchestratorApprovals: 'orchestrator-approvals',
  orchestratorAdvisories: 'orchestrator-advisories',
  llmWorker: 'llm-worker',
  toolWorker: 'tool-worker',
} as const;
export type ConsumerName = (typeof consumers)[keyof typeof consumers];

export const buckets = {
  approvalLedger: 'APPROVAL_LEDGER',
  toolResults: 'TOOL_RESULTS',
  llmResults: 'LLM_RESULTS',
  runControl: 'RUN_CONTROL',
  /** Single-use WebSocket tickets (`POST /v1/ws/tickets`), written and consumed by the gateway only. */
  wsTickets: 'WS_TICKETS',
  tenantLeases: 'TENANT_LEASES',
} as const;

/** What a per-tenant lease of `TENANT_LEASES` counts (issue 8): model calls, tool calls, SSE streams + WebSockets, event subscriptions. */
export const tenantLeaseKinds = ['llm', 'tool', 'connection', 'subscription'] as const;
export type TenantLeaseKind = (typeof tenantLeaseKinds)[number];

export const objectStores = {
  payloads: 'PAYLOADS',
} as const;

/**
 * The NATS users of `deploy/nats/auth.conf` that run Abide code, each with its own reply-inbox
 * prefix (nats.js `inboxPrefix`). Pull deliveries, PubAcks and JetStream API answers go to a
 * service's inboxes; the server lets each user subscribe only to its own prefix, so one service's
 * credentials cannot read another's deliveries (no user may subscribe to `_INBOX.>`).
 */
export const inboxPrefixes = {
  gateway: '_INBOX_gateway',
  orchestrator: '_INBOX_orchestrator',
  'llm-worker': '_INBOX_llm-worker',
  'tool-worker': '_INBOX_tool-worker',
  'approvals-publisher': '_INBOX_approvals-publisher',
} as const;
export type NatsServiceUser = keyof typeof inboxPrefixes;

/** Subject builders. A runId, tenantId and tool name are single subject tokens (validated by their schemas). */
export const subjects = {
  runInbox: (runId: string, kind: RunInboxKind) => `run.in.${runId}.${kind}`,
  runInboxAll: 'run.in.>',
  approvals: (tenantId: string, runId: string) => `approvals.${tenantId}.${runId}`,
  approvalsAll: 'approvals.>',
  llmRequest: (runId: string) => `llm.request.${runId}`,
  llmRequestsAll: 'llm.request.>',
  toolRequest: (toolName: string) => `tool.request.${toolName}`,
  toolRequestsAll: 'tool.request.>',
  runEvents: (runId: string) => `run.events.${runId}`,
  runEventsAll: 'run.events.>',
  maxDeliveriesAdvisoriesAll: '$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>',
  /** Core NATS request/reply (no stream): the gateway asks a tool-worker (queue group `tool-worker`) for an MCP server's `tools/list`. */
  mcpToolsList: 'mcp.tools.list',
} as const;

/** The inbox kind of a `run.in.<runId>.<kind>` subject, or undefined for any other subject. */
export function parseRunInboxSubject(subject: string): { runId: string; kind: RunInboxKind } | undefined {
  const parts = subject.split('.');
  if (parts.length !== 4 || parts[0] !== 'run' || parts[1] !== 'in') return undefined;
  const kind = parts[3] as RunInboxKind;
  if (!runInboxKinds.includes(kind)) return undefined;
  return { runId: parts[2]!, kind };
}

/** The tenant and run of an `approvals.<tenantId>.<runId>` subject, or undefined for any other subject. */
export function parseApprovalsSubject(subject: string): { tenantId: string; runId: string } | undefined {
  const parts = subject.split('.');
  if (parts.length !== 3 || parts[0] !== 'approvals') return undefined;
  return { tenantId: parts[1]!, runId: parts[2]! };
}

/** KV keys (only `[-/=._A-Za-z0-9]`). */
export const kvKeys = {
  approval: (runId: string, toolCallId: string) => `${runId}.${toolCallId}`,
  toolResult: (runId: string, toolCallId: string) => `${runId}.${toolCallId}`,
  toolStarted: (runId: string, toolCallId: string) => `${runId}.${toolCallId}.started`,
  llmResult: (runId: string, step: number) => `${runId}.${step}`,
  runControl: (runId: string) => runId,
  /** A ticket is stored under a hash of it (hex), never as itself. */
  wsTicket: (ticketHash: string) => ticketHash,
  /** Slot `slot` of a tenant's `kind` leases (a tenant id matches [A-Za-z0-9_-]). */
  tenantLease: (kind: TenantLeaseKind, tenantId: string, slot: number) => `${kind}.${tenantId}.${slot}`,
} as const;

/**
 * `_id`s of `conversation_locks` (DESIGN §3), which holds two kinds of lock with one protocol
 * (insert to take, the holder run's end or 30 s without a holder run to free): one per
 * conversation, and the per-tenant active-run slots (issue 8). A `/` never occurs in a tenant or
 * conversation id, so the two never collide.
 */
export const lockIds = {
  conversation: (tenantId: string, conversationId: string) => `${tenantId}:${conversationId}`,
  runSlot: (tenantId: string, slot: number) => `${tenantId}/active-run/${slot}`,
} as const;

/**
 * `_id`s of an agent's documents (DESIGN §3): `agents` holds the version in force,
 * `agent_versions` every version, immutable once inserted (the insert decides the version). A
 * transition that carries a run's whole state names its agent by the version's `_id`.
 */
export const agentIds = {
  document: (tenantId: string, agentId: string) => `${tenantId}:${agentId}`,
  version: (tenantId: string, agentId: string, version: number) => `${tenantId}:${agentId}:${version}`,
} as const;

/** MongoDB collection names (DESIGN §3). */
export const collections = {
  agents: 'agents',
  agentVersions: 'agent_versions',
  runs: 'runs',
  runTransitions: 'run_transitions',
  conversationLocks: 'conversation_locks',
  conversations: 'conversations',
  runMessages: 'run_messages',
  runWork: 'run_work',
  runDeadlines: 'run_deadlines',
  runRetention: 'run_retention',
  workTimeline: 'work_timeline',
  runsRunning: 'runs_running',
  runsSuspended: 'runs_suspended',
} as const;

/**
 * `_id`s of work items (docs/decisions.md, "one write per step"): the small lists of pending work
 * the sweepers read instead of scanning the growing collections, one collection per kind
 * (`run_work` for outboxes, `run_deadlines` for deadlines, `run_retention` for retention) so that
 * each sweep reads only its own. One item per run and kind.
 */
export const workIds = {
  /** A new run's `start` not yet known to be published (inserted by the gateway before version 1). */
  outbox: (runId: string) => `outbox:${runId}`,
  /** The run's `nextDeadlineAt` (in `run_deadlines`; written when a published transition sets it, deleted when it clears). */
  deadline: (runId: string) => `deadline:${runId}`,
  /** A finished run's history to prune once `RUN_RETENTION` has passed (written with its terminal transition's deadline item). */
  retention: (runId: string) => `retention:${runId}`,
} as const;
