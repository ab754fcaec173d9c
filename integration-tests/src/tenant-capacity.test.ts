import { setTimeout as sleep } from 'node:timers/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitForStatus } from './harness/run-checks.ts';
import { Stack } from './harness/stack.ts';
import { TestSocket } from './harness/test-socket.ts';

/**
 * Issue 8, findings 6 and 8: capacity is shared fairly. Per-tenant limits on active runs, on
 * in-flight tool calls, on open connections and on event subscriptions hold across replicas
 * (two of every service here), refusing with 429 `rate_limited` + `Retry-After` (an `error` frame
 * for a WebSocket `subscribe` / `run.create`), while other tenants are served.
 */

const limits = { activeRuns: 3, llmCalls: 1, toolCalls: 1, connections: 3, subscriptions: 2 } as const;
const keys = {
  runsA: 'key-runs-a-0123456789abcdef',
  runsB: 'key-runs-b-0123456789abcdef',
  llmBusy: 'key-llm-busy-0123456789abcdef',
  busy: 'key-busy-0123456789abcdef',
  other: 'key-other-0123456789abcdef',
  conn: 'key-conn-0123456789abcdef',
  subs: 'key-subs-0123456789abcdef',
} as const;

/**
 * An HTTP tool that counts the calls in flight per `who` (an argument each agent sets), and
 * holds the calls of `who: "busy"` until `release()`: while held, a busy call occupies its
 * tool-worker slot exactly as a days-long `sleep` would.
 */
async function startCountingTool() {
  const inFlight = new Map<string, number>();
  const maxInFlight = new Map<string, number>();
  const received: string[] = [];
  let held: (() => void)[] = [];
  let releasing = false;
  const waiters: { predicate: () => boolean; resolve: () => void }[] = [];
  const check = () => {
    for (const waiter of [...waiters]) {
      if (waiter.predicate()) {
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.resolve();
      }
    }
  };
  const server: Server = createServer((request: IncomingMessage, response: ServerResponse) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      const who = String((JSON.parse(Buffer.concat(chunks).toString('utf8') || '{}') as { who?: unknown }).who);
      received.push(who);
      const now = (inFlight.get(who) ?? 0) + 1;
      inFlight.set(who, now);
      maxInFlight.set(who, Math.max(maxInFlight.get(who) ?? 0, now));
      const answer = () => {
        inFlight.set(who, (inFlight.get(who) ?? 1) - 1);
        response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ done: who }));
        check();
      };
      check();
      if (who !== 'busy') answer();
      // Released: still held a moment, so calls that overlapped would be counted as such.
      else if (releasing) setTimeout(answer, 300);
      else held.push(answer);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  return {
    url: `http://127.0.0.1:${typeof address === 'object' && address ? address.port : 0}`,
    received,
    maxInFlight,
    inFlight,
    until(predicate: () => boolean, timeoutMs = 60_000): Promise<void> {
      if (predicate()) return Promise.resolve();
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`tool server condition not met; received ${JSON.stringify(received)}`)), timeoutMs);
        waiters.push({ predicate, resolve: () => (clearTimeout(timer), resolve()) });
      });
    },
    release() {
      releasing = true;
      for (const answer of held) answer();
      held = [];
    },
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

