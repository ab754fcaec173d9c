import {
  approvalLedgerEntrySchema,
  createOrRead,
  decodeJson,
  encodeJson,
  hashJson,
  kvKeys,
  newId,
  type ApprovalLedgerEntry,
  type ApprovalMessage,
  type KV,
  type Logger,
} from '@abide/shared';
import type { RunProcessor } from './run-processor.ts';

/**
 * The orchestrator's side of the approval ledger (DESIGN §7): every road — the API, an internal
 * publisher, a deadline — ends in `APPROVAL_LEDGER` `<runId>.<toolCallId>`, written with an
 * atomic create, and the orchestrator applies what the ledger holds. The first decision wins.
 */
export function createApprovalLedger(deps: { kv: KV; processor: RunProcessor; logger: Logger }) {
  const { kv, processor, logger } = deps;

  async function read(runId: string, toolCallId: string): Promise<ApprovalLedgerEntry | undefined> {
    const entry = await kv.get(kvKeys.approval(runId, toolCallId));
    if (!entry || entry.operation !== 'PUT' || entry.length === 0) return undefined;
    return approvalLedgerEntrySchema.parse(decodeJson(entry.value));
  }

  /** Creates the entry unless one exists; returns whichever entry the ledger holds afterwards. */
  async function createOrReadEntry(runId: string, toolCallId: string, proposed: ApprovalLedgerEntry): Promise<ApprovalLedgerEntry> {
    const stored = await createOrRead(kv, kvKeys.approval(runId, toolCallId), proposed, approvalLedgerEntrySchema);
    if (stored.created) return proposed;
    // A foreign value under a ledger key: refuse to decide on it rather than guess.
    if ('invalid' in stored.existing) throw stored.existing.error;
    return stored.existing.value;
  }

  return {
    read,

    /** Applies a decision message (from the gateway or an internal service). */
    async applyDecisionMessage(message: ApprovalMessage): Promise<void> {
      const { runId, tenantId, payload } = message;
      const log = logger.child({ runId, tenantId, toolCallId: payload.toolCallId });
      const latest = await processor.loadLatest(runId);
      if (!latest || latest.transition.tenantId !== tenantId) {
        log.warn({ decisionId: message.id }, 'approval for an unknown run; acked');
        return;
      }
      const call = latest.transition.state.toolCalls.find((candidate) => candidate.toolCallId === payload.toolCallId);
      if (!call || !call.needsApproval) {
        log.warn({ decisionId: message.id }, 'approval for an unknown tool call; acked');
        return;
      }
      const proposed: ApprovalLedgerEntry = {
        decisionId: message.id,
        approved: payload.approved,
        argsHash: hashJson(payload.args ?? call.args),
        ...(payload.args === undefined ? {} : { args: payload.args }),
        ...(payload.reason === undefined ? {} : { reason: payload.reason }),
        source: payload.source,
        ...(payload.decidedBy === undefined ? {} : { decidedBy: payload.decidedBy }),
        at: message.ts,
      };
      const decision = await createOrReadEntry(runId, payload.toolCallId, proposed);
      if (decision.decisionId !== message.id) log.info({ decisionId: message.id, winner: decision.decisionId }, 'an earlier decision holds the ledger; applying it');
      const outcome = await processor.apply(runId, tenantId, { type: 'approval_decision', toolCallId: payload.toolCallId, decision }, `approval:${decision.decisionId}`);
      if (outcome.kind === 'ignored') log.debug({ reason: outcome.reason }, 'approval input ignored');
    },

    /** Denies (through the ledger) every approval of the run whose deadline has passed. */
    async expireDueApprovals(runId: string, tenantId: string, now: Date): Promise<void> {
      const latest = await processor.loadLatest(runId);
      if (!latest) return;
      const state = latest.transition.state;
      for (const call of state.toolCalls) {
        if (call.state !== 'awaiting_approval' || !call.approvalExpiresAt || Date.parse(call.approvalExpiresAt) > now.getTime()) continue;
        const decision = await createOrReadEntry(runId, call.toolCallId, {
          decisionId: newId('dec'),
          approved: false,
          argsHash: hashJson(call.args),
          reason: 'the approval expired',
          source: 'timeout',
          at: now.toISOString(),
        });
        await processor.apply(runId, tenantId, { type: 'approval_decision', toolCallId: call.toolCallId, decision }, `approval:${decision.decisionId}`);
      }
    },
  };
}
export type ApprovalLedger = ReturnType<typeof createApprovalLedger>;
