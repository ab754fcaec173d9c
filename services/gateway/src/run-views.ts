import { isTerminalStatus, summarizeRunState, type LoadedSummary, type RunState, type RunStatus, type RunView } from '@abide/shared';
import type { LoadedRun } from './ports.ts';

export type PendingApprovalView = RunView['pendingApprovals'][number];

/** The pending approvals of a run, in the order the run lists them. */
export function pendingApprovalsOf(state: Pick<RunState, 'pendingApprovals' | 'toolCalls'>): PendingApprovalView[] {
  const views: PendingApprovalView[] = [];
  for (const toolCallId of state.pendingApprovals) {
    const call = state.toolCalls.find((candidate) => candidate.toolCallId === toolCallId);
    if (!call) continue;
    views.push({ toolCallId, toolName: call.toolName, args: call.args, ...(call.approvalExpiresAt ? { expiresAt: call.approvalExpiresAt } : {}) });
  }
  return views;
}

/** A loaded run as its summary (what the read model keeps). */
export const summaryOf = (run: LoadedRun): LoadedSummary => ({ ...run, state: summarizeRunState(run.state) });

/** What `GET /v1/runs/:runId` answers (DESIGN §7): all of it is in the summary. */
export function toRunView(run: LoadedSummary): RunView {
  const { state } = run;
  return {
    runId: state.runId,
    agentId: state.agentId,
    agentVersion: state.agentVersion,
    conversationId: state.conversationId,
    status: state.status,
    step: state.step,
    pendingApprovals: pendingApprovalsOf(state),
    output: state.output,
    error: state.error,
    usage: state.usage,
    metadata: state.metadata,
    lastSeq: run.lastSeq,
    version: run.version,
    createdAt: state.createdAt,
    updatedAt: state.updatedAt,
  };
}

export const isEnded = (run: { state: { status: RunStatus } }) => isTerminalStatus(run.state.status);
