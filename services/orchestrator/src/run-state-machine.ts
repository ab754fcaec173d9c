import {
  defaultTimeouts,
  eventEntry,
  isTerminalStatus,
  orderOutbox,
  toolCallIdFor,
  type ApprovalLedgerEntry,
  type AssistantMessage,
  type ErrorInfo,
  type LlmResultPayload,
  type OutboxEntry,
  type RunErrorCode,
  type RunState,
  type ToolCallRecord,
  type ToolDefinition,
  type ToolOutcome,
  type ToolResultOutput,
  type ToolResultPayload,
  type Usage,
} from '@abide/shared';

/**
 * The run state machine (DESIGN §4) as a pure function: `(state, input) → (state, outbox)`.
 * No I/O, no clock (the time comes in the context), no randomness: replaying the same input on
 * the same state gives the same transition, which is what makes redelivery and re-application
 * after a lost commit race safe. An input that does not fit the state (stale, duplicate, late)
 * is `ignored` with a reason; the caller acks it.
 */

/** What a run reacts to. Inbox messages arrive on `run.in.<runId>.<kind>`; decisions come from the approval ledger. */
export type RunInput =
  | { type: 'start' }
  | { type: 'llm_result'; payload: LlmResultPayload }
  | { type: 'tool_result'; payload: ToolResultPayload }
  | { type: 'cancel'; payload: { reason?: string | undefined } }
  | { type: 'approval_decision'; toolCallId: string; decision: ApprovalLedgerEntry }
  /** Deadlines due at `context.now`; approvals that expired arrive as `approval_decision`s with source `timeout` first. */
  | { type: 'deadline' }
  /** A message of the run exhausted its deliveries (a max-deliveries advisory). */
  | { type: 'fail'; error: ErrorInfo };

export type TransitionContext = { now: Date };

export type TransitionResult =
  | { kind: 'ignored'; reason: string }
  | { kind: 'changed'; state: RunState; outbox: OutboxEntry[] };

const ignored = (reason: string): TransitionResult => ({ kind: 'ignored', reason });

export function transition(state: RunState, input: RunInput, context: TransitionContext): TransitionResult {
  if (isTerminalStatus(state.status)) return ignored(`run is ${state.status}`);
  switch (input.type) {
    case 'start':
      return onStart(state, context);
    case 'llm_result':
      return onLlmResult(state, input.payload, context);
    case 'tool_result':
      return onToolResult(state, input.payload, context);
    case 'cancel':
      return onCancel(state, input.payload.reason, context);
    case 'approval_decision':
      return onApprovalDecision(state, input.toolCallId, input.decision, context);
    case 'deadline':
      return onDeadline(state, context);
    case 'fail': {
      const draft = draftOf(state, context);
      closeOpenCalls(draft, []);
      fail(draft, input.error);
      return done(draft);
    }
  }
}

/** A mutable draft of the next state, with its outbox. */
type Draft = { state: RunState; outbox: OutboxEntry[] };

/**
 * The next state starts as a copy of `state` that shares what no transition changes in place, so
 * a step costs what it changes, not a copy of the whole run (the conversation grows with every
 * step; copying it whole made each step's CPU grow with the run, like `applyDelta`'s fold does
 * not). Copied: the arrays the transitions push to or set an element of (`messages`,
 * `pendingApprovals`, `llmAttempts`) and each tool call record (they set its fields). Shared:
 * everything else, which they only ever replace (a message, once appended, is never edited; the
 * agent version is immutable; `awaiting`, `usage`, an outcome, args are assigned anew).
 */
function draftOf(state: RunState, context: TransitionContext): Draft {
  return {
    state: {
      ...state,
      updatedAt: context.now.toISOString(),
      messages: [...state.messages],
      toolCalls: state.toolCalls.map((call) => ({ ...call })),
      pendingApprovals: [...state.pendingApprovals],
      llmAttempts: [...state.llmAttempts],
    },
    outbox: [],
  };
}

function done(draft: Draft): TransitionResult {
  return { kind: 'changed', state: draft.state, outbox: orderOutbox(draft.outbox) };
}

