import { approvalMessageSchema, hashJson } from '@abide/shared';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { auth, createTestApp, scriptedAgent, type TestApp } from '../testing/test-app.ts';

let t: TestApp;
let runId: string;
const expiresAt = '2030-01-01T00:30:00.000Z';

beforeEach(async () => {
  t = createTestApp();
  await t.app.inject({ method: 'PUT', url: '/v1/agents/helper', headers: auth(), payload: scriptedAgent });
  runId = (await t.app.inject({ method: 'POST', url: '/v1/runs', headers: auth(), payload: { agentId: 'helper', input: 'hi' } })).json().runId;
  t.memory.advance(runId, (state) => {
    state.status = 'suspended';
    state.awaiting = { kind: 'approvals', step: 0 };
    state.toolCalls = [
      { toolCallId: 's0c0', providerToolCallId: 'p0', step: 0, toolName: 'echo', args: { text: 'one' }, needsApproval: true, state: 'awaiting_approval', approvalExpiresAt: expiresAt },
      { toolCallId: 's0c1', providerToolCallId: 'p1', step: 0, toolName: 'echo', args: { text: 'two' }, needsApproval: true, state: 'awaiting_approval', approvalExpiresAt: expiresAt },
      { toolCallId: 's0c2', providerToolCallId: 'p2', step: 0, toolName: 'echo', args: { text: 'free' }, needsApproval: false, state: 'requested' },
    ];
    state.pendingApprovals = ['s0c0', 's0c1'];
  });
});
afterEach(async () => {
  await t.app.close();
});

const decide = (toolCallId: string, payload: Record<string, unknown>, tenant: 't1' | 't2' = 't1', run = runId) =>
  t.app.inject({ method: 'POST', url: `/v1/runs/${run}/approvals/${toolCallId}`, headers: auth(tenant), payload });

