import { jetstream } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startHttpToolServer } from './harness/http-tool-server.ts';
import { Stack, testKeys } from './harness/stack.ts';
import { latestTransition } from './harness/run-checks.ts';

/** Issue 3: a run suspends on a tool call that needs approval and resumes on a decision from any road. */
describe('tool approvals', () => {
  let stack: Stack;
  let tool: Awaited<ReturnType<typeof startHttpToolServer>>;

  beforeAll(async () => {
    tool = await startHttpToolServer((call) => ({ body: { paid: true, request: call.body } }));
    stack = await Stack.start();
    const put = await stack.api(testKeys.a, 'PUT', '/v1/agents/payer', {
      model: {
        provider: 'scripted',
        steps: [{ text: 'Paying.', toolCalls: [{ toolName: 'pay', args: { amount: 10 } }] }, { text: 'Finished.' }],
      },
      tools: [
        {
          name: 'pay',
          kind: 'http',
          description: 'Pay',
          needsApproval: true,
          inputSchema: { type: 'object', properties: { amount: { type: 'number' } }, required: ['amount'], additionalProperties: false },
          http: { url: `${tool.url}/pay` },
        },
      ],
    });
    expect(put.status, JSON.stringify(put.body)).toBe(200);
    const triple = await stack.api(testKeys.a, 'PUT', '/v1/agents/triple', {
      model: {
        provider: 'scripted',
        steps: [
          {
            toolCalls: [
              { toolName: 'pay', args: { amount: 1 } },
              { toolName: 'pay', args: { amount: 2 } },
              { toolName: 'echo', args: { note: 'no approval' } },
            ],
          },
          { text: 'Triple done.' },
        ],
      },
      tools: [
        { name: 'pay', kind: 'http', needsApproval: true, inputSchema: { type: 'object' }, http: { url: `${tool.url}/pay` } },
        { name: 'echo', kind: 'builtin', inputSchema: { type: 'object' } },
      ],
    });
    expect(triple.status, JSON.stringify(triple.body)).toBe(200);
  });

  afterAll(async () => {
    await stack?.stop();
    await tool?.close();
  });

  async function startSuspended(agentId = 'payer') {
    const socket = await stack.socket(testKeys.a);
    socket.send({ type: 'run.create', requestId: 'c', agentId, input: 'pay' });
    const { runId } = await socket.waitFor((frame) => frame.type === 'run.created');
    await socket.waitFor((frame) => frame.type === 'event' && frame.event.type === 'run.suspended').catch((error: Error) => {
      throw new Error(`${error.message}\n${stack.logs()}`);
    });
    return { socket, runId: runId as string };
  }

  const callsFor = (runId: string) => tool.calls.filter((call) => call.idempotencyKey?.startsWith(`${runId}:`));

  it('approves over HTTP: the tool is called once and the run completes', async () => {
    const { socket, runId } = await startSuspended();
    const view = await stack.api(testKeys.a, 'GET', `/v1/runs/${runId}`);
    expect(view.body.status).toBe('suspended');
    expect(view.body.pendingApprovals).toMatchObject([{ toolCallId: 's0c0', toolName: 'pay', args: { amount: 10 } }]);
    expect(callsFor(runId)).toHaveLength(0);
    const inbox = await stack.api(testKeys.a, 'GET', '/v1/approvals?status=pending');
    expect(inbox.body.approvals).toContainEqual(expect.objectContaining({ runId, toolCallId: 's0c0' }));
    const other = await stack.api(testKeys.b, 'POST', `/v1/runs/${runId}/approvals/s0c0`, { approved: true });
    expect([other.status, other.body.error?.code]).toEqual([404, 'approval_not_found']);

    const decided = await stack.api(testKeys.a, 'POST', `/v1/runs/${runId}/approvals/s0c0`, { approved: true });
    expect([decided.status, decided.body.status]).toEqual([202, 'accepted']);
    const again = await stack.api(testKeys.a, 'POST', `/v1/runs/${runId}/approvals/s0c0`, { approved: true });
    expect([again.status, again.body.status]).toEqual([200, 'already_decided']);
    const conflict = await stack.api(testKeys.a, 'POST', `/v1/runs/${runId}/approvals/s0c0`, { approved: false });
    expect([conflict.status, conflict.body.error?.code]).toEqual([409, 'approval_conflict']);

    const events = await socket.untilTerminal(runId);
    expect(events.at(-1)!.type).toBe('run.completed');
    const types = events.map((event) => event.type);
    expect(types).toEqual(expect.arrayContaining(['approval.requested', 'run.suspended', 'approval.resolved', 'run.resumed']));
    expect(events.find((event) => event.type === 'approval.resolved')).toMatchObject({ toolCallId: 's0c0', approved: true, source: 'user' });
    expect(callsFor(runId)).toHaveLength(1);
    expect(callsFor(runId)[0]!.idempotencyKey).toBe(`${runId}:s0c0`);
    const stored = (await latestTransition(stack.db, runId)).state;
    expect(stored.toolCalls[0].approval).toMatchObject({ approved: true, source: 'user' });
    expect(stored.toolCalls[0].approval.argsHash).toMatch(/^[0-9a-f]{64}$/);
    socket.close();
  });

  it('denies over the WebSocket: the model sees the denial and the tool is never called', async () => {
    const { socket, runId } = await startSuspended();
    socket.send({ type: 'approval', requestId: 'd1', runId, toolCallId: 's0c0', approved: false, reason: 'not today' });
    const ack = await socket.waitFor((frame) => frame.type === 'ack' && frame.requestId === 'd1');
    expect(ack.status).toBe('accepted');
    const events = await socket.untilTerminal(runId);
    expect(events.at(-1)!.type).toBe('run.completed');
    expect(events.find((event) => event.type === 'tool.result')).toMatchObject({ toolCallId: 's0c0', result: { denied: true, reason: 'not today' } });
    expect(callsFor(runId)).toHaveLength(0);
    const latest = await latestTransition(stack.db, runId);
    const toolMessage = latest.state.messages.find((message: { role: string }) => message.role === 'tool');
    expect(toolMessage.content[0].output).toEqual({ type: 'execution-denied', reason: 'not today' });
    socket.close();
  });

  it('approves with a message published straight to approvals.<tenantId>.<runId> by an internal service', async () => {
    const { socket, runId } = await startSuspended();
    const nc = await connect({ servers: stack.servers.natsUrl });
    const js = jetstream(nc);
    const message = {
      v: 1,
      id: `dec_internal_${runId}`,
      type: 'approval',
      runId,
      tenantId: 'tenant-a',
      ts: new Date().toISOString(),
      payload: { toolCallId: 's0c0', approved: true, args: { amount: 7 }, source: 'risk-engine', decidedBy: 'rule-17' },
    };
    await js.publish(`approvals.tenant-a.${runId}`, JSON.stringify(message), { msgID: message.id });
    // A malformed message and one for an unknown run do not block the consumer.
    await js.publish(`approvals.tenant-a.${runId}`, 'garbage');
    await js.publish('approvals.tenant-a.run_unknown', JSON.stringify({ ...message, id: 'dec_x', runId: 'run_unknown' }));
    const events = await socket.untilTerminal(runId);
    expect(events.at(-1)!.type).toBe('run.completed');
    expect(events.find((event) => event.type === 'approval.resolved')).toMatchObject({ approved: true, source: 'risk-engine', decidedBy: 'rule-17' });
    expect(callsFor(runId).map((call) => call.body)).toEqual([{ amount: 7 }]);
    await nc.close();
    socket.close();
  });

  it('decides three calls of one step independently; only the approved one reaches the tool', async () => {
    const { socket, runId } = await startSuspended('triple');
    const view = await stack.api(testKeys.a, 'GET', `/v1/runs/${runId}`);
    expect(view.body.pendingApprovals.map((approval: { toolCallId: string }) => approval.toolCallId)).toEqual(['s0c0', 's0c1']);
    const batch = await stack.api(testKeys.a, 'POST', `/v1/runs/${runId}/approvals`, {
      decisions: [
        { toolCallId: 's0c0', approved: false, reason: 'no' },
        { toolCallId: 's0c1', approved: true },
        { toolCallId: 's0c2', approved: true },
      ],
    });
    expect(batch.status).toBe(200);
    expect(batch.body.results.map((result: { status: string }) => result.status)).toEqual(['accepted', 'accepted', 'error']);
    expect(batch.body.results[2].error.code).toBe('approval_not_found');
    const events = await socket.untilTerminal(runId);
    expect(events.at(-1)!.type).toBe('run.completed');
    expect(callsFor(runId).map((call) => call.idempotencyKey)).toEqual([`${runId}:s0c1`]);
    socket.close();
  });

  it('answers races and bad input exactly', async () => {
    const { socket, runId } = await startSuspended();
    const badArgs = await stack.api(testKeys.a, 'POST', `/v1/runs/${runId}/approvals/s0c0`, { approved: true, args: { amount: 'lots' } });
    expect([badArgs.status, badArgs.body.error?.code]).toEqual([400, 'invalid_args']);
    const unknown = await stack.api(testKeys.a, 'POST', `/v1/runs/${runId}/approvals/s9c9`, { approved: true });
    expect([unknown.status, unknown.body.error?.code]).toEqual([404, 'approval_not_found']);
    // A concurrent approve and deny: exactly one wins, both callers learn which.
    const [approve, deny] = await Promise.all([
      stack.api(testKeys.a, 'POST', `/v1/runs/${runId}/approvals/s0c0`, { approved: true }),
      stack.api(testKeys.a, 'POST', `/v1/runs/${runId}/approvals/s0c0`, { approved: false }),
    ]);
    const statuses = [approve.status, deny.status].sort();
    expect(statuses).toEqual([202, 409]);
    const approvedWon = approve.status === 202;
    const events = await socket.untilTerminal(runId);
    expect(events.find((event) => event.type === 'approval.resolved')!.approved).toBe(approvedWon);
    expect(callsFor(runId)).toHaveLength(approvedWon ? 1 : 0);
    const finished = await stack.api(testKeys.a, 'POST', `/v1/runs/${runId}/approvals/s0c0`, { approved: approvedWon });
    expect([finished.status, finished.body.status]).toEqual([200, 'already_decided']);
    socket.close();
  });

  it('answers run_not_suspended for a call of a run that is no longer suspended', async () => {
    const { socket, runId } = await startSuspended();
    const cancel = await stack.api(testKeys.a, 'POST', `/v1/runs/${runId}/cancel`, {});
    expect(cancel.status).toBe(202);
    await socket.untilTerminal(runId);
    const late = await stack.api(testKeys.a, 'POST', `/v1/runs/${runId}/approvals/s0c0`, { approved: true });
    expect([late.status, late.body.error?.code]).toEqual([409, 'run_not_suspended']);
    expect(callsFor(runId)).toHaveLength(0);
    socket.close();
  });

  it('resumes on a new orchestrator process after the one that suspended the run was killed', async () => {
    const { socket, runId } = await startSuspended();
    const orchestrator = stack.service('orchestrator');
    await orchestrator.stop('SIGKILL');
    const decided = await stack.api(testKeys.a, 'POST', `/v1/runs/${runId}/approvals/s0c0`, { approved: true });
    expect(decided.status).toBe(202);
    orchestrator.start();
    await orchestrator.waitReady();
    const events = await socket.untilTerminal(runId);
    expect(events.at(-1)!.type).toBe('run.completed');
    expect(callsFor(runId)).toHaveLength(1);
    socket.close();
  });

  it('a deadline that expires denies (or fails, per tool) without any request arriving', async () => {
    const agent = (onApprovalTimeout: 'deny' | 'fail') => ({
      model: { provider: 'scripted', steps: [{ toolCalls: [{ toolName: 'pay', args: { amount: 3 } }] }, { text: 'After the deadline.' }] },
      tools: [{ name: 'pay', kind: 'http', needsApproval: true, approvalTimeoutMs: 1_000, onApprovalTimeout, inputSchema: { type: 'object' }, http: { url: `${tool.url}/pay` } }],
    });
    expect((await stack.api(testKeys.a, 'PUT', '/v1/agents/hasty-deny', agent('deny'))).status).toBe(200);
    expect((await stack.api(testKeys.a, 'PUT', '/v1/agents/hasty-fail', agent('fail'))).status).toBe(200);
    const denied = await startSuspended('hasty-deny');
    const deniedEvents = await denied.socket.untilTerminal(denied.runId, 30_000);
    expect(deniedEvents.find((event) => event.type === 'approval.resolved')).toMatchObject({ approved: false, source: 'timeout' });
    expect(deniedEvents.at(-1)).toMatchObject({ type: 'run.completed', output: 'After the deadline.' });
    const failed = await startSuspended('hasty-fail');
    const failedEvents = await failed.socket.untilTerminal(failed.runId, 30_000);
    expect(failedEvents.at(-1)).toMatchObject({ type: 'run.failed', error: { code: 'approval_timeout' } });
    expect(callsFor(denied.runId)).toHaveLength(0);
    expect(callsFor(failed.runId)).toHaveLength(0);
    denied.socket.close();
    failed.socket.close();
  });
});
