import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitForPublishedLatest, waitForStatus } from './harness/run-checks.ts';
import { Stack, testKeys } from './harness/stack.ts';

/**
 * Issue 9, item 8: with `RUN_RETENTION` set, an ended run's transitions are deleted once the
 * retention has passed (the orchestrator's retention sweep over `run_retention`); the run itself
 * (`GET /v1/runs/:runId`, its conversation) stays, its history answers `410 run_history_pruned`,
 * and a run still in flight keeps everything.
 */
describe('retention of ended runs', () => {
  let stack: Stack;

  beforeAll(async () => {
    stack = await Stack.start({ env: { RUN_RETENTION: '1s' } });
    const put = await stack.api(testKeys.a, 'PUT', '/v1/agents/keeper', {
      system: 'You are a test agent.',
      model: {
        provider: 'scripted',
        steps: [{ text: 'Echoing.', toolCalls: [{ toolName: 'echo', args: { note: 'kept?' } }] }, { text: 'Done: the note came back.' }],
      },
      tools: [{ name: 'echo', kind: 'builtin', description: 'Echo', inputSchema: { type: 'object' } }],
      maxSteps: 5,
    });
    expect(put.status, JSON.stringify(put.body)).toBe(200);
    const approver = await stack.api(testKeys.a, 'PUT', '/v1/agents/waiter', {
      system: 'You are a test agent.',
      model: { provider: 'scripted', steps: [{ text: 'Asking.', toolCalls: [{ toolName: 'echo', args: { note: 'approve me' } }] }, { text: 'Approved.' }] },
      tools: [{ name: 'echo', kind: 'builtin', description: 'Echo', inputSchema: { type: 'object' }, needsApproval: true }],
      maxSteps: 5,
    });
    expect(approver.status, JSON.stringify(approver.body)).toBe(200);
  });

  afterAll(async () => {
    await stack?.stop();
  });

  const transitionCount = (runId: string) => stack.db.collection('run_transitions').countDocuments({ runId });

  it("deletes an ended run's transitions after the retention, keeps the run and its conversation, and leaves a run in flight alone", { timeout: 120_000 }, async () => {
    // A run in flight (waiting for a person) before and during the other's pruning.
    const waiting = await stack.api(testKeys.a, 'POST', '/v1/runs', { agentId: 'waiter', input: 'wait for me' });
    expect(waiting.status).toBe(201);
    const waitingId = waiting.body.runId as string;
    await waitForStatus(stack, testKeys.a, waitingId, ['suspended']);

    const created = await stack.api(testKeys.a, 'POST', '/v1/runs', { agentId: 'keeper', input: 'echo a note', conversationId: 'conv-kept' });
    expect(created.status).toBe(201);
    const runId = created.body.runId as string;
    expect((await waitForStatus(stack, testKeys.a, runId, ['completed', 'failed', 'cancelled'])).status).toBe('completed');
    // The run as its settled read model shows it (`lastSeq` comes from the read model, which
    // records the terminal transition published a moment after the terminal event): the view
    // pruning must leave unchanged.
    await waitForPublishedLatest(stack.db, runId);
    const ended = (await stack.api(testKeys.a, 'GET', `/v1/runs/${runId}`)).body;
    expect(ended.status, JSON.stringify(ended)).toBe('completed');
    expect(ended.output).toBe('Done: the note came back.');

    // The history is there until the retention passes (it may already have: 1 s is short).
    const waitingVersions = await transitionCount(waitingId);
    expect(waitingVersions).toBeGreaterThan(1);
    // Each transition's header (status, step, awaiting) as committed, read by the history API from the stored documents.
    const history = await stack.api(testKeys.a, 'GET', `/v1/runs/${waitingId}/history`);
    expect(history.status, JSON.stringify(history.body)).toBe(200);
    const headers = history.body.transitions as { version: number; status: string; step: number; awaiting: string | null }[];
    expect(headers.map((transition) => transition.version)).toEqual(Array.from({ length: waitingVersions }, (_, index) => index + 1));
    expect(headers[0]).toMatchObject({ status: 'queued', step: 0, awaiting: null });
    expect(headers.at(-1)).toMatchObject({ status: 'suspended', awaiting: 'approvals' });

    // The retention sweep (every 5 s) deletes the ended run's transitions and its work item.
    await expect.poll(() => transitionCount(runId), { timeout: 60_000, interval: 250 }).toBe(0);
    await expect.poll(async () => (await stack.db.collection('run_retention').findOne({ _id: `retention:${runId}` as never })) === null, { timeout: 30_000, interval: 250 }).toBe(true);
    expect((await stack.db.collection('runs').findOne({ _id: runId as never }))?.prunedAt).toEqual(expect.any(String));

    // The run itself is unchanged: same status, output, version.
    const after = await stack.api(testKeys.a, 'GET', `/v1/runs/${runId}`);
    expect(after.status, JSON.stringify(after.body)).toBe(200);
    expect(after.body).toEqual(ended);
    const listed = await stack.api(testKeys.a, 'GET', '/v1/runs?conversationId=conv-kept');
    expect(listed.status).toBe(200);
    expect(listed.body.runs.map((run: { runId: string; status: string }) => [run.runId, run.status])).toEqual([[runId, 'completed']]);

    // Its history answers 410 with a stable code, on every page; another tenant still gets 404.
    for (const path of [`/v1/runs/${runId}/history`, `/v1/runs/${runId}/history?after=2&limit=1`]) {
      const history = await stack.api(testKeys.a, 'GET', path);
      expect(history.status, JSON.stringify(history.body)).toBe(410);
      expect(history.body.error.code).toBe('run_history_pruned');
    }
    expect((await stack.api(testKeys.b, 'GET', `/v1/runs/${runId}/history`)).status).toBe(404);
    expect((await stack.api(testKeys.b, 'GET', `/v1/runs/${runId}`)).status).toBe(404);

    // Cancelling the pruned run is refused as for any ended run.
    const cancel = await stack.api(testKeys.a, 'POST', `/v1/runs/${runId}/cancel`, {});
    expect([cancel.status, cancel.body.error?.code]).toEqual([409, 'run_finished']);

    // The conversation goes on: its next run reads the history from the kept summary.
    const next = await stack.api(testKeys.a, 'POST', '/v1/runs', { agentId: 'keeper', input: 'again', conversationId: 'conv-kept' });
    expect(next.status, JSON.stringify(next.body)).toBe(201);
    const nextEnded = await waitForStatus(stack, testKeys.a, next.body.runId, ['completed', 'failed', 'cancelled']);
    expect(nextEnded.status, JSON.stringify(nextEnded)).toBe('completed');

    // The run in flight kept every transition, its history and its approval, and has no retention item.
    expect(await transitionCount(waitingId)).toBe(waitingVersions);
    expect(await stack.db.collection('run_retention').findOne({ _id: `retention:${waitingId}` as never })).toBeNull();
    const waitingHistory = await stack.api(testKeys.a, 'GET', `/v1/runs/${waitingId}/history`);
    expect(waitingHistory.status).toBe(200);
    expect(waitingHistory.body.transitions.map((transition: { version: number }) => transition.version)).toEqual(Array.from({ length: waitingVersions }, (_, index) => index + 1));
    expect((await stack.api(testKeys.a, 'GET', `/v1/runs/${waitingId}`)).body.status).toBe('suspended');
    const approved = await stack.api(testKeys.a, 'POST', `/v1/runs/${waitingId}/approvals/s0c0`, { approved: true });
    expect(approved.status, JSON.stringify(approved.body)).toBe(202);
    expect((await waitForStatus(stack, testKeys.a, waitingId, ['completed', 'failed', 'cancelled'])).status).toBe('completed');
  });
});