describe('approvals', () => {
  it('records the decision in the ledger, then publishes it with the decisionId as msg id → 202', async () => {
    const response = await decide('s0c0', { approved: true, reason: 'fine' });
    expect(response.statusCode).toBe(202);
    expect(response.json()).toEqual({ status: 'accepted' });
    const entry = t.bus.ledger.get(`${runId}.s0c0`)!;
    expect(entry).toMatchObject({ approved: true, reason: 'fine', source: 'user', argsHash: hashJson({ text: 'one' }), decidedBy: expect.stringMatching(/^key_[0-9a-f]{12}$/) });
    expect(entry.decisionId).toMatch(/^dec_/);
    expect(t.bus.published).toHaveLength(1);
    const { subject, message, msgId } = t.bus.published[0]!;
    expect(subject).toBe(`approvals.t1.${runId}`);
    expect(msgId).toBe(entry.decisionId);
    expect(approvalMessageSchema.parse(message)).toMatchObject({ id: entry.decisionId, runId, tenantId: 't1', payload: { toolCallId: 's0c0', approved: true, source: 'user', reason: 'fine' } });
  });

  it('answers the same decision again 200 already_decided (republished with the same id), another 409', async () => {
    await decide('s0c0', { approved: true });
    const again = await decide('s0c0', { approved: true, reason: 'other words are the same decision' });
    expect(again.statusCode).toBe(200);
    expect(again.json()).toEqual({ status: 'already_decided' });
    expect(t.bus.published.map((item) => item.msgId)).toEqual([t.bus.published[0]!.msgId, t.bus.published[0]!.msgId]);
    const deny = await decide('s0c0', { approved: false });
    expect(deny.statusCode).toBe(409);
    expect(deny.json().error.code).toBe('approval_conflict');
    const edited = await decide('s0c0', { approved: true, args: { text: 'edited' } });
    expect(edited.json().error.code).toBe('approval_conflict');
  });

  it('answers from the ledger before checking the run: a decision recorded elsewhere still answers 200/409', async () => {
    t.bus.ledger.set(`${runId}.s0c1`, { decisionId: 'dec_timeout', approved: false, argsHash: hashJson({ text: 'two' }), source: 'timeout', at: new Date().toISOString() });
    t.memory.advance(runId, (state) => {
      state.status = 'running';
      state.pendingApprovals = [];
    });
    expect((await decide('s0c1', { approved: false })).json()).toEqual({ status: 'already_decided' });
    expect(t.bus.published[0]!.msgId).toBe('dec_timeout');
    expect((await decide('s0c1', { approved: true })).statusCode).toBe(409);
    // no ledger entry and the run not suspended
    const late = await decide('s0c0', { approved: true });
    expect(late.statusCode).toBe(409);
    expect(late.json().error.code).toBe('run_not_suspended');
  });

  it('answers 404 approval_not_found for unknown calls, calls without approval, and other tenants', async () => {
    for (const [toolCallId, tenant, run] of [
      ['s9c9', 't1', runId],
      ['s0c2', 't1', runId],
      ['s0c0', 't2', runId],
      ['s0c0', 't1', 'run_missing'],
    ] as const) {
      const response = await decide(toolCallId, { approved: true }, tenant, run);
      expect(response.statusCode).toBe(404);
      expect(response.json().error.code).toBe('approval_not_found');
    }
    expect((await decide('bogus', { approved: true })).json().error.code).toBe('invalid_request');
    expect((await decide('s0c0', { approved: 'yes' })).json().error.code).toBe('invalid_request');
    expect(t.bus.ledger.size).toBe(0);
  });

  it('validates edited args against the tool schema (400 invalid_args) and records their hash', async () => {
    const bad = await decide('s0c0', { approved: true, args: { text: 42 } });
    expect(bad.statusCode).toBe(400);
    expect(bad.json().error).toMatchObject({ code: 'invalid_args', message: expect.stringContaining('args.text') });
    expect((await decide('s0c0', { approved: true, args: { text: 'ok', extra: 1 } })).json().error.code).toBe('invalid_args');
    expect(t.bus.ledger.size).toBe(0);
    const good = await decide('s0c0', { approved: true, args: { text: 'edited' } });
    expect(good.statusCode).toBe(202);
    expect(t.bus.ledger.get(`${runId}.s0c0`)).toMatchObject({ args: { text: 'edited' }, argsHash: hashJson({ text: 'edited' }) });
    expect((await decide('s0c0', { approved: true, args: { text: 'edited' } })).json()).toEqual({ status: 'already_decided' });
  });

  it('lets exactly one of two concurrent decisions win, and tells the loser which', async () => {
    // The deny is recorded between the approve's ledger read and its create.
    t.bus.onBeforeCreate((key) => {
      t.bus.onBeforeCreate(undefined);
      t.bus.ledger.set(key, { decisionId: 'dec_other', approved: false, argsHash: hashJson({ text: 'one' }), source: 'user', at: new Date().toISOString() });
    });
    const response = await decide('s0c0', { approved: true });
    expect(response.statusCode).toBe(409);
    expect(response.json().error).toMatchObject({ code: 'approval_conflict', message: expect.stringContaining('denied') });
  });

  it('decides a batch one by one, with a result per decision', async () => {
    const response = await t.app.inject({
      method: 'POST',
      url: `/v1/runs/${runId}/approvals`,
      headers: auth(),
      payload: { decisions: [{ toolCallId: 's0c0', approved: true }, { toolCallId: 's0c1', approved: false, reason: 'no' }, { toolCallId: 's0c0', approved: false }, { toolCallId: 's5c5', approved: true }] },
    });
    expect(response.statusCode).toBe(200);
    expect(response.json().results).toEqual([
      { toolCallId: 's0c0', status: 'accepted' },
      { toolCallId: 's0c1', status: 'accepted' },
      { toolCallId: 's0c0', status: 'error', error: { code: 'approval_conflict', message: expect.any(String) } },
      { toolCallId: 's5c5', status: 'error', error: { code: 'approval_not_found', message: expect.any(String) } },
    ]);
  });

  it('lists pending approvals in the run and across the tenant', async () => {
    const view = (await t.app.inject({ method: 'GET', url: `/v1/runs/${runId}`, headers: auth() })).json();
    expect(view.pendingApprovals).toEqual([
      { toolCallId: 's0c0', toolName: 'echo', args: { text: 'one' }, expiresAt },
      { toolCallId: 's0c1', toolName: 'echo', args: { text: 'two' }, expiresAt },
    ]);
    const inbox = await t.app.inject({ method: 'GET', url: '/v1/approvals?status=pending', headers: auth() });
    expect(inbox.json().approvals).toEqual([
      { runId, toolCallId: 's0c0', toolName: 'echo', args: { text: 'one' }, expiresAt },
      { runId, toolCallId: 's0c1', toolName: 'echo', args: { text: 'two' }, expiresAt },
    ]);
    expect((await t.app.inject({ method: 'GET', url: '/v1/approvals', headers: auth('t2') })).json().approvals).toEqual([]);
    expect((await t.app.inject({ method: 'GET', url: '/v1/approvals?status=done', headers: auth() })).statusCode).toBe(400);
  });

  it('decides a pending call from the run summary, without reading the whole run', async () => {
    const loads = vi.spyOn(t.memory.store, 'loadRun');
    const summaries = vi.spyOn(t.memory.store, 'loadRunSummary');
    // The memory store folds a summary through `loadRun`: whole-run reads are the calls beyond those.
    const wholeReads = () => loads.mock.calls.length - summaries.mock.calls.length;
    const response = await t.app.inject({ method: 'POST', url: `/v1/runs/${runId}/approvals/s0c0`, headers: auth(), payload: { approved: true, args: { text: 'edited' } } });
    expect(response.statusCode, response.body).toBe(202);
    expect(summaries).toHaveBeenCalledTimes(1);
    expect(wholeReads()).toBe(0);
    // The orchestrator applied it: the call is no longer pending, so not in the summary. The same
    // decision again reads the whole run, finds the call, and gets the ledger's answer.
    t.memory.advance(runId, (state) => {
      state.pendingApprovals = ['s0c1'];
    });
    const again = await t.app.inject({ method: 'POST', url: `/v1/runs/${runId}/approvals/s0c0`, headers: auth(), payload: { approved: true, args: { text: 'edited' } } });
    expect([again.statusCode, again.json().status]).toEqual([200, 'already_decided']);
    expect(wholeReads()).toBe(1);
    const unknown = await t.app.inject({ method: 'POST', url: `/v1/runs/${runId}/approvals/s9c9`, headers: auth(), payload: { approved: true } });
    expect([unknown.statusCode, unknown.json().error.code]).toEqual([404, 'approval_not_found']);
  });

  it('reads the run once for a whole batch (not once per decision)', async () => {
    const loads = vi.spyOn(t.memory.store, 'loadRun');
    const summaries = vi.spyOn(t.memory.store, 'loadRunSummary');
    const wholeReads = () => loads.mock.calls.length - summaries.mock.calls.length;
    const decisions = [{ toolCallId: 's0c0', approved: true }, { toolCallId: 's0c1', approved: true }, ...Array.from({ length: 20 }, () => ({ toolCallId: 's9c9', approved: true }))];
    const response = await t.app.inject({ method: 'POST', url: `/v1/runs/${runId}/approvals`, headers: auth(), payload: { decisions } });
    expect(response.statusCode).toBe(200);
    expect(response.json().results.slice(0, 2)).toEqual([
      { toolCallId: 's0c0', status: 'accepted' },
      { toolCallId: 's0c1', status: 'accepted' },
    ]);
    // Its summary once, and the whole run once for the 20 decisions on a call it does not have.
    expect(summaries).toHaveBeenCalledTimes(1);
    expect(wholeReads()).toBe(1);
  });

  it('pages the inbox by suspended runs with the list cursor, reading no whole runs', async () => {
    const runIds = [runId];
    for (let index = 0; index < 4; index += 1) {
      const id = (await t.app.inject({ method: 'POST', url: '/v1/runs', headers: auth(), payload: { agentId: 'helper', input: `more ${index}` } })).json().runId as string;
      t.memory.advance(id, (state) => {
        state.status = 'suspended';
        state.toolCalls = [{ toolCallId: 's0c0', providerToolCallId: 'p0', step: 0, toolName: 'echo', args: { text: id }, needsApproval: true, state: 'awaiting_approval' }];
        state.pendingApprovals = ['s0c0'];
      });
      runIds.push(id);
    }
    const loads = vi.spyOn(t.memory.store, 'loadRun');
    const listRuns = vi.spyOn(t.memory.store, 'listRuns');
    const seen: string[] = [];
    let cursor: string | null = null;
    let pages = 0;
    do {
      const url: string = `/v1/approvals?limit=2${cursor ? `&cursor=${cursor}` : ''}`;
      const page = (await t.app.inject({ method: 'GET', url, headers: auth() })).json() as { approvals: { runId: string; toolCallId: string }[]; nextCursor: string | null };
      seen.push(...page.approvals.map((approval) => `${approval.runId}/${approval.toolCallId}`));
      cursor = page.nextCursor;
      pages += 1;
    } while (cursor);
    expect(pages).toBe(3);
    expect(seen.sort()).toEqual([`${runId}/s0c0`, `${runId}/s0c1`, ...runIds.slice(1).map((id) => `${id}/s0c0`)].sort());
    expect(loads).not.toHaveBeenCalled();
    expect(listRuns.mock.calls.every(([query]) => query.limit <= 2)).toBe(true);
    expect((await t.app.inject({ method: 'GET', url: '/v1/approvals?cursor=forged', headers: auth() })).json().error.code).toBe('invalid_cursor');
    expect((await t.app.inject({ method: 'GET', url: '/v1/approvals?limit=101', headers: auth() })).statusCode).toBe(400);
  });
});
