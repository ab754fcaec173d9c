import { describe, expect, it } from 'vitest';
import { InvalidMessageError, makeEnvelope, subjects, type ApprovalMessage, type Delivery } from '@abide/shared';
import type { ApprovalLedger } from './approval-ledger.ts';
import { createApprovalsHandler } from './approvals-handler.ts';

function deliveryOf(subject: string, tenantId: string, runId: string): Delivery<ApprovalMessage> {
  const message = makeEnvelope('approval', { id: 'dec_1', runId, tenantId }, { toolCallId: 's0c0', approved: true, source: 'ops-bot' }) as ApprovalMessage;
  return { message, subject, deliveryCount: 1, isLastDelivery: false, streamSequence: 1, signal: new AbortController().signal } as Delivery<ApprovalMessage>;
}

function fakeLedger() {
  const applied: ApprovalMessage[] = [];
  return { applied, ledger: { applyDecisionMessage: async (message: ApprovalMessage) => void applied.push(message) } as unknown as ApprovalLedger };
}

describe('approvals handler (finding 16)', () => {
  it("refuses an envelope naming another tenant than the subject, without touching the ledger", async () => {
    const { applied, ledger } = fakeLedger();
    const handle = createApprovalsHandler({ ledger });
    await expect(handle(deliveryOf(subjects.approvals('tenant-b', 'run_b'), 'tenant-a', 'run_b'))).rejects.toBeInstanceOf(InvalidMessageError);
    await expect(handle(deliveryOf(subjects.approvals('tenant-a', 'run_b'), 'tenant-b', 'run_b'))).rejects.toBeInstanceOf(InvalidMessageError);
    await expect(handle(deliveryOf(subjects.approvals('tenant-a', 'run_a'), 'tenant-a', 'run_b'))).rejects.toBeInstanceOf(InvalidMessageError);
    expect(applied).toEqual([]);
  });

  it('applies a decision whose envelope matches its subject', async () => {
    const { applied, ledger } = fakeLedger();
    await createApprovalsHandler({ ledger })(deliveryOf(subjects.approvals('tenant-b', 'run_b'), 'tenant-b', 'run_b'));
    expect(applied.map((message) => [message.tenantId, message.runId])).toEqual([['tenant-b', 'run_b']]);
  });
});