function plus(now: Date, ms: number): string {
  return new Date(now.getTime() + ms).toISOString();
}

function llmStepTimeout(state: RunState): number {
  return state.agentSnapshot.limits.llmStepTimeoutMs ?? defaultTimeouts.llmStepMs;
}

/** How long a call of `tool` may run before the run's deadline for it (a tool the agent lacks never runs: the default). */
function toolCallTimeout(tool: ToolDefinition | undefined): number {
  return tool?.timeoutMs ?? defaultTimeouts.functionToolMs;
}

function approvalTimeout(tool: ToolDefinition): number {
  return tool.approvalTimeoutMs ?? defaultTimeouts.approvalMs;
}

/**
 * The least time by which any deadline a transition of this run sets lies after that
 * transition's `now`: every deadline is set as `now` plus a model step's timeout, a tool call's
 * or an approval's (then carried unchanged by later transitions), and the agent snapshot, which
 * holds those timeouts, never changes during a run. The run processor relies on it to cap the
 * due time of the run's deadline item (`deadlineItemDue`, docs/decisions.md). Keep it in step with
 * every place below that sets `nextDeadlineAt`.
 */
export function deadlineHorizonMs(state: RunState): number {
  let horizon = Math.min(llmStepTimeout(state), toolCallTimeout(undefined));
  for (const tool of state.agentSnapshot.tools) {
    horizon = Math.min(horizon, toolCallTimeout(tool));
    if (tool.needsApproval) horizon = Math.min(horizon, approvalTimeout(tool));
  }
  return horizon;
}

function toolOf(state: RunState, name: string): ToolDefinition | undefined {
  return state.agentSnapshot.tools.find((tool) => tool.name === name);
}

function addUsage(total: Usage, more: Usage): Usage {
  return {
    inputTokens: total.inputTokens + more.inputTokens,
    outputTokens: total.outputTokens + more.outputTokens,
    totalTokens: total.totalTokens + more.totalTokens,
  };
}

/* ---------- start ---------- */

function onStart(state: RunState, context: TransitionContext): TransitionResult {
  if (state.status !== 'queued') return ignored('run already started');
  const draft = draftOf(state, context);
  Object.assign(draft.state, { status: 'running', step: 0, awaiting: { kind: 'llm', step: 0 } });
  draft.state.nextDeadlineAt = plus(context.now, llmStepTimeout(state));
  draft.outbox.push(
    eventEntry('run.started', { agentId: state.agentId, agentVersion: state.agentSnapshot.version, conversationId: state.conversationId }),
    { kind: 'llm_request', step: 0 },
  );
  return done(draft);
}

/* ---------- model results ---------- */