describe('per-tenant capacity across replicas', () => {
  let stack: Stack;
  let tool: Awaited<ReturnType<typeof startCountingTool>>;
  let gateways: string[];

  const approvalAgent = {
    model: { provider: 'scripted', steps: [{ text: 'Asking.', toolCalls: [{ toolName: 'echo', args: { text: 'hi' } }] }, { text: 'Done.' }] },
    tools: [{ name: 'echo', kind: 'builtin', needsApproval: true, inputSchema: { type: 'object' } }],
  };
  const plainAgent = { model: { provider: 'scripted', steps: [{ text: 'Hello.' }] }, tools: [] };
  const holdAgent = (who: string) => ({
    model: { provider: 'scripted', steps: [{ toolCalls: [{ toolName: 'hold', args: { who } }] }, { text: `Held for ${who}.` }] },
    tools: [{ name: 'hold', kind: 'http', inputSchema: { type: 'object' }, http: { url: `${tool.url}/hold` } }],
  });

  /** A call to gateway replica `replica`. */
  async function api(replica: number, key: string, method: string, path: string, body?: unknown) {
    const response = await fetch(`${gateways[replica]}${path}`, {
      method,
      headers: { authorization: `Bearer ${key}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    const text = await response.text();
    return { status: response.status, headers: response.headers, body: text.startsWith('{') ? JSON.parse(text) : text };
  }

  const socketOn = (replica: number, key: string) => TestSocket.open(`${gateways[replica]!.replace('http', 'ws')}/v1/ws`, { authorization: `Bearer ${key}` });

  async function putAgent(key: string, agentId: string, agent: unknown) {
    const put = await api(0, key, 'PUT', `/v1/agents/${agentId}`, agent);
    expect(put.status, JSON.stringify(put.body)).toBe(200);
  }

  async function createRun(replica: number, key: string, agentId: string) {
    const created = await api(replica, key, 'POST', '/v1/runs', { agentId, input: 'go' });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    return created.body.runId as string;
  }

  beforeAll(async () => {
    tool = await startCountingTool();
    stack = await Stack.start({
      replicas: { gateway: 2, orchestrator: 2, 'llm-worker': 2, 'tool-worker': 2 },
      apiKeys: Object.entries(keys)
        .map(([name, key]) => `${key}:tenant-${name}`)
        .join(','),
      env: {
        TENANT_MAX_ACTIVE_RUNS: String(limits.activeRuns),
        TENANT_MAX_LLM_CALLS: String(limits.llmCalls),
        TENANT_MAX_TOOL_CALLS: String(limits.toolCalls),
        TENANT_MAX_CONNECTIONS: String(limits.connections),
        TENANT_MAX_SUBSCRIPTIONS: String(limits.subscriptions),
        // Two worker slots of each kind in all: without the per-tenant caps, one tenant takes both.
        TOOL_CONCURRENCY: '1',
        LLM_CONCURRENCY: '1',
      },
    });
    gateways = [0, 1].map((replica) => stack.service('gateway', replica).healthUrl);
  });

  afterAll(async () => {
    await stack?.stop();
    await tool?.close();
  });

  it('refuses a run over the active-run limit with 429 and Retry-After on either gateway, serves another tenant, and frees the slots when runs end', async () => {
    await putAgent(keys.runsA, 'asker', approvalAgent);
    await putAgent(keys.runsB, 'plain', plainAgent);
    // Suspended runs awaiting approval are active: they hold their slot until they end.
    const runs: string[] = [];
    for (let index = 0; index < limits.activeRuns; index += 1) runs.push(await createRun(index % 2, keys.runsA, 'asker'));
    for (const runId of runs) await waitForStatus(stack, keys.runsA, runId, ['suspended']);

    for (const replica of [0, 1]) {
      const refused = await api(replica, keys.runsA, 'POST', '/v1/runs', { agentId: 'asker', input: 'one more' });
      expect([refused.status, refused.body.error?.code], `gateway ${replica}`).toEqual([429, 'rate_limited']);
      expect(Number(refused.headers.get('retry-after'))).toBeGreaterThan(0);
    }
    const socket = await socketOn(1, keys.runsA);
    socket.send({ type: 'run.create', requestId: 'over', agentId: 'asker', input: 'over the limit' });
    const frame = await socket.waitFor((candidate) => candidate.type === 'error' && candidate.requestId === 'over');
    expect(frame.code).toBe('rate_limited');
    socket.close();
    // Nothing of the refused creations was left behind: still exactly the limit's runs.
    const listed = await api(0, keys.runsA, 'GET', '/v1/runs?limit=50');
    expect(listed.body.runs.map((run: { runId: string }) => run.runId).sort()).toEqual([...runs].sort());

    // Another tenant is not affected.
    const other = await createRun(1, keys.runsB, 'plain');
    expect((await waitForStatus(stack, keys.runsB, other, ['completed', 'failed'])).status).toBe('completed');

    // The runs end (deny all three): their slots are released and the tenant creates again, on both gateways.
    for (const runId of runs) {
      const decided = await api(0, keys.runsA, 'POST', `/v1/runs/${runId}/approvals/s0c0`, { approved: false });
      expect(decided.status, JSON.stringify(decided.body)).toBe(202);
    }
    for (const runId of runs) expect((await waitForStatus(stack, keys.runsA, runId, ['completed', 'failed', 'cancelled'])).status).toBe('completed');
    const again = [await createRun(0, keys.runsA, 'asker'), await createRun(1, keys.runsA, 'asker')];
    for (const runId of again) await waitForStatus(stack, keys.runsA, runId, ['suspended']);
  });

  it("keeps a tenant's in-flight tool calls at its cap across both tool-workers while another tenant's call runs, and completes every run", async () => {
    await putAgent(keys.busy, 'holder', holdAgent('busy'));
    await putAgent(keys.other, 'holder', holdAgent('other'));
    const busyRuns: string[] = [];
    for (let index = 0; index < limits.activeRuns; index += 1) busyRuns.push(await createRun(index % 2, keys.busy, 'holder'));
    // One busy call is held by the tool server; the others wait for the tenant's slot.
    await tool.until(() => (tool.inFlight.get('busy') ?? 0) >= 1);

    const other = await createRun(1, keys.other, 'holder');
    const otherView = await waitForStatus(stack, keys.other, other, ['completed', 'failed'], 60_000);
    expect(otherView.status).toBe('completed');
    // Ordering, not timing: the other tenant's call completed while the busy tenant's first call is
    // still held and its other calls have not even started.
    expect(tool.received.filter((who) => who === 'busy')).toHaveLength(1);
    expect(tool.inFlight.get('busy')).toBe(1);
    for (const runId of busyRuns) expect((await api(0, keys.busy, 'GET', `/v1/runs/${runId}`)).body.status).toBe('running');

    tool.release();
    for (const runId of busyRuns) {
      const view = await waitForStatus(stack, keys.busy, runId, ['completed', 'failed', 'cancelled'], 90_000);
      // Waiting for capacity spent no deliveries: no run failed with delivery_exhausted.
      expect(view.status, `${runId}: ${JSON.stringify(view.error)}`).toBe('completed');
    }
    expect(tool.received.filter((who) => who === 'busy')).toHaveLength(limits.activeRuns);
    expect(tool.maxInFlight.get('busy')).toBe(limits.toolCalls);
  });

  it("never runs more of a tenant's model calls at once than its cap across both llm-workers, and completes every run", async () => {
    // Each model call streams 8 chunks 120 ms apart (about a second).
    await putAgent(keys.llmBusy, 'slow', { model: { provider: 'scripted', steps: [{ text: 'abcdefgh' }], chunkSize: 1, delayMs: 120 }, tools: [] });
    const runs = [await createRun(0, keys.llmBusy, 'slow'), await createRun(1, keys.llmBusy, 'slow'), await createRun(0, keys.llmBusy, 'slow')];
    const calls: { start: number; end: number }[] = [];
    for (const runId of runs) {
      const view = await waitForStatus(stack, keys.llmBusy, runId, ['completed', 'failed', 'cancelled'], 90_000);
      expect(view.status, `${runId}: ${JSON.stringify(view.error)}`).toBe('completed');
      const events = await sseEvents(gateways[0]!, keys.llmBusy, runId);
      const started = events.find((event) => event.type === 'llm.step.started')!;
      const deltas = events.filter((event) => event.type === 'message.delta');
      expect(deltas.length).toBeGreaterThan(0);
      // A model call's span, as its llm-worker reported it: from its start to its last delta, both inside the tenant's slot.
      calls.push({ start: Date.parse(started.ts), end: Date.parse(deltas.at(-1)!.ts) });
    }
    calls.sort((left, right) => left.start - right.start);
    for (let index = 1; index < calls.length; index += 1) {
      expect(calls[index]!.start, `model call ${index} started before call ${index - 1} ended`).toBeGreaterThanOrEqual(calls[index - 1]!.end);
    }
  });

  it('refuses SSE streams and WebSockets over the connection cap with 429, across gateways, and accepts again once one closes', async () => {
    await putAgent(keys.conn, 'asker', approvalAgent);
    const runId = await createRun(0, keys.conn, 'asker');
    await waitForStatus(stack, keys.conn, runId, ['suspended']);

    const first = await socketOn(0, keys.conn);
    const second = await socketOn(1, keys.conn);
    // A suspended run's SSE stream stays open: the third connection.
    const sseAbort = new AbortController();
    const sse = await fetch(`${gateways[1]}/v1/runs/${runId}/events`, { headers: { authorization: `Bearer ${keys.conn}` }, signal: sseAbort.signal });
    expect(sse.status).toBe(200);
    const reader = sse.body!.getReader();
    await reader.read(); // ': connected'

    await expect(socketOn(0, keys.conn)).rejects.toThrow('upgrade refused: 429');
    await expect(socketOn(1, keys.conn)).rejects.toThrow('upgrade refused: 429');
    for (const replica of [0, 1]) {
      const refused = await api(replica, keys.conn, 'GET', `/v1/runs/${runId}/events`);
      expect([refused.status, refused.body.error?.code]).toEqual([429, 'rate_limited']);
      expect(Number(refused.headers.get('retry-after'))).toBeGreaterThan(0);
    }
    // Another tenant connects meanwhile.
    (await socketOn(0, keys.other)).close();

    first.close();
    await first.closed;
    const reopened = await retryUntil(() => socketOn(1, keys.conn));
    reopened.close();
    second.close();
    sseAbort.abort();
    await reader.cancel().catch(() => undefined);
  });

  it('answers a subscribe over the subscription cap with an error frame, across gateways, and accepts it once another ends', async () => {
    await putAgent(keys.subs, 'asker', approvalAgent);
    const runs = [await createRun(0, keys.subs, 'asker'), await createRun(1, keys.subs, 'asker'), await createRun(0, keys.subs, 'asker')];
    for (const runId of runs) await waitForStatus(stack, keys.subs, runId, ['suspended']);
    const [firstRun, secondRun, thirdRun] = runs as [string, string, string];

    const left = await socketOn(0, keys.subs);
    const right = await socketOn(1, keys.subs);
    left.send({ type: 'subscribe', runId: firstRun });
    right.send({ type: 'subscribe', runId: secondRun });
    await left.waitFor((frame) => frame.type === 'event' && frame.runId === firstRun && frame.event.type === 'run.suspended');
    await right.waitFor((frame) => frame.type === 'event' && frame.runId === secondRun && frame.event.type === 'run.suspended');

    right.send({ type: 'subscribe', runId: thirdRun });
    const refused = await right.waitFor((frame) => frame.type === 'error' && frame.runId === thirdRun);
    expect(refused.code).toBe('rate_limited');
    expect(right.events(thirdRun)).toHaveLength(0);
    // The socket stays open and usable.
    right.send({ type: 'ping' });
    await right.waitFor((frame) => frame.type === 'pong');

    left.send({ type: 'unsubscribe', runId: firstRun });
    await retryUntil(async () => {
      const before = right.frames.length;
      right.send({ type: 'subscribe', runId: thirdRun });
      const answer = await right.waitFor((frame) => right.frames.indexOf(frame) >= before && frame.runId === thirdRun && (frame.type === 'error' || frame.type === 'event'));
      if (answer.type === 'error') throw new Error(`still refused: ${answer.code}`);
    });
    left.close();
    right.close();
  });
});

/** Every event of an ended run, read as Server-Sent Events. */
async function sseEvents(gateway: string, key: string, runId: string): Promise<{ type: string; ts: string; [field: string]: unknown }[]> {
  const response = await fetch(`${gateway}/v1/runs/${runId}/events`, { headers: { authorization: `Bearer ${key}` } });
  expect(response.status).toBe(200);
  const text = await response.text();
  return text
    .split('\n')
    .filter((line) => line.startsWith('data: '))
    .map((line) => JSON.parse(line.slice('data: '.length)));
}

/** Retries `attempt` until it resolves: a released slot frees asynchronously (the release is a KV delete). */
async function retryUntil<Value>(attempt: () => Promise<Value>, timeoutMs = 20_000): Promise<Value> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await attempt();
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await sleep(200);
    }
  }
}
