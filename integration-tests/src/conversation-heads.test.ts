import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { collections, conversationHeadsCompleteId, recordConversationEnd } from '@abide/shared';
import { createWriteBatcher } from '@abide/shared/mongo';
import { waitForStatus } from './harness/run-checks.ts';
import { Stack, testKeys } from './harness/stack.ts';

/**
 * A chat turn finds its conversation's history by `_id` (issue 9: no hot-path query FerretDB
 * scans): each ended run is recorded as its conversation's head (`conversations`) by its terminal
 * outbox, the next run of the conversation continues from it, a head never moves back, and the
 * orchestrator records the heads of conversations older than heads once per database.
 */
describe('conversation heads', () => {
  let stack: Stack;
  const heads = () => stack.db.collection<{ _id: string; [field: string]: unknown }>(collections.conversations);

  beforeAll(async () => {
    stack = await Stack.start();
    const put = await stack.api(testKeys.a, 'PUT', '/v1/agents/talker', { model: { provider: 'scripted', steps: [{ text: 'Noted.' }] } });
    expect(put.status, JSON.stringify(put.body)).toBe(200);
  });
  afterAll(async () => {
    await stack?.stop();
  });

  async function turn(conversationId: string, input: string): Promise<Record<string, any>> {
    const created = await stack.api(testKeys.a, 'POST', '/v1/runs', { agentId: 'talker', input, conversationId });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    const view = await waitForStatus(stack, testKeys.a, created.body.runId as string, ['completed', 'failed', 'cancelled']);
    // How many messages it took from the conversation (its state's `historyLength`, in the read model).
    const readModel = await stack.db.collection('runs').findOne({ _id: view.runId as never }, { projection: { historyLength: 1 } });
    return { ...view, historyLength: readModel?.historyLength };
  }

  /** The head of the conversation once it names `runId` (the terminal outbox writes it just after the run's end). */
  async function headNaming(conversationId: string, runId: string, timeoutMs = 30_000): Promise<Record<string, unknown>> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const head = await heads().findOne({ _id: `tenant-a:${conversationId}` });
      if (head?.runId === runId) return head;
      if (Date.now() > deadline) throw new Error(`the head of ${conversationId} is ${JSON.stringify(head)}, not ${runId}`);
      await sleep(100);
    }
  }

  let first: Record<string, any>;
  let second: Record<string, any>;

  it('records each ended run as its conversation head, and the next turn continues from it', async () => {
    first = await turn('chat-1', 'remember the first thing');
    expect(first.status).toBe('completed');
    expect(first.historyLength).toBe(0);
    expect(await headNaming('chat-1', first.runId)).toMatchObject({ tenantId: 'tenant-a', conversationId: 'chat-1', runCreatedAt: first.createdAt });

    second = await turn('chat-1', 'and the second');
    expect(second.status).toBe('completed');
    // The first turn's input and answer come first.
    expect(second.historyLength).toBe(2);
    await headNaming('chat-1', second.runId);

    // Another conversation starts empty.
    expect((await turn('chat-2', 'a new topic')).historyLength).toBe(0);
  });

  it("never moves a head back: the first run's terminal outbox published again leaves the second's head", async () => {
    await recordConversationEnd({ writes: { conversations: createWriteBatcher(heads()) } }, { tenantId: 'tenant-a', conversationId: 'chat-1', runId: first.runId, createdAt: first.createdAt });
    expect((await heads().findOne({ _id: 'tenant-a:chat-1' }))?.runId).toBe(second.runId);
  });

  it('records the heads of conversations older than heads once, after which a turn continues them by _id', async () => {
    // The database as older code left it: runs, no heads, no mark.
    await heads().deleteMany({});
    const orchestrator = stack.service('orchestrator');
    await orchestrator.restart();
    const deadline = Date.now() + 30_000;
    while (!(await heads().findOne({ _id: conversationHeadsCompleteId }))) {
      if (Date.now() > deadline) throw new Error(`the heads were not recorded\n${stack.logs(30)}`);
      await sleep(100);
    }
    expect((await heads().findOne({ _id: 'tenant-a:chat-1' }))?.runId).toBe(second.runId);
    expect(await heads().countDocuments({ tenantId: 'tenant-a' })).toBe(2);
    expect(stack.logs(200)).toMatch(/recorded the heads of older conversations/);

    const third = await turn('chat-1', 'and the third');
    expect(third.historyLength).toBe(4);
  });
});