function onLlmResult(state: RunState, result: LlmResultPayload, context: TransitionContext): TransitionResult {
  if (state.status !== 'running' || state.awaiting.kind !== 'llm' || state.awaiting.step !== result.step) {
    return ignored(`not awaiting the model for step ${result.step}`);
  }
  const draft = draftOf(state, context);
  if (!result.ok) {
    fail(draft, result.error);
    return done(draft);
  }
  const run = draft.state;
  run.usage = addUsage(run.usage, result.usage);
  run.llmAttempts[result.step] = result.attempt;
  const calls = result.toolCalls;
  const assistant: AssistantMessage = {
    role: 'assistant',
    content: [
      ...(result.text ? [{ type: 'text' as const, text: result.text }] : []),
      ...calls.map((call) => ({ type: 'tool-call' as const, toolCallId: call.providerToolCallId, toolName: call.toolName, input: call.args })),
    ],
  };
  run.messages.push(assistant);
  draft.outbox.push(eventEntry('message.completed', { step: result.step, attempt: result.attempt, text: result.text }));

  if (calls.length === 0) {
    run.output = result.text;
    finish(draft, 'completed');
    draft.outbox.push(eventEntry('run.completed', { output: result.text, usage: run.usage }));
    return done(draft);
  }
  if (result.step + 1 >= run.agentSnapshot.maxSteps) {
    // The model wants tools, but their results could never be shown to it: stop here.
    closeOpenCalls(draft, calls.map((call, index) => ({ ...call, toolCallId: toolCallIdFor(result.step, index) })));
    fail(draft, { code: 'max_steps_exceeded', message: `the run reached its limit of ${run.agentSnapshot.maxSteps} model steps` });
    return done(draft);
  }

  const deadlines: number[] = [];
  calls.forEach((call, index) => {
    const toolCallId = toolCallIdFor(result.step, index);
    const tool = toolOf(run, call.toolName);
    const record: ToolCallRecord = {
      toolCallId,
      providerToolCallId: call.providerToolCallId,
      step: result.step,
      toolName: call.toolName,
      args: call.args,
      needsApproval: tool?.needsApproval ?? false,
      state: 'requested',
    };
    draft.outbox.push(eventEntry('tool.call', { step: result.step, toolCallId, toolName: call.toolName, args: call.args, needsApproval: record.needsApproval }));
    if (!tool) {
      // The model asked for a tool the agent does not have: it gets an error result, the run goes on.
      record.state = 'completed';
      record.outcome = { kind: 'error', error: { code: 'tool_not_found' satisfies RunErrorCode, message: `the agent has no tool named "${call.toolName}"` } };
      draft.outbox.push(toolResultEvent(record));
    } else if (tool.needsApproval) {
      const timeout = approvalTimeout(tool);
      record.state = 'awaiting_approval';
      record.approvalExpiresAt = plus(context.now, timeout);
      run.pendingApprovals.push(toolCallId);
      deadlines.push(context.now.getTime() + timeout);
      draft.outbox.push(eventEntry('approval.requested', { toolCallId, toolName: call.toolName, args: call.args, expiresAt: record.approvalExpiresAt }));
    } else {
      deadlines.push(context.now.getTime() + toolCallTimeout(tool));
      draft.outbox.push({ kind: 'tool_request', toolCallId });
    }
    run.toolCalls.push(record);
  });

  if (run.pendingApprovals.length > 0) {
    run.status = 'suspended';
    run.awaiting = { kind: 'approvals', step: result.step };
    draft.outbox.push(eventEntry('run.suspended', { pendingApprovals: [...run.pendingApprovals] }));
  } else {
    run.awaiting = { kind: 'tools', step: result.step };
  }
  run.nextDeadlineAt = deadlines.length ? new Date(Math.min(...deadlines)).toISOString() : null;
  advanceIfStepComplete(draft, context);
  return done(draft);
}

/* ---------- tool results ---------- */

function onToolResult(state: RunState, result: ToolResultPayload, context: TransitionContext): TransitionResult {
  const call = state.toolCalls.find((candidate) => candidate.toolCallId === result.toolCallId);
  if (!call) return ignored(`no tool call ${result.toolCallId}`);
  if (call.state !== 'requested' || call.outcome) return ignored(`tool call ${result.toolCallId} is not awaiting a result`);
  const draft = draftOf(state, context);
  const record = draft.state.toolCalls.find((candidate) => candidate.toolCallId === result.toolCallId)!;
  record.state = 'completed';
  record.outcome = result.outcome;
  draft.outbox.push(toolResultEvent(record));
  advanceIfStepComplete(draft, context);
  return done(draft);
}

/* ---------- approvals ---------- */

