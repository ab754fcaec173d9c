import { isTerminalStatus, type RunState, type RunView } from '@abide/shared';
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

/** What `GET /v1/runs/:runId` answers (DESIGN §7). */
export function toRunView(run: LoadedRun): RunView {
  const { state } = run;
  return {
    runId: state.runId,
    agentId: state.agentId,
    agentVersion: state.agentSnapshot.version,
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

export const isEnded = (run: LoadedRun) => isTerminalStatus(run.state.status);
