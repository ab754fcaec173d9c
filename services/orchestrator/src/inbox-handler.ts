import { parseRunInboxSubject, InvalidMessageError, transitionId, type Delivery, type InitialTransition, type Logger, type RunInboxMessage, type TransitionDocument } from '@abide/shared';
import type { ApprovalLedger } from './approval-ledger.ts';
import type { RunProcessor } from './run-processor.ts';
import type { RunInput } from './run-state-machine.ts';

/**
 * Handles `run.in.<runId>.<kind>`. The subject and the envelope must agree; a message that
 * does not fit is terminated. Stale and duplicate inputs are acked and ignored (state-based
 * idempotency in the transition function).
 */
export function createInboxHandler(deps: { processor: RunProcessor; ledger: ApprovalLedger; logger: Logger; now?: () => Date }) {
  const { processor, ledger, logger } = deps;
  const now = deps.now ?? (() => new Date());
  return async function handleInbox(delivery: Delivery<RunInboxMessage>): Promise<void> {
    const message = delivery.message;
    const route = parseRunInboxSubject(delivery.subject);
    if (!route || route.runId !== message.runId || route.kind !== message.type) {
      throw new InvalidMessageError(delivery.subject, `envelope (${message.type}, ${message.runId}) does not match its subject`);
    }
    const log = logger.child({ runId: message.runId, tenantId: message.tenantId });
    if (message.type === 'timer') {
      // Expired approvals are decided through the ledger first (first decision wins), then the rest of the deadline applies.
      await ledger.expireDueApprovals(message.runId, message.tenantId, now());
    }
    const input = toRunInput(message);
    // A `start` carrying version 1 (outbox-publisher.ts) spares the read of it, on its first
    // delivery only: a redelivered one may come after the run moved on (even ended and was
    // pruned, when version 2 could be inserted again), so it is loaded as before.
    const first = message.type === 'start' && delivery.deliveryCount === 1 && message.payload.initial ? initialTransition(message.runId, message.tenantId, message.payload.initial as InitialTransition) : undefined;
    const outcome = await processor.apply(message.runId, message.tenantId, input, message.id, first);
    if (outcome.kind === 'unknown_run') log.warn({ type: message.type, messageId: message.id }, 'message for an unknown run; acked');
    else if (outcome.kind === 'ignored') log.debug({ type: message.type, messageId: message.id, reason: outcome.reason }, 'input ignored');
  };
}

/** The version-1 transition a `start` carries, or undefined when it names another run or tenant (then loaded from the store). */
function initialTransition(runId: string, tenantId: string, initial: InitialTransition): TransitionDocument | undefined {
  if (initial.state.runId !== runId || initial.state.tenantId !== tenantId) return undefined;
  return {
    _id: transitionId(runId, 1),
    runId,
    tenantId,
    version: 1,
    at: new Date(initial.at),
    cause: initial.cause,
    state: initial.state,
    // Version 1's outbox is the one `start`: this message arriving proves it published.
    outbox: [{ kind: 'inbox', inboxKind: 'start', payload: {} }],
    published: true,
    ...(initial.traceparent === undefined ? {} : { traceparent: initial.traceparent }),
  };
}

function toRunInput(message: RunInboxMessage): RunInput {
  switch (message.type) {
    case 'start':
      return { type: 'start' };
    case 'llm_result':
      return { type: 'llm_result', payload: message.payload };
    case 'tool_result':
      return { type: 'tool_result', payload: message.payload };
    case 'cancel':
      return { type: 'cancel', payload: message.payload };
    case 'timer':
      return { type: 'deadline' };
  }
}
