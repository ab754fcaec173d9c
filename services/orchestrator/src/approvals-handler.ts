import { InvalidMessageError, parseApprovalsSubject, type ApprovalMessage, type Delivery } from '@abide/shared';
import type { ApprovalLedger } from './approval-ledger.ts';

/**
 * Handles `approvals.<tenantId>.<runId>` (DESIGN §7). The subject and the envelope must agree,
 * as on the run inbox: an internal publisher (or anyone holding publish rights on
 * `approvals.*.*`) must not decide tenant B's call with an envelope that names tenant A, nor the
 * reverse. A mismatch is terminated and logged by the consumer runner; the run is untouched.
 */
export function createApprovalsHandler(deps: { ledger: ApprovalLedger }) {
  return async function handleApproval(delivery: Delivery<ApprovalMessage>): Promise<void> {
    const message = delivery.message;
    const route = parseApprovalsSubject(delivery.subject);
    if (!route || route.tenantId !== message.tenantId || route.runId !== message.runId) {
      throw new InvalidMessageError(delivery.subject, `approval envelope (tenant ${message.tenantId}, run ${message.runId}) does not match its subject`);
    }
    await deps.ledger.applyDecisionMessage(message);
  };
}
