import { setTimeout as sleep } from 'node:timers/promises';
import { createServer, type Server } from 'node:http';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { connect, nanos } from '@nats-io/transport-node';
import { MongoClient } from 'mongodb';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  buckets,
  consumerPolicies,
  consumers,
  createLogger,
  createRunStore,
  eventsMaxConsumers,
  makeEnvelope,
  modelOutputLimits,
  provisionJetStream,
  streams,
  subjects,
  type JetStreamSettings,
  type TransitionDocument,
} from '@abide/shared';
import { getCollections } from '@abide/shared/mongo';
import { startAuthNats, type AuthNats } from './deploy/auth-nats.ts';
import { startHttpToolServer } from './harness/http-tool-server.ts';
import { fullReplay, latestTransition, waitForPublishedLatest, waitForStatus, type ClientEvent } from './harness/run-checks.ts';
import { Stack, testKeys } from './harness/stack.ts';

/**
 * Issue 8, findings 5, 10, 12 (see deploy/nats-permissions.test.ts), 15 (results), 16, and
 * issue 10 finding 1: hostile sizes and keys fail only their own run (or none), the approvals
 * subject is the authority on tenant and run, and provisioning applies changed settings.
 */

/** A fake OpenAI-compatible server: answers `/chat/completions` from a script, recording each request body. */
async function startFakeModel(script: (requestIndex: number) => { toolCall?: { name: string; arguments: string }; text?: string }) {
  const requests: any[] = [];
  const server: Server = createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      const body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      const answer = script(requests.length);
      requests.push(body);
      const chunk = (delta: Record<string, unknown>, finishReason: string | null, usage?: Record<string, number>) =>
        `data: ${JSON.stringify({ id: 'c1', object: 'chat.completion.chunk', created: 0, model: 'fake', choices: [{ index: 0, delta, finish_reason: finishReason }], ...(usage ? { usage } : {}) })}\n\n`;
      response.writeHead(200, { 'content-type': 'text/event-stream' });
      if (answer.toolCall) {
        response.write(chunk({ role: 'assistant', content: null, tool_calls: [{ index: 0, id: 'call_1', type: 'function', function: answer.toolCall }] }, null));
        response.write(chunk({}, 'tool_calls', { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 }));
      } else {
        response.write(chunk({ role: 'assistant', content: answer.text ?? '' }, null));
        response.write(chunk({}, 'stop', { prompt_tokens: 1, completion_tokens: 1, total_tokens: 2 }));
      }
      response.end('data: [DONE]\n\n');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  return { url: `http://127.0.0.1:${port}/v1`, requests, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
}

const terminalOf = (events: ClientEvent[]) => events.at(-1)!;

describe('limits and isolation', () => {
  let stack: Stack;
  let tools: Awaited<ReturnType<typeof startHttpToolServer>>;
  let model: Awaited<ReturnType<typeof startFakeModel>>;
  const bigResultChars = 750_000;

  beforeAll(async () => {
    tools = await startHttpToolServer((call) => {
      if (call.path === '/big') return { body: { data: 'x'.repeat(bigResultChars) } };
      if (call.path === '/mongo-keys') return { body: { $set: 1, 'a.b': 2, matrix: [[1, 2], [3, [4]]] } };
      return { body: { ok: true, received: call.body } };
    });
    model = await startFakeModel((index) =>
      index % 2 === 0 ? { toolCall: { name: 'probe', arguments: JSON.stringify({ $where: 'x', 'k.e.y': 1 }) } } : { text: 'saw it' },
    );
    // A low cap on model requests, so a conversation passes it in three steps.
    stack = await Stack.start({ env: { LLM_REQUEST_MAX_BYTES: '2MiB', LLM_EGRESS_ALLOW: '127.0.0.1:*' } });
    const simple = await stack.api(testKeys.b, 'PUT', '/v1/agents/simple', {
      model: { provider: 'scripted', steps: [{ text: 'Echoing.', toolCalls: [{ toolName: 'echo', args: { note: 'hello' } }] }, { text: 'Simple done.' }] },
      tools: [{ name: 'echo', kind: 'builtin', inputSchema: { type: 'object' } }],
    });
    expect(simple.status, JSON.stringify(simple.body)).toBe(200);
  }, 120_000);

  afterAll(async () => {
    await stack?.stop();
    await tools?.close();
    await model?.close();
  });

  async function startRun(key: string, agentId: string): Promise<string> {
    const created = await stack.api(key, 'POST', '/v1/runs', { agentId, input: 'go' });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    return created.body.runId;
  }

  async function finished(key: string, runId: string): Promise<ClientEvent[]> {
    await waitForStatus(stack, key, runId, ['completed', 'failed', 'cancelled'], 90_000);
    return fullReplay(stack, key, runId);
  }

  it('a conversation passing LLM_REQUEST_MAX_BYTES fails its own run with message_too_large (after going through PAYLOADS); another tenant completes', { timeout: 150_000 }, async () => {
    const put = await stack.api(testKeys.a, 'PUT', '/v1/agents/hoarder', {
      model: {
        provider: 'scripted',
        steps: [1, 2, 3].map(() => ({ toolCalls: [{ toolName: 'big', args: {} }] })).concat([{ text: 'never' } as never]),
      },
      tools: [{ name: 'big', kind: 'http', inputSchema: { type: 'object' }, http: { url: `${tools.url}/big` } }],
      maxSteps: 10,
    });
    expect(put.status, JSON.stringify(put.body)).toBe(200);
    const [hoarder, other] = await Promise.all([startRun(testKeys.a, 'hoarder'), startRun(testKeys.b, 'simple')]);
    const [hoarderEvents, otherEvents] = await Promise.all([finished(testKeys.a, hoarder), finished(testKeys.b, other)]);
    expect(terminalOf(otherEvents)).toMatchObject({ type: 'run.completed', output: 'Simple done.' });
    expect(terminalOf(hoarderEvents)).toMatchObject({ type: 'run.failed', error: { code: 'message_too_large' } });
    expect(terminalOf(hoarderEvents).error.message).toContain('model request of step 3');
    // Step 2's request (~1.5 MB) was over the server's max_payload: it went through PAYLOADS and the model answered it.
    const stepsStarted = hoarderEvents.filter((event) => event.type === 'llm.step.started').map((event) => event.step);
    expect(stepsStarted).toEqual([0, 1, 2]);
    // The transition recording the third result (whose next model request is over the cap) was replaced by the failure.
    expect(hoarderEvents.filter((event) => event.type === 'tool.result')).toHaveLength(2);
    // Nothing was committed that can never publish: the latest transition's outbox is published
    // (and each earlier one's, as nothing is committed on an unpublished transition).
    expect(await waitForPublishedLatest(stack.db, hoarder)).toBe((await latestTransition(stack.db, hoarder)).version);
  });

  it('~1 MiB of edited approval args fails that run with message_too_large instead of committing a tool request that can never publish', { timeout: 120_000 }, async () => {
    const put = await stack.api(testKeys.a, 'PUT', '/v1/agents/bulky', {
      model: { provider: 'scripted', steps: [{ toolCalls: [{ toolName: 'store', args: { blob: 'small' } }] }, { text: 'stored' }] },
      tools: [
        {
          name: 'store',
          kind: 'http',
          needsApproval: true,
          // A large (but allowed) schema: the tool request carries the tool definition and the args.
          inputSchema: { type: 'object', properties: { blob: { type: 'string', description: 'd'.repeat(50_000) } } },
          http: { url: `${tools.url}/store` },
        },
      ],
    });
    expect(put.status, JSON.stringify(put.body)).toBe(200);
    const bulky = await startRun(testKeys.a, 'bulky');
    await waitForStatus(stack, testKeys.a, bulky, ['suspended']);
    const other = await startRun(testKeys.b, 'simple');
    const approve = await stack.api(testKeys.a, 'POST', `/v1/runs/${bulky}/approvals/s0c0`, { approved: true, args: { blob: 'y'.repeat(1_000_000) } });
    expect(approve.status, JSON.stringify(approve.body)).toBe(202);
    const events = await finished(testKeys.a, bulky);
    expect(terminalOf(events)).toMatchObject({ type: 'run.failed', error: { code: 'message_too_large' } });
    expect(terminalOf(events).error.message).toContain('tool request of s0c0');
    expect(tools.calls.filter((call) => call.idempotencyKey === `${bulky}:s0c0`)).toHaveLength(0);
    expect(terminalOf(await finished(testKeys.b, other))).toMatchObject({ type: 'run.completed' });
    expect(await waitForPublishedLatest(stack.db, bulky)).toBe((await latestTransition(stack.db, bulky)).version);
  });

  it('refuses an agent definition over its size limits (a schema of many 1e20s, a huge definition) with 400', { timeout: 30_000 }, async () => {
    const properties = Object.fromEntries(Array.from({ length: 5_000 }, (_, index) => [`n${index}`, { type: 'number', maximum: 1e20, minimum: -1e20 }]));
    const schema = await stack.api(testKeys.a, 'PUT', '/v1/agents/wide', {
      model: { provider: 'scripted', steps: [{ text: 'hi' }] },
      tools: [{ name: 'echo', kind: 'builtin', inputSchema: { type: 'object', properties } }],
    });
    expect([schema.status, schema.body.error?.code]).toEqual([400, 'invalid_request']);
    expect(schema.body.error.message).toContain('inputSchema');
    const whole = await stack.api(testKeys.a, 'PUT', '/v1/agents/wide', { model: { provider: 'scripted', steps: [{ text: 'w'.repeat(300 * 1024) }] } });
    expect([whole.status, whole.body.error?.code]).toEqual([400, 'invalid_request']);
    expect((await stack.api(testKeys.a, 'GET', '/v1/agents/wide')).status).toBe(404);
  });

  it('a scripted model step over the output bound fails its run with model_output_too_large', { timeout: 60_000 }, async () => {
    const put = await stack.api(testKeys.a, 'PUT', '/v1/agents/chatty', {
      model: { provider: 'scripted', chunkSize: 5_000, steps: [{ text: 'z'.repeat(modelOutputLimits.maxTextChars + 20_000) }] },
    });
    expect(put.status, JSON.stringify(put.body)).toBe(200);
    const chatty = await startRun(testKeys.a, 'chatty');
    const events = await finished(testKeys.a, chatty);
    expect(terminalOf(events)).toMatchObject({ type: 'run.failed', error: { code: 'model_output_too_large' } });
    const streamed = events.filter((event) => event.type === 'message.delta').reduce((total, event) => total + event.text.length, 0);
    expect(streamed).toBeLessThanOrEqual(modelOutputLimits.maxTextChars);
  });

  it('tool-call args and a tool result with $-prefixed and dotted keys: the run completes and the model sees exactly what the tool returned', { timeout: 90_000 }, async () => {
    const put = await stack.api(testKeys.a, 'PUT', '/v1/agents/mongo-keys', {
      model: { provider: 'openai-compatible', baseURL: model.url, model: 'fake' },
      tools: [{ name: 'probe', kind: 'http', inputSchema: { type: 'object' }, http: { url: `${tools.url}/mongo-keys` } }],
    });
    expect(put.status, JSON.stringify(put.body)).toBe(200);
    const requestsBefore = model.requests.length;
    const runId = await startRun(testKeys.a, 'mongo-keys');
    const events = await finished(testKeys.a, runId);
    expect(terminalOf(events)).toMatchObject({ type: 'run.completed', output: 'saw it' });
    expect(events.find((event) => event.type === 'tool.call')).toMatchObject({ args: { $where: 'x', 'k.e.y': 1 } });
    expect(events.find((event) => event.type === 'tool.result')).toMatchObject({ result: { $set: 1, 'a.b': 2, matrix: [[1, 2], [3, [4]]] } });
    // The tool received the model's arguments as they were.
    expect(tools.calls.find((call) => call.idempotencyKey === `${runId}:s0c0`)?.body).toEqual({ $where: 'x', 'k.e.y': 1 });
    // The model's next step saw exactly what the tool returned.
    const second = model.requests[requestsBefore + 1];
    const toolMessage = second.messages.find((message: { role: string }) => message.role === 'tool');
    expect(JSON.parse(toolMessage.content)).toEqual({ $set: 1, 'a.b': 2, matrix: [[1, 2], [3, [4]]] });
    const assistant = second.messages.find((message: { role: string; tool_calls?: unknown[] }) => message.role === 'assistant' && message.tool_calls);
    expect(JSON.parse(assistant.tool_calls[0].function.arguments)).toEqual({ $where: 'x', 'k.e.y': 1 });
    // The read model answers too.
    expect((await stack.api(testKeys.a, 'GET', `/v1/runs/${runId}`)).body).toMatchObject({ status: 'completed', output: 'saw it' });
  });

  it('an approval whose envelope does not match its subject is terminated; the run is untouched; a matching one works', { timeout: 90_000 }, async () => {
    const agent = {
      model: { provider: 'scripted', steps: [{ toolCalls: [{ toolName: 'pay', args: { amount: 5 } }] }, { text: 'paid' }] },
      tools: [{ name: 'pay', kind: 'http', needsApproval: true, inputSchema: { type: 'object' }, http: { url: `${tools.url}/pay` } }],
    };
    for (const key of [testKeys.a, testKeys.b]) expect((await stack.api(key, 'PUT', '/v1/agents/payer', agent)).status).toBe(200);
    const runA = await startRun(testKeys.a, 'payer');
    const runB = await startRun(testKeys.b, 'payer');
    await waitForStatus(stack, testKeys.a, runA, ['suspended']);
    await waitForStatus(stack, testKeys.b, runB, ['suspended']);

    // An internal publisher (a plain client in this stack; with deploy/nats/auth.conf the
    // approvals-publisher user) whose subject names one tenant and whose envelope names another.
    const connection = await connect({ servers: stack.servers.natsUrl });
    try {
      const js = jetstream(connection);
      const decide = (subjectTenant: string, envelopeTenant: string, runId: string, id: string) =>
        js.publish(
          subjects.approvals(subjectTenant, runId),
          JSON.stringify(makeEnvelope('approval', { id, runId, tenantId: envelopeTenant }, { toolCallId: 's0c0', approved: true, source: 'ops-bot' })),
          { msgID: id },
        );
      const mismatches = [
        await decide('tenant-b', 'tenant-a', runB, 'dec_mismatch_1'),
        // A publisher allowed only `approvals.tenant-a.>` must not reach tenant-b's run through the envelope.
        await decide('tenant-a', 'tenant-b', runB, 'dec_mismatch_2'),
        await decide('tenant-b', 'tenant-a', runA, 'dec_mismatch_3'),
      ];
      const jsm = await jetstreamManager(connection);
      const lastSeq = Math.max(...mismatches.map((ack) => ack.seq));
      const deadline = Date.now() + 30_000;
      for (;;) {
        const info = await jsm.consumers.info(streams.approvals, consumers.orchestratorApprovals);
        if (info.ack_floor.stream_seq >= lastSeq) break;
        if (Date.now() > deadline) throw new Error(`approvals consumer did not get past seq ${lastSeq}: ${JSON.stringify(info.ack_floor)}\n${stack.logs(20)}`);
        await sleep(100);
      }
      const ledger = await new Kvm(js).open(buckets.approvalLedger);
      for (const [key, runId] of [
        [testKeys.a, runA],
        [testKeys.b, runB],
      ] as const) {
        expect((await stack.api(key, 'GET', `/v1/runs/${runId}`)).body).toMatchObject({ status: 'suspended', pendingApprovals: [{ toolCallId: 's0c0' }] });
        expect(await ledger.get(`${runId}.s0c0`)).toBeNull();
      }
      expect(stack.service('orchestrator').logTail(200)).toContain('does not match its subject');

      await decide('tenant-b', 'tenant-b', runB, 'dec_match');
      expect(terminalOf(await finished(testKeys.b, runB))).toMatchObject({ type: 'run.completed', output: 'paid' });
      expect((await stack.api(testKeys.a, 'GET', `/v1/runs/${runA}`)).body.status).toBe('suspended');
    } finally {
      await connection.close();
    }
  });

  it('the sweepers page through FerretDB/MongoDB past a full page (the store queries the sweepers use)', { timeout: 60_000 }, async () => {
    const db = stack.mongo.db(`${stack.db.databaseName}_sweep`);
    const store = createRunStore(getCollections(db));
    const deadline = '2026-01-01T00:00:00.000Z';
    // 520 runs share one tiny deadline (a page of 500 is full of them), 10 more are due later.
    for (let index = 0; index < 520; index += 1) await store.writeDeadline(`run_d${String(index).padStart(4, '0')}`, 'tenant-a', deadline);
    for (let index = 0; index < 10; index += 1) await store.writeDeadline(`run_e${index}`, 'tenant-b', `2026-01-01T00:00:0${index}.500Z`);
    await store.writeDeadline('run_future', 'tenant-b', '2999-01-01T00:00:00.000Z');
    // A deadline moved (upserted by _id, not added) and one cleared (deleted).
    await store.writeDeadline('run_moved', 'tenant-b', '2026-01-01T00:00:00.000Z');
    await store.writeDeadline('run_moved', 'tenant-b', '2999-01-01T00:00:00.000Z');
    await store.writeDeadline('run_cleared', 'tenant-b', '2026-01-01T00:00:00.000Z');
    await store.writeDeadline('run_cleared', 'tenant-b', null);
    // Lowered (what the orchestrator writes after a transition, `$min`): a later due time leaves the earlier one.
    await store.lowerDeadline('run_lowered', 'tenant-b', '2999-06-01T00:00:00.000Z');
    await store.lowerDeadline('run_lowered', 'tenant-b', '2999-01-01T00:00:00.000Z');
    await store.lowerDeadline('run_lowered', 'tenant-b', '2999-03-01T00:00:00.000Z');
    expect(await db.collection('run_deadlines').findOne({ _id: 'deadline:run_lowered' as never })).toMatchObject({ kind: 'deadline', runId: 'run_lowered', tenantId: 'tenant-b', dueAt: '2999-01-01T00:00:00.000Z' });
    // Outbox items of new runs are another kind: never returned as deadlines.
    await store.insertWork({ _id: 'outbox:run_new', kind: 'outbox', runId: 'run_new', tenantId: 'tenant-b', dueAt: deadline });
    const seen: string[] = [];
    let after: { key: string; id: string } | undefined;
    for (;;) {
      const page = await store.findDueWork('deadline', '2026-06-01T00:00:00.000Z', 500, after);
      seen.push(...page.map((item) => item.runId));
      if (page.length < 500) break;
      after = { key: page.at(-1)!.dueAt, id: page.at(-1)!._id };
    }
    expect(seen).toHaveLength(530);
    expect(new Set(seen).size).toBe(530);
    expect(seen.slice(-10)).toEqual(Array.from({ length: 10 }, (_, index) => `run_e${index}`));
    expect(await db.collection('run_deadlines').countDocuments({ runId: 'run_moved' })).toBe(1);
    // The deadline watermark's query: the earliest deadline after a time.
    expect(await store.earliestDueAfter('deadline', '2026-06-01T00:00:00.000Z')).toBe('2999-01-01T00:00:00.000Z');
    expect(await store.earliestDueAfter('deadline', '2999-01-01T00:00:00.000Z')).toBeNull();
    // Deadline items an older version wrote into run_work move to run_deadlines, never over a newer one.
    await db.collection('run_work').insertMany([
      { _id: 'deadline:run_legacy', kind: 'deadline', runId: 'run_legacy', tenantId: 'tenant-b', dueAt: deadline },
      { _id: 'deadline:run_moved', kind: 'deadline', runId: 'run_moved', tenantId: 'tenant-b', dueAt: deadline },
    ] as never[]);
    expect(await store.moveLegacyDeadlines()).toBe(2);
    expect(await db.collection('run_work').countDocuments({ kind: 'deadline' })).toBe(0);
    expect((await db.collection('run_deadlines').findOne({ _id: 'deadline:run_legacy' as never }))?.dueAt).toBe(deadline);
    expect((await db.collection('run_deadlines').findOne({ _id: 'deadline:run_moved' as never }))?.dueAt).toBe('2999-01-01T00:00:00.000Z');
    await store.writeDeadline('run_legacy', 'tenant-b', null);

    await db.collection('run_work').insertMany(
      Array.from({ length: 210 }, (_, index) => ({ _id: `outbox:run_u${String(index).padStart(4, '0')}`, kind: 'outbox', runId: `run_u${index}`, tenantId: 'tenant-a', dueAt: deadline })) as never[],
    );
    const unpublished: string[] = [];
    let cursor: { key: string; id: string } | undefined;
    for (;;) {
      const page = await store.findDueWork('outbox', '2026-06-01T00:00:00.000Z', 200, cursor);
      unpublished.push(...page.map((item) => item._id));
      if (page.length < 200) break;
      cursor = { key: page.at(-1)!.dueAt, id: page.at(-1)!._id };
    }
    expect(new Set(unpublished).size).toBe(211);
    await db.dropDatabase();
  });

  it('a lock is released only by the run that holds it, found by its _id without a scan (the local FerretDB build pushes the _id down)', { timeout: 60_000 }, async () => {
    const db = stack.mongo.db(`${stack.db.databaseName}_locks`);
    const collections = getCollections(db);
    const at = new Date();
    await collections.conversationLocks.insertMany(Array.from({ length: 2_000 }, (_, index) => ({ _id: `tenant-a:conv_${index}`, runId: `run_${index}`, at })) as never[]);
    // What the orchestrator's terminal outbox and a creation freeing an ended holder's lock send.
    await collections.writes.conversationLocks.delete('tenant-a:conv_1990', { runId: 'run_other' });
    expect(await collections.conversationLocks.findOne({ _id: 'tenant-a:conv_1990' } as never)).toMatchObject({ runId: 'run_1990' });
    await collections.writes.conversationLocks.delete('tenant-a:conv_1990', { runId: 'run_1990' });
    expect(await collections.conversationLocks.findOne({ _id: 'tenant-a:conv_1990' } as never)).toBeNull();
    expect(await collections.conversationLocks.countDocuments({})).toBe(1_999);
    // The filter `{ _id, runId }` is looked up by its _id (FerretDB 1.24 as released scanned the
    // whole collection for it: 200 ms a delete at 20,000 locks). A scan shows as `SCAN <table>`
    // (FerretDB/SQLite), `Seq Scan` (FerretDB/PostgreSQL) or `COLLSCAN` (MongoDB).
    const plan = JSON.stringify(await collections.conversationLocks.find({ _id: 'tenant-a:conv_5', runId: 'run_5' } as never).explain());
    expect(plan).not.toMatch(/detail=SCAN |Seq Scan|COLLSCAN/);
    await db.dropDatabase();
  });

  it('the store answers 300 updates at once (FerretDB 1.24 as released deadlocked from 100: the local build reads before it writes)', { timeout: 60_000 }, async () => {
    // Each on its own connection, all open before the updates start, so the server gets them at
    // once; matched by a field FerretDB cannot push down, so each query reads for a while. An
    // update of FerretDB 1.24 as released held one of its 100 pooled SQLite connections for its
    // query while it waited for a second one for its write: 100 of them waited for good, and so
    // did every command after them (the whole stack stopped under the approvals bench). Their
    // writes then queue for the database's one writer connection (the local build's writer
    // queue): on a loaded machine that queue runs past 10 s, and must answer every one of them,
    // not fail the last with "database is locked" (`abide7` did, `docs/decisions.md`).
    const client = new MongoClient(stack.mongoUrl, { minPoolSize: 300, maxPoolSize: 300, maxConnecting: 300 });
    await client.connect();
    const db = client.db(`${stack.db.databaseName}_updates`);
    try {
      const items = db.collection<{ _id: string; key: string; n: number }>('items');
      await items.insertMany(Array.from({ length: 2_000 }, (_, index) => ({ _id: `item_${index}`, key: `key_${index}`, n: 0 })));
      await Promise.all(Array.from({ length: 300 }, () => db.command({ ping: 1 })));
      const updated = await Promise.all(Array.from({ length: 300 }, (_, index) => items.updateOne({ key: `key_${index}` }, { $set: { n: 1 } })));
      expect(updated.filter((result) => result.modifiedCount === 1)).toHaveLength(300);
      const upserted = await Promise.all(Array.from({ length: 300 }, (_, index) => items.updateOne({ key: `new_${index}` }, { $set: { n: 2 } }, { upsert: true })));
      expect(upserted.filter((result) => result.upsertedCount === 1)).toHaveLength(300);
      expect(await items.countDocuments({ n: { $gt: 0 } })).toBe(600);
    } finally {
      await db.dropDatabase();
      await client.close();
    }
  });
});

describe('provisioning applies changed settings (issue 10, finding 1)', () => {
  let nats: AuthNats;

  beforeAll(async () => {
    nats = await startAuthNats();
  });

  afterAll(async () => {
    await nats?.stop();
  });

  it("serves more event readers at once than nats-server's default cap of 1,000 consumers per stream", { timeout: 120_000 }, async () => {
    const settings: JetStreamSettings = { NATS_URL: nats.url, JS_REPLICAS: 1, JS_DUPLICATE_WINDOW: 10 * 60_000, EVENTS_MAX_AGE: 86_400_000, EVENTS_MAX_BYTES: 1024 ** 3 };
    await provisionJetStream(await nats.connectAs('orchestrator'), settings, { streams: [streams.runEvents], consumers: [], buckets: [] }, createLogger('provisioning-test', 'silent'));
    const jsm = await jetstreamManager(await nats.connectAs('admin'));
    // Ephemeral readers as the gateway's ordered consumers are: in memory, one per subscription.
    const readers = 1_050;
    for (let index = 0; index < readers; index += 50) {
      await Promise.all(
        Array.from({ length: 50 }, (_, offset) =>
          jsm.consumers.add(streams.runEvents, { name: `reader-${index + offset}`, filter_subject: subjects.runEvents(`run_${index + offset}`), mem_storage: true, inactive_threshold: nanos(60_000) }),
        ),
      );
    }
    expect((await jsm.streams.info(streams.runEvents)).state.consumer_count).toBe(readers);
  });

  it('updates an existing stream, consumer, KV bucket and object store when their settings change', { timeout: 60_000 }, async () => {
    const logger = createLogger('provisioning-test', 'silent');
    const connection = await nats.connectAs('orchestrator');
    const wanted = {
      streams: [streams.runEvents, streams.runInbox],
      consumers: [consumers.orchestrator],
      buckets: [buckets.runControl],
      objectStores: ['PAYLOADS' as const],
    };
    const first: JetStreamSettings = { NATS_URL: nats.url, JS_REPLICAS: 1, JS_DUPLICATE_WINDOW: 10 * 60_000, EVENTS_MAX_AGE: 7 * 86_400_000, EVENTS_MAX_BYTES: 1024 ** 3 };
    await provisionJetStream(connection, first, wanted, logger);
    const jsm = await jetstreamManager(await nats.connectAs('admin'));
    expect((await jsm.streams.info(streams.runEvents)).config).toMatchObject({ max_age: nanos(7 * 86_400_000), max_bytes: 1024 ** 3, max_msg_size: 1_048_576, discard: 'old', max_consumers: eventsMaxConsumers });

    // An operator (or an older version) left the consumer with another ack wait.
    await jsm.consumers.update(streams.runInbox, consumers.orchestrator, { ack_wait: nanos(5_000) });
    expect((await jsm.consumers.info(streams.runInbox, consumers.orchestrator)).config.ack_wait).toBe(nanos(5_000));

    // A stream an older version created left `max_consumers` unset: the server's default of
    // 1,000 then caps the readers; the next provisioning sets it.
    const { max_consumers: _unset, ...olderEvents } = (await jsm.streams.info(streams.runEvents)).config;
    await jsm.streams.delete(streams.runEvents);
    await jsm.streams.add(olderEvents);
    expect((await jsm.streams.info(streams.runEvents)).config.max_consumers).toBe(-1);

    const second: JetStreamSettings = { ...first, EVENTS_MAX_AGE: 3 * 86_400_000, EVENTS_MAX_BYTES: 512 * 1024 ** 2 };
    await provisionJetStream(connection, second, wanted, logger);
    expect((await jsm.streams.info(streams.runEvents)).config).toMatchObject({ max_age: nanos(3 * 86_400_000), max_bytes: 512 * 1024 ** 2, max_consumers: eventsMaxConsumers });
    expect((await jsm.consumers.info(streams.runInbox, consumers.orchestrator)).config.ack_wait).toBe(nanos(consumerPolicies.orchestrator.ackWaitMs));
    expect((await jsm.streams.info(`KV_${buckets.runControl}`)).config.max_age).toBe(nanos(3 * 86_400_000));
    expect((await jsm.streams.info('OBJ_PAYLOADS')).config.max_age).toBe(nanos(3 * 86_400_000));
  });
});
