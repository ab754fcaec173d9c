import { setTimeout as sleep } from 'node:timers/promises';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { createServer, request as httpRequest, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../../scripts/lib/servers.ts';
import { fullReplay, waitForStatus, type ClientEvent } from './harness/run-checks.ts';
import { repoRoot } from './harness/service-process.ts';
import { Stack, testKeys } from './harness/stack.ts';

/** One JSON-RPC message the MCP server received through the recording proxy, and its HTTP answer. */
type SeenMessage = {
  method: string | undefined;
  id: unknown;
  params: any;
  headers: IncomingHttpHeaders;
  /** The server's HTTP status for the POST that carried it (set when the answer starts). */
  status?: number;
};

const everythingEntry = join(repoRoot, 'node_modules', '@modelcontextprotocol', 'server-everything', 'dist', 'index.js');

/**
 * `@modelcontextprotocol/server-everything` (the MCP project's reference server, from npm) over
 * streamable HTTP, as a separate process on a free loopback port (`PORT`, path `/mcp`).
 */
async function startEverythingServer(): Promise<{ port: number; process: ChildProcess; output: () => string; stop: () => Promise<void> }> {
  const port = await freePort();
  const child = spawn(process.execPath, [everythingEntry, 'streamableHttp'], { env: { PATH: process.env.PATH ?? '', PORT: String(port) }, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`server-everything did not start:\n${output}`)), 20_000);
    child.stderr!.on('data', (chunk: Buffer) => {
      output += chunk.toString('utf8');
      if (output.includes(`listening on port ${port}`)) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.on('exit', (code) => reject(new Error(`server-everything exited with ${code}:\n${output}`)));
  });
  return {
    port,
    process: child,
    output: () => output,
    stop: async () => {
      if (child.exitCode !== null) return;
      const exited = new Promise((resolve) => child.once('exit', resolve));
      child.kill('SIGKILL');
      await exited;
    },
  };
}

/**
 * A loopback HTTP proxy in front of the MCP server that records every JSON-RPC message POSTed to
 * it (and the server's status for it), streaming answers (SSE) through untouched: what the server
 * saw, observed from outside both Abide and the server.
 */