function onApprovalDecision(state: RunState, toolCallId: string, decision: ApprovalLedgerEntry, context: TransitionContext): TransitionResult {
  const call = state.toolCalls.find((candidate) => candidate.toolCallId === toolCallId);
  if (!call) return ignored(`no tool call ${toolCallId}`);
  if (call.state !== 'awaiting_approval' || !state.pendingApprovals.includes(toolCallId)) return ignored(`tool call ${toolCallId} is not awaiting approval`);
  const draft = draftOf(state, context);
  const run = draft.state;
  const record = run.toolCalls.find((candidate) => candidate.toolCallId === toolCallId)!;
  record.approval = {
    decisionId: decision.decisionId,
    approved: decision.approved,
    argsHash: decision.argsHash,
    source: decision.source,
    at: decision.at,
    ...(decision.reason === undefined ? {} : { reason: decision.reason }),
    ...(decision.decidedBy === undefined ? {} : { decidedBy: decision.decidedBy }),
    ...(decision.args === undefined ? {} : { args: decision.args }),
  };
  run.pendingApprovals = run.pendingApprovals.filter((id) => id !== toolCallId);
  draft.outbox.push(
    eventEntry('approval.resolved', {
      toolCallId,
      approved: decision.approved,
      source: decision.source,
      ...(decision.reason === undefined ? {} : { reason: decision.reason }),
      ...(decision.decidedBy === undefined ? {} : { decidedBy: decision.decidedBy }),
    }),
  );
  const tool = toolOf(run, record.toolName);
  if (decision.approved) {
    record.state = 'requested';
    draft.outbox.push({ kind: 'tool_request', toolCallId });
  } else if (decision.source === 'timeout' && tool?.onApprovalTimeout === 'fail') {
    record.state = 'completed';
    record.outcome = { kind: 'error', error: { code: 'approval_timeout', message: 'the approval expired' } };
    closeOpenCalls(draft, []);
    fail(draft, { code: 'approval_timeout', message: `the approval of ${toolCallId} (${record.toolName}) expired` });
    return done(draft);
  } else {
    record.state = 'completed';
    record.outcome = { kind: 'denied', ...(decision.reason === undefined ? {} : { reason: decision.reason }) };
    draft.outbox.push(toolResultEvent(record));
  }
  if (run.pendingApprovals.length === 0) {
    run.status = 'running';
    run.awaiting = { kind: 'tools', step: run.step };
    draft.outbox.push(eventEntry('run.resumed', {}));
  }
  run.nextDeadlineAt = nextDeadline(run, context);
  advanceIfStepComplete(draft, context);
  return done(draft);
}

/* ---------- cancel ---------- */

function onCancel(state: RunState, reason: string | undefined, context: TransitionContext): TransitionResult {
  const draft = draftOf(state, context);
  draft.state.cancelReason = reason ?? null;
  closeOpenCalls(draft, []);
  finish(draft, 'cancelled');
  draft.outbox.push(eventEntry('run.cancelled', reason === undefined ? {} : { reason }), { kind: 'run_control', ...(reason === undefined ? {} : { reason }) });
  return done(draft);
}

/* ---------- deadlines ---------- */

/**
 * A backstop for work that never answered: the model step or a tool call whose deadline (its
 * timeout plus the workers' own retries) has passed fails the run. Expired approvals are
 * decided through the ledger before this input is applied.
 */
function onDeadline(state: RunState, context: TransitionContext): TransitionResult {
  if (!state.nextDeadlineAt || Date.parse(state.nextDeadlineAt) > context.now.getTime()) return ignored('no deadline due');
  if (state.status === 'suspended' && state.awaiting.kind === 'approvals') {
    const draft = draftOf(state, context);
    draft.state.nextDeadlineAt = nextDeadline(draft.state, context);
    if (draft.state.nextDeadlineAt === state.nextDeadlineAt) return ignored('approval deadlines are decided through the ledger');
    return done(draft);
  }
  const draft = draftOf(state, context);
  if (state.awaiting.kind === 'llm') {
    fail(draft, { code: 'model_timeout', message: `model step ${state.step} did not finish before its deadline` });
  } else {
    closeOpenCalls(draft, []);
    fail(draft, { code: 'tool_timeout', message: `a tool call of step ${state.step} did not finish before its deadline` });
  }
  return done(draft);
}

/** The earliest deadline of what the run still waits for (approvals, tool calls) or null. */
function nextDeadline(run: RunState, context: TransitionContext): string | null {
  const times: number[] = [];
  for (const call of run.toolCalls) {
    if (call.step !== run.step) continue;
    if (call.state === 'awaiting_approval' && call.approvalExpiresAt) times.push(Date.parse(call.approvalExpiresAt));
    if (call.state === 'requested') {
      times.push(context.now.getTime() + toolCallTimeout(toolOf(run, call.toolName)));
    }
  }
  return times.length ? new Date(Math.min(...times)).toISOString() : null;
}

/* ---------- shared steps ---------- */

