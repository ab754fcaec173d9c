import { describe, expect, it } from 'vitest';
import { Writable } from 'node:stream';
import { createLogger, makeEnvelope, runInboxMessageSchema, subjects, type Delivery, type RunInboxMessage, type TransitionDocument } from '@abide/shared';
import { testRunState } from '@abide/shared/testing';
import type { ApprovalLedger } from './approval-ledger.ts';
import { createInboxHandler } from './inbox-handler.ts';
import type { RunProcessor } from './run-processor.ts';

const at = '2026-11-24T10:00:00.000Z';

/** A `start` as the wire carries it (parsed with the inbox schema), delivered `deliveryCount` times. */
function startDelivery(options: { runId?: string; tenantId?: string; deliveryCount?: number; stateRunId?: string } = {}): Delivery<RunInboxMessage> {
  const runId = options.runId ?? 'run_1';
  const tenantId = options.tenantId ?? 't1';
  const state = testRunState({ runId: options.stateRunId ?? runId, tenantId }, { at });
  const raw = makeEnvelope('start', { id: `${runId}:1:0`, runId, tenantId, ts: at }, { initial: { at, cause: 'create:req_1', state } });
  const message = runInboxMessageSchema.parse(JSON.parse(JSON.stringify(raw)));
  return { message, subject: subjects.runInbox(runId, 'start'), deliveryCount: options.deliveryCount ?? 1, isLastDelivery: false, streamSequence: 1, signal: new AbortController().signal } as Delivery<RunInboxMessage>;
}

function handlerWithFakeProcessor() {
  const firsts: (TransitionDocument | undefined)[] = [];
  const processor = {
    async apply(_runId: string, _tenantId: string, _input: unknown, _cause: string, first?: TransitionDocument) {
      firsts.push(first);
      return { kind: 'committed', version: 2 };
    },
  } as unknown as RunProcessor;
  const logger = createLogger('orchestrator', 'silent', new Writable({ write: (_chunk, _encoding, done) => done() }));
  return { firsts, handle: createInboxHandler({ processor, ledger: {} as ApprovalLedger, logger }) };
}

describe('inbox handler: a start that carries version 1', () => {
  it('hands version 1 to the processor on the first delivery, as committed and known published', async () => {
    const { firsts, handle } = handlerWithFakeProcessor();
    const delivery = startDelivery();
    await handle(delivery);
    expect(firsts[0]).toMatchObject({ _id: 'run_1:1', runId: 'run_1', tenantId: 't1', version: 1, cause: 'create:req_1', published: true, outbox: [{ kind: 'inbox', inboxKind: 'start', payload: {} }] });
    expect(firsts[0]!.at).toEqual(new Date(at));
    expect(firsts[0]!.state).toEqual(testRunState({}, { at }));
  });

  it('loads the run instead on a redelivery (the run may have moved on, even ended and been pruned)', async () => {
    const { firsts, handle } = handlerWithFakeProcessor();
    await handle(startDelivery({ deliveryCount: 2 }));
    expect(firsts).toEqual([undefined]);
  });

  it('ignores a carried state that names another run', async () => {
    const { firsts, handle } = handlerWithFakeProcessor();
    await handle(startDelivery({ stateRunId: 'run_other' }));
    expect(firsts).toEqual([undefined]);
  });
});