async function startRecordingProxy(upstreamPort: number) {
  const seen: SeenMessage[] = [];
  const server: Server = createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      const body = Buffer.concat(chunks);
      const recorded: SeenMessage[] = [];
      if (request.method === 'POST' && body.length > 0) {
        const parsed = JSON.parse(body.toString('utf8')) as unknown;
        for (const message of Array.isArray(parsed) ? parsed : [parsed]) {
          const entry = { method: message.method, id: message.id, params: message.params, headers: request.headers };
          recorded.push(entry);
          seen.push(entry);
        }
      }
      const upstream = httpRequest(
        { host: '127.0.0.1', port: upstreamPort, method: request.method, path: request.url, headers: request.headers },
        (answer) => {
          for (const entry of recorded) entry.status = answer.statusCode;
          response.writeHead(answer.statusCode ?? 502, answer.headers);
          answer.pipe(response);
        },
      );
      upstream.on('error', () => response.destroy());
      response.on('close', () => upstream.destroy());
      upstream.end(body);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    seen,
    close: async () => {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** Polls `condition` (a record of what a server saw) until it holds. */
async function until<T>(what: string, condition: () => T | undefined, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = condition();
    if (value !== undefined && value !== false) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/**
 * Issue 13: MCP servers as durable, approvable tools, against a real third-party MCP server and
 * every Abide service as a separate process. The tool-worker reaches the server only through the
 * recording proxy, the one destination `TOOL_EGRESS_ALLOW` names.
 */
describe('MCP servers as tools', () => {
  const tokenA = `Bearer mcp-a-${randomBytes(8).toString('hex')}`;
  let everything: Awaited<ReturnType<typeof startEverythingServer>>;
  let proxy: Awaited<ReturnType<typeof startRecordingProxy>>;
  let stack: Stack;
  let mcpUrl: string;

  beforeAll(async () => {
    everything = await startEverythingServer();
    proxy = await startRecordingProxy(everything.port);
    mcpUrl = `http://127.0.0.1:${proxy.port}/mcp`;
    const secretsDir = mkdtempSync(join(tmpdir(), 'abide-mcp-secrets-'));
    mkdirSync(join(secretsDir, 'tenant-a'));
    mkdirSync(join(secretsDir, 'tenant-b'));
    writeFileSync(join(secretsDir, 'tenant-a', 'MCP_TOKEN'), `${tokenA}\n`);
    // The operator's one stdio server: the same reference server, spoken to over stdin/stdout.
    const stdioServers = { everything: { command: process.execPath, args: [everythingEntry, 'stdio'] } };
    stack = await Stack.start({ env: { TENANT_SECRETS_DIR: secretsDir, TOOL_EGRESS_ALLOW: `127.0.0.1:${proxy.port}`, MCP_STDIO_SERVERS: JSON.stringify(stdioServers) } });
  });

  afterAll(async () => {
    await stack?.stop();
    await proxy?.close();
    await everything?.stop();
  });

  const server = () => ({ transport: 'streamable-http', url: mcpUrl, headersFromSecrets: { authorization: 'MCP_TOKEN' } });

  function scripted(steps: unknown[]) {
    return { provider: 'scripted', steps };
  }

  async function putAgent(key: string, agentId: string, body: unknown) {
    const response = await stack.api(key, 'PUT', `/v1/agents/${agentId}`, body);
    expect(response.status, `${JSON.stringify(response.body)}\n${response.status === 200 ? '' : stack.logs(20)}`).toBe(200);
    return response.body;
  }

  async function startRun(key: string, agentId: string): Promise<string> {
    const created = await stack.api(key, 'POST', '/v1/runs', { agentId, input: 'go' });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    return created.body.runId as string;
  }

  const toolCallsOf = (runId: string) => proxy.seen.filter((message) => message.method === 'tools/call' && message.params?._meta?.['abide/idempotency-key'] === `${runId}:s0c0`);

  it('creates an agent from the server’s tools/list: each tool named <server>__<tool>, its schema stored with the version', async () => {
    const agent = await putAgent(testKeys.a, 'mcp-all', { model: scripted([{ text: 'hi' }]), tools: [{ kind: 'mcp', name: 'everything', server: server() }] });
    const names = (agent.tools as { name: string }[]).map((tool) => tool.name);
    expect(names).toEqual(expect.arrayContaining(['everything__echo', 'everything__get-sum', 'everything__trigger-long-running-operation']));
    expect(names.every((name) => name.startsWith('everything__'))).toBe(true);
    const sum = agent.tools.find((tool: { name: string }) => tool.name === 'everything__get-sum');
    expect(sum).toMatchObject({
      kind: 'mcp',
      description: 'Returns the sum of two numbers',
      inputSchema: { type: 'object', properties: { a: { type: 'number' }, b: { type: 'number' } } },
      mcp: { server: server(), tool: 'get-sum' },
      timeoutMs: 1_800_000,
      needsApproval: false,
    });
    // The listing went through the tenant's secret, and the stored version is what a run is pinned to.
    expect(proxy.seen.some((message) => message.method === 'tools/list' && message.headers.authorization === tokenA)).toBe(true);
    const stored = await stack.db.collection('agent_versions').findOne({ _id: `tenant-a:mcp-all:${agent.version}` as never });
    expect(stored?.tools.map((tool: { name: string }) => tool.name)).toEqual(names);

    const missing = await stack.api(testKeys.a, 'PUT', '/v1/agents/mcp-missing', {
      model: scripted([{ text: 'hi' }]),
      tools: [{ kind: 'mcp', name: 'everything', server: server(), tools: ['echo', 'no-such-tool'] }],
    });
    expect(missing.status).toBe(400);
    expect(missing.body.error).toEqual({ code: 'invalid_request', message: 'body.tools.0.tools: the MCP server has no tool "no-such-tool"' });
  });

  it('a run calls an MCP tool and completes with its result; the idempotency key travels in _meta', async () => {
    await putAgent(testKeys.a, 'mcp-sum', {
      model: scripted([{ toolCalls: [{ toolName: 'everything__get-sum', args: { a: 2, b: 3 } }] }, { text: 'Summed.' }]),
      tools: [{ kind: 'mcp', name: 'everything', server: server(), tools: ['get-sum'] }],
    });
    const runId = await startRun(testKeys.a, 'mcp-sum');
    const events = await fullReplay(stack, testKeys.a, runId);
    expect(events.find((event) => event.type === 'tool.result')).toMatchObject({ toolCallId: 's0c0', toolName: 'everything__get-sum', result: { text: 'The sum of 2 and 3 is 5.' } });
    expect(events.at(-1)).toMatchObject({ type: 'run.completed', output: 'Summed.' });
    const calls = toolCallsOf(runId);
    expect(calls).toHaveLength(1);
    expect(calls[0]!.params).toMatchObject({ name: 'get-sum', arguments: { a: 2, b: 3 } });
    expect(calls[0]!.headers.authorization).toBe(tokenA);
  });

  it('a call that needs approval suspends the run, and runs once approved', async () => {
    await putAgent(testKeys.a, 'mcp-approve', {
      model: scripted([{ toolCalls: [{ toolName: 'everything__echo', args: { message: 'approved hello' } }] }, { text: 'Echoed.' }]),
      tools: [{ kind: 'mcp', name: 'everything', server: server(), tools: ['echo'], needsApproval: true }],
    });
    const runId = await startRun(testKeys.a, 'mcp-approve');
    const suspended = await waitForStatus(stack, testKeys.a, runId, ['suspended']);
    expect(suspended.pendingApprovals).toEqual([expect.objectContaining({ toolCallId: 's0c0', toolName: 'everything__echo', args: { message: 'approved hello' } })]);
    expect(toolCallsOf(runId)).toHaveLength(0);
    const decided = await stack.api(testKeys.a, 'POST', `/v1/runs/${runId}/approvals/s0c0`, { approved: true });
    expect(decided.status).toBe(202);
    const events = await fullReplay(stack, testKeys.a, runId);
    expect(events.find((event) => event.type === 'tool.result')).toMatchObject({ toolName: 'everything__echo', result: { text: 'Echo: approved hello' } });
    expect(events.at(-1)).toMatchObject({ type: 'run.completed', output: 'Echoed.' });
    expect(toolCallsOf(runId)).toHaveLength(1);
  });

  it('a long call cancelled mid-way: the run is cancelled and the server receives notifications/cancelled for that request', async () => {
    await putAgent(testKeys.a, 'mcp-long', {
      model: scripted([{ toolCalls: [{ toolName: 'everything__trigger-long-running-operation', args: { duration: 60, steps: 60 } }] }, { text: 'Never.' }]),
      tools: [{ kind: 'mcp', name: 'everything', server: server(), tools: ['trigger-long-running-operation'] }],
    });
    const runId = await startRun(testKeys.a, 'mcp-long');
    const [call] = await until('the tools/call to reach the server', () => (toolCallsOf(runId).length > 0 ? toolCallsOf(runId) : undefined));
    const cancelled = await stack.api(testKeys.a, 'POST', `/v1/runs/${runId}/cancel`, {});
    expect(cancelled.status).toBe(202);
    const events = await fullReplay(stack, testKeys.a, runId);
    expect(events.at(-1)!.type).toBe('run.cancelled');
    const notice = await until('notifications/cancelled to reach the server', () =>
      proxy.seen.find((message) => message.method === 'notifications/cancelled' && message.params?.requestId === call!.id && message.status !== undefined),
    );
    // Same session as the call, accepted by the server (202 for a notification).
    expect(notice.headers['mcp-session-id']).toBe(call!.headers['mcp-session-id']);
    expect(notice.status).toBe(202);
    // The operation was far from done (60 s): its result never came back into the run.
    expect(events.some((event: ClientEvent) => event.type === 'tool.result' && event.result?.text?.startsWith('Long running operation completed'))).toBe(false);
  });

  it('a tool-worker SIGKILLed during MCP calls: "fail" gives outcome_unknown without calling again, "retry" calls again with the same idempotency key', async () => {
    const longCall = { toolName: 'everything__trigger-long-running-operation', args: { duration: 4, steps: 4 } };
    for (const policy of ['fail', 'retry'] as const) {
      await putAgent(testKeys.a, `mcp-kill-${policy}`, {
        model: scripted([{ toolCalls: [longCall] }, { text: `Handled (${policy}).` }]),
        tools: [{ kind: 'mcp', name: 'everything', server: server(), tools: ['trigger-long-running-operation'], onOutcomeUnknown: policy }],
      });
    }
    const worker = stack.service('tool-worker');
    const failRun = await startRun(testKeys.a, 'mcp-kill-fail');
    const retryRun = await startRun(testKeys.a, 'mcp-kill-retry');
    await until('both tools/calls to reach the server', () => (toolCallsOf(failRun).length > 0 && toolCallsOf(retryRun).length > 0 ? true : undefined));
    await worker.stop('SIGKILL');
    worker.start();
    await worker.waitReady();
    // The requests come back after their ack_wait; the markers turn stale; each tool's policy decides.
    const replay = (runId: string) =>
      fullReplay(stack, testKeys.a, runId, 150_000).catch((error: Error) => {
        throw new Error(`${error.message}\n${stack.logs()}`);
      });
    const [failEvents, retryEvents] = await Promise.all([replay(failRun), replay(retryRun)]);

    expect(failEvents.find((event) => event.type === 'tool.result')).toMatchObject({ toolCallId: 's0c0', error: { code: 'outcome_unknown' } });
    expect(failEvents.at(-1)).toMatchObject({ type: 'run.completed', output: 'Handled (fail).' });
    expect(toolCallsOf(failRun)).toHaveLength(1);

    expect(retryEvents.find((event) => event.type === 'tool.result')).toMatchObject({
      toolCallId: 's0c0',
      result: { text: 'Long running operation completed. Duration: 4 seconds, Steps: 4.' },
    });
    expect(retryEvents.at(-1)).toMatchObject({ type: 'run.completed', output: 'Handled (retry).' });
    const calls = toolCallsOf(retryRun);
    expect(calls).toHaveLength(2);
    // Same tool, arguments and idempotency key; a new session (the progress token is per session).
    const sent = (call: SeenMessage) => ({ name: call.params.name, arguments: call.params.arguments, key: call.params._meta['abide/idempotency-key'] });
    expect(sent(calls[1]!)).toEqual(sent(calls[0]!));
    expect(sent(calls[0]!).key).toBe(`${retryRun}:s0c0`);
    expect(calls[1]!.headers['mcp-session-id']).not.toBe(calls[0]!.headers['mcp-session-id']);
  }, 200_000);

  it('a stdio server exists only as the operator configured it, by id', async () => {
    await putAgent(testKeys.a, 'mcp-stdio', {
      model: scripted([{ toolCalls: [{ toolName: 'local__get-sum', args: { a: 20, b: 22 } }] }, { text: 'Summed locally.' }]),
      tools: [{ kind: 'mcp', name: 'local', server: { transport: 'stdio', serverId: 'everything' }, tools: ['get-sum'] }],
    });
    const events = await fullReplay(stack, testKeys.a, await startRun(testKeys.a, 'mcp-stdio'));
    expect(events.find((event) => event.type === 'tool.result')).toMatchObject({ toolName: 'local__get-sum', result: { text: 'The sum of 20 and 22 is 42.' } });
    expect(events.at(-1)).toMatchObject({ type: 'run.completed', output: 'Summed locally.' });

    const unknown = await stack.api(testKeys.a, 'PUT', '/v1/agents/mcp-stdio-unknown', {
      model: scripted([{ text: 'hi' }]),
      tools: [{ kind: 'mcp', name: 'local', server: { transport: 'stdio', serverId: 'shell' } }],
    });
    expect(unknown.status).toBe(422);
    expect(unknown.body.error).toEqual({ code: 'mcp_list_failed', message: 'body.tools.0: listing the MCP server\'s tools failed (tool_error: no stdio MCP server "shell" is configured (MCP_STDIO_SERVERS))' });
    // A command is not something a tenant can write.
    const command = await stack.api(testKeys.a, 'PUT', '/v1/agents/mcp-stdio-command', {
      model: scripted([{ text: 'hi' }]),
      tools: [{ kind: 'mcp', name: 'local', server: { transport: 'stdio', command: 'sh', args: ['-c', 'id'] } }],
    });
    expect(command.status).toBe(400);
    expect(command.body.error.code).toBe('invalid_request');
  });

  it('another tenant cannot use the first tenant’s MCP credentials, and never shares its connection', async () => {
    const before = proxy.seen.length;
    const refused = await stack.api(testKeys.b, 'PUT', '/v1/agents/mcp-steal', { model: scripted([{ text: 'hi' }]), tools: [{ kind: 'mcp', name: 'everything', server: server() }] });
    expect(refused.status).toBe(422);
    expect(refused.body.error).toEqual({
      code: 'mcp_list_failed',
      message: 'body.tools.0: listing the MCP server\'s tools failed (secret_not_found: secret "MCP_TOKEN" not found for this tenant)',
    });
    // The secret is resolved before connecting: nothing reached the server for that attempt.
    expect(proxy.seen.length).toBe(before);

    // Without credentials tenant-b gets its own session, never tenant-a's authenticated one.
    await putAgent(testKeys.b, 'mcp-open', { model: scripted([{ text: 'hi' }]), tools: [{ kind: 'mcp', name: 'everything', server: { transport: 'streamable-http', url: mcpUrl }, tools: ['echo'] }] });
    const tenantBMessages = proxy.seen.slice(before);
    expect(tenantBMessages.map((message) => message.method)).toEqual(expect.arrayContaining(['initialize', 'tools/list']));
    expect(tenantBMessages.every((message) => message.headers.authorization === undefined)).toBe(true);
    const sessionsOfA = new Set(proxy.seen.filter((message) => message.headers.authorization === tokenA).map((message) => message.headers['mcp-session-id']));
    const listOfB = tenantBMessages.find((message) => message.method === 'tools/list')!;
    expect(listOfB.headers['mcp-session-id']).toBeDefined();
    expect(sessionsOfA.has(listOfB.headers['mcp-session-id'])).toBe(false);
  });
});