/** When every call of the current step has an outcome: append the tool message and start the next model step. */
function advanceIfStepComplete(draft: Draft, context: TransitionContext): void {
  const run = draft.state;
  if (run.status !== 'running' || run.awaiting.kind !== 'tools') return;
  const calls = run.toolCalls.filter((call) => call.step === run.step);
  if (calls.some((call) => !call.outcome)) return;
  run.messages.push({
    role: 'tool',
    content: calls.map((call) => ({ type: 'tool-result' as const, toolCallId: call.providerToolCallId, toolName: call.toolName, output: modelOutputOf(call.outcome!) })),
  });
  run.step += 1;
  run.awaiting = { kind: 'llm', step: run.step };
  run.nextDeadlineAt = plus(context.now, llmStepTimeout(run));
  draft.outbox.push({ kind: 'llm_request', step: run.step });
}

/**
 * Gives every call of the current step that has no outcome a `cancelled` one and closes the
 * history with a tool message, so the conversation stays valid for the next run (DESIGN §4.7).
 * `unrecorded` are calls the model asked for that were never recorded.
 */
function closeOpenCalls(draft: Draft, unrecorded: { toolCallId: string; providerToolCallId: string; toolName: string }[]): void {
  const run = draft.state;
  const last = run.messages.at(-1);
  const openInHistory = last?.role === 'assistant' && Array.isArray(last.content) && last.content.some((part) => part.type === 'tool-call');
  const parts: { type: 'tool-result'; toolCallId: string; toolName: string; output: ToolResultOutput }[] = [];
  for (const call of run.toolCalls.filter((candidate) => candidate.step === run.step)) {
    if (!call.outcome) {
      call.outcome = { kind: 'cancelled' };
      call.state = 'completed';
    }
    parts.push({ type: 'tool-result', toolCallId: call.providerToolCallId, toolName: call.toolName, output: modelOutputOf(call.outcome) });
  }
  for (const call of unrecorded) {
    parts.push({ type: 'tool-result', toolCallId: call.providerToolCallId, toolName: call.toolName, output: modelOutputOf({ kind: 'cancelled' }) });
  }
  run.pendingApprovals = [];
  if (openInHistory && parts.length > 0) run.messages.push({ role: 'tool', content: parts });
}

function fail(draft: Draft, error: ErrorInfo): void {
  draft.state.error = error;
  finish(draft, 'failed');
  draft.outbox.push(eventEntry('run.failed', { error }));
}

function finish(draft: Draft, status: 'completed' | 'failed' | 'cancelled'): void {
  const run = draft.state;
  run.status = status;
  run.awaiting = { kind: null, step: run.step };
  run.nextDeadlineAt = null;
  run.pendingApprovals = [];
  draft.outbox.push({ kind: 'release_conversation_lock', conversationId: run.conversationId, ...(run.runSlot === undefined ? {} : { runSlot: run.runSlot }) });
}

function toolResultEvent(call: ToolCallRecord): OutboxEntry {
  const outcome = call.outcome!;
  if (outcome.kind === 'error') return eventEntry('tool.result', { toolCallId: call.toolCallId, toolName: call.toolName, error: outcome.error });
  return eventEntry('tool.result', { toolCallId: call.toolCallId, toolName: call.toolName, result: resultValueOf(outcome) });
}

function resultValueOf(outcome: ToolOutcome): unknown {
  switch (outcome.kind) {
    case 'success':
      return outcome.value ?? null;
    case 'denied':
      return { denied: true, ...(outcome.reason === undefined ? {} : { reason: outcome.reason }) };
    case 'cancelled':
      return { cancelled: true };
    case 'error':
      return { error: outcome.error };
  }
}

/** How the model sees a tool outcome (AI SDK tool-result `output`). */
export function modelOutputOf(outcome: ToolOutcome): ToolResultOutput {
  switch (outcome.kind) {
    case 'success':
      return { type: 'json', value: outcome.value ?? null };
    case 'error':
      return { type: 'error-text', value: `${outcome.error.code}: ${outcome.error.message}` };
    case 'denied':
      return { type: 'execution-denied', ...(outcome.reason === undefined ? {} : { reason: outcome.reason }) };
    case 'cancelled':
      return { type: 'json', value: { cancelled: true } };
  }
}
