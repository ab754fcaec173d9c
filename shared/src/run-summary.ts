import type { RunDelta } from './run-delta.ts';
import type { RunState, ToolCallRecord } from './run-state.ts';

/** The fields of a run's state that grow with the run (or are its immutable agent): never in the read model. */
const bulkFields = ['agentSnapshot', 'messages', 'toolCalls', 'llmAttempts'] as const;

type SummaryField =
  | 'schemaVersion' | 'runId' | 'tenantId' | 'agentId' | 'conversationId' | 'status' | 'step' | 'awaiting' | 'historyLength' | 'pendingApprovals'
  | 'usage' | 'output' | 'error' | 'cancelReason' | 'requestHash' | 'metadata' | 'nextDeadlineAt' | 'runSlot' | 'createdAt' | 'updatedAt';

/**
 * What the read model (`runs`) keeps of a run's state (issue 9, item 2): every field but the
 * bulk that grows with the run (messages, finished tool calls, model attempts) and the agent
 * snapshot (`agentVersion` names it), so its size does not grow with the run. `toolCalls` holds
 * only the records of `pendingApprovals` (the approvals inbox shows them). Whatever needs more
 * is rebuilt from `run_transitions` (a cold load).
 */
export type RunSummary = Pick<RunState, SummaryField> & {
  agentVersion: number;
  /** The records of the calls in `pendingApprovals`, in that order. */
  toolCalls: ToolCallRecord[];
};

function withoutBulk(fields: Record<string, unknown>): Record<string, unknown> {
  const rest = { ...fields };
  for (const field of bulkFields) delete rest[field];
  return rest;
}

/** The records of `pendingApprovals`, or null if one of them is not among `records`. */
function pendingRecords(pendingApprovals: readonly string[], find: (toolCallId: string) => ToolCallRecord | undefined): ToolCallRecord[] | null {
  const records: ToolCallRecord[] = [];
  for (const toolCallId of pendingApprovals) {
    const record = find(toolCallId);
    if (!record) return null;
    records.push(record);
  }
  return records;
}

/** The summary of a whole state. */
export function summarizeRunState(state: RunState): RunSummary {
  const toolCalls = pendingRecords(state.pendingApprovals, (toolCallId) => state.toolCalls.find((call) => call.toolCallId === toolCallId)) ?? [];
  return { ...(withoutBulk(state) as Pick<RunState, SummaryField>), agentVersion: state.agentSnapshot.version, toolCalls };
}

/**
 * A summary rolled forward by one transition's delta, without the whole state: header and other
 * fields from the delta, the pending calls' records from the delta or the summary. Null when a
 * pending call's record is in neither (then the caller folds the whole state instead).
 */
export function applyDeltaToSummary(summary: RunSummary, delta: RunDelta): RunSummary | null {
  const next: Record<string, unknown> = { ...summary };
  for (const field of delta.unset ?? []) delete next[field];
  Object.assign(next, withoutBulk(delta.set));
  if (delta.set.agentSnapshot) next.agentVersion = delta.set.agentSnapshot.version;
  const pendingApprovals = next.pendingApprovals as string[];
  const changed = new Map((delta.toolCalls?.changed ?? []).map(({ record }) => [record.toolCallId, record]));
  const toolCalls = pendingRecords(
    pendingApprovals,
    (toolCallId) => changed.get(toolCallId) ?? delta.set.toolCalls?.find((call) => call.toolCallId === toolCallId) ?? summary.toolCalls.find((call) => call.toolCallId === toolCallId),
  );
  if (!toolCalls) return null;
  return { ...(next as Omit<RunSummary, 'toolCalls'>), toolCalls } as RunSummary;
}
