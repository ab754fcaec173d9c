import {
  ApiError,
  hashJson,
  kvKeys,
  makeEnvelope,
  newId,
  subjects,
  type ApprovalLedgerEntry,
  type ApprovalPayload,
  type LoadedSummary,
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
 * A run as decisions on it read it: its summary (status, pending calls with their records, the
 * agent's version), and the whole run, read once and only if a decision needs it (a call that is
 * no longer pending, whose decision the ledger may hold). Null summary: no such run of the caller.
 */
export type DecisionRun = { summary: Pick<LoadedSummary | LoadedRun, 'state'> | null; whole(): Promise<LoadedRun | null> };

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

  /**
   * The caller's run as decisions read it, exactly as of now: its summary (the read model rolled
   * forward by `_id`: one read and a probe), not a fold of every transition; the whole run later
   * if a decision needs it.
   */
  async function loadDecisionRun(caller: Caller, runId: string): Promise<DecisionRun> {
    const summary = await store.loadRunSummary(runId);
    let whole: Promise<LoadedRun | null> | undefined;
    return {
      summary: summary && summary.state.tenantId === caller.tenantId ? summary : null,
      whole: () => (whole ??= findTenantRun(store, caller.tenantId, runId)),
    };
  }

  return {
    /** The caller's run, for `decide` on a batch (read once for all its decisions). */
    loadRun: loadDecisionRun,

    /**
     * Records a decision. `loaded` is the run from `loadRun` when the caller decides several calls
     * of one run at once (a batch reads the run once); the ledger, not the run, decides races.
     */
    async decide(caller: Caller, decision: ApprovalDecision, loaded?: DecisionRun): Promise<ApprovalOutcome> {
      const { runId, toolCallId } = decision;
      const notFound = () => new ApiError('approval_not_found', `run ${runId} has no tool call ${toolCallId} awaiting a decision`);
      const loadedRun = loaded ?? (await loadDecisionRun(caller, runId));
      const callOf = (view: Pick<LoadedSummary | LoadedRun, 'state'> | null) => view?.state.toolCalls.find((candidate) => candidate.toolCallId === toolCallId && candidate.needsApproval);
      let run = loadedRun.summary;
      let call = callOf(run);
      // A summary holds only pending calls: one decided already (or never asked) is looked up in
      // the whole run, so a repeated decision still gets the ledger's answer, in the order above.
      if (run && !call) {
        run = await loadedRun.whole();
        call = callOf(run);
      }
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
        // The run's agent version, immutable: the whole run's snapshot, or `agent_versions` by `_id` (cached).
        const agent =
          'agentSnapshot' in run.state
            ? run.state.agentSnapshot
            : ((await store.findAgentVersion(caller.tenantId, run.state.agentId, run.state.agentVersion)) ?? (await loadedRun.whole())?.state.agentSnapshot);
        const tool = agent?.tools.find((candidate) => candidate.name === call.toolName);
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
