import {
  ApiError,
  hashJson,
  kvKeys,
  makeEnvelope,
  newId,
  subjects,
  type ApprovalLedgerEntry,
  type ApprovalPayload,
  type Logger,
} from '@abide/shared';
import type { Caller } from './auth.ts';
import type { GatewayBus, GatewayStore, LoadedRun, RunListPosition } from './ports.ts';
import { findTenantRun } from './run-access.ts';
import { pendingApprovalsOf, type PendingApprovalView } from './run-views.ts';
import type { ArgsValidation } from './args-validation.ts';
import { ToolSchemaError } from './tool-args-validator.ts';

export type ApprovalDecision = {
  runId: string;
  toolCallId: string;
  approved: boolean;
  reason?: string | undefined;
  /** Approve with edited arguments; ignored on a denial. */
  args?: Record<string, unknown> | undefined;
  /** The road the decision came by, recorded in the ledger: `user` (HTTP, WebSocket) or `chat` (a `useChat` POST). @default 'user' */
  source?: 'user' | 'chat' | undefined;
};

/** `accepted` (202: recorded now) or `already_decided` (200: the same decision was recorded before). */
export type ApprovalOutcome = 'accepted' | 'already_decided';

export type PendingApprovalItem = PendingApprovalView & { runId: string };

/**
 * Decisions on pending tool calls (DESIGN §7, "Approvals"), in exactly this order:
 * 404 `approval_not_found` (no such call of the caller's run) → the ledger (same decision →
 * `already_decided`, republished; another → 409 `approval_conflict`) → 409 `run_not_suspended`
 * → 400 `invalid_args` → ledger create (a concurrent winner is answered from the ledger) →
 * publish → `accepted`.
 */
export function createApprovalService(deps: { store: GatewayStore; bus: GatewayBus; toolArgs: Pick<ArgsValidation, 'validate'>; logger: Logger; now?: () => Date }) {
  const { store, bus, toolArgs, logger } = deps;
  const now = deps.now ?? (() => new Date());

  /** Publishes the ledger's decision; its `decisionId` is the msg id, so repeats are dropped. */
  async function publishDecision(tenantId: string, runId: string, toolCallId: string, entry: ApprovalLedgerEntry): Promise<void> {
    const payload: ApprovalPayload = {
      toolCallId,
      approved: entry.approved,
      source: entry.source,
      ...(entry.reason === undefined ? {} : { reason: entry.reason }),
      ...(entry.args === undefined ? {} : { args: entry.args }),
      ...(entry.decidedBy === undefined ? {} : { decidedBy: entry.decidedBy }),
    };
    const message = makeEnvelope('approval', { id: entry.decisionId, runId, tenantId, ts: entry.at }, payload);
    await bus.publish(subjects.approvals(tenantId, runId), message, entry.decisionId);
  }

  /** The answer when the ledger already holds a decision for the call. */
  async function answerFromLedger(tenantId: string, decision: ApprovalDecision, argsHash: string, entry: ApprovalLedgerEntry): Promise<ApprovalOutcome> {
    if (entry.approved === decision.approved && entry.argsHash === argsHash) {
      // The same decision again: make sure it reached the orchestrator (a publisher may have died after the ledger write).
      await publishDecision(tenantId, decision.runId, decision.toolCallId, entry);
      return 'already_decided';
    }
    const recorded = !entry.approved ? 'denied' : decision.approved ? 'approved with other arguments' : 'approved';
    throw new ApiError('approval_conflict', `tool call ${decision.toolCallId} was already ${recorded} (source: ${entry.source})`);
  }

  return {
    /** The caller's run as it is now (null when missing or another tenant's), for `decide` on a batch. */
    loadRun(caller: Caller, runId: string): Promise<LoadedRun | null> {
      return findTenantRun(store, caller.tenantId, runId);
    },

    /**
     * Records a decision. `loaded` is the run from `loadRun` when the caller decides several calls
     * of one run at once (a batch reads the run once); the ledger, not the run, decides races.
     */
    async decide(caller: Caller, decision: ApprovalDecision, loaded?: LoadedRun | null): Promise<ApprovalOutcome> {
      const { runId, toolCallId } = decision;
      const notFound = () => new ApiError('approval_not_found', `run ${runId} has no tool call ${toolCallId} awaiting a decision`);
      const run = loaded === undefined ? await findTenantRun(store, caller.tenantId, runId) : loaded;
      const call = run?.state.toolCalls.find((candidate) => candidate.toolCallId === toolCallId && candidate.needsApproval);
      if (!run || !call) throw notFound();

      const args = decision.approved && decision.args !== undefined ? decision.args : undefined;
      const argsHash = hashJson(args ?? call.args);
      const key = kvKeys.approval(runId, toolCallId);
      const recorded = await bus.ledger.get(key);
      if (recorded) return answerFromLedger(caller.tenantId, decision, argsHash, recorded);

      if (run.state.status !== 'suspended' || !run.state.pendingApprovals.includes(toolCallId)) {
        throw new ApiError('run_not_suspended', `run ${runId} is ${run.state.status} and tool call ${toolCallId} is not pending`);
      }
      if (args !== undefined) {
        const tool = run.state.agentSnapshot.tools.find((candidate) => candidate.name === call.toolName);
        if (!tool) throw notFound();
        let problems: string[];
        try {
          problems = await toolArgs.validate(caller.tenantId, tool.inputSchema, args);
        } catch (error) {
          // An overrun (invalid_args) or a busy / closing validator (unavailable) is answered as it is.
          if (error instanceof ApiError) throw error;
          throw new ApiError('invalid_args', `the input schema of tool ${tool.name} cannot be used to validate: ${error instanceof ToolSchemaError ? `inputSchema${error.path}: ` : ''}${(error as Error).message}`);
        }
        if (problems.length > 0) throw new ApiError('invalid_args', problems.join('; '));
      }

      const entry: ApprovalLedgerEntry = {
        decisionId: newId('dec'),
        approved: decision.approved,
        argsHash,
        ...(args === undefined ? {} : { args }),
        ...(decision.reason === undefined ? {} : { reason: decision.reason }),
        source: decision.source ?? 'user',
        decidedBy: caller.keyId,
        at: now().toISOString(),
      };
      if (!(await bus.ledger.create(key, entry))) {
        // A concurrent decision (any road: HTTP, WebSocket, a service, the deadline) won the create.
        const winner = await bus.ledger.get(key);
        if (!winner) throw new Error(`approval ledger ${key}: create refused but no entry found`);
        return answerFromLedger(caller.tenantId, decision, argsHash, winner);
      }
      await publishDecision(caller.tenantId, runId, toolCallId, entry);
      logger.info({ runId, tenantId: caller.tenantId, toolCallId, approved: entry.approved, decisionId: entry.decisionId }, 'approval recorded');
      return 'accepted';
    },

    /**
     * One page of the caller's pending approvals (an approvals inbox): the approvals of up to
     * `limit` suspended runs, newest run first, and where the next page starts.
     */
    async listPending(tenantId: string, page: { limit: number; after?: RunListPosition | undefined }): Promise<{ approvals: PendingApprovalItem[]; next: RunListPosition | null }> {
      const { runs, last, hasMore } = await store.listSuspendedRuns({ tenantId, limit: page.limit, after: page.after });
      const approvals = runs.flatMap((run) => pendingApprovalsOf(run).map((approval) => ({ runId: run.runId, ...approval })));
      return { approvals, next: hasMore ? last : null };
    },
  };
}
export type ApprovalService = ReturnType<typeof createApprovalService>;
