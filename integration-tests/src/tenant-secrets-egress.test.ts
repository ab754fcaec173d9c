import { randomBytes } from 'node:crypto';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import { createServer as createTcpServer, type AddressInfo, type Server as TcpServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../../scripts/lib/servers.ts';
import { startHttpToolServer } from './harness/http-tool-server.ts';
import { fullReplay, type ClientEvent } from './harness/run-checks.ts';
import { Stack, testKeys } from './harness/stack.ts';

type Seen = { path: string; headers: IncomingMessage['headers']; body: string };

/** An HTTP server the test runs and records everything sent to it; `answer` picks the reply. */
async function startRecorder(answer: (request: Seen) => { status: number; body: string }) {
  const seen: Seen[] = [];
  const server: Server = createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      const entry = { path: request.url ?? '/', headers: request.headers, body: Buffer.concat(chunks).toString('utf8') };
      seen.push(entry);
      const reply = answer(entry);
      response.writeHead(reply.status, { 'content-type': 'application/json' }).end(reply.body);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    seen,
    /** Everything it received, as one string, to search for a value that must never arrive. */
    everything: () => JSON.stringify(seen),
    close: async () => {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** A port that is open but does not speak HTTP (like NATS: it greets and hangs up). */
async function startNotHttp() {
  const sockets = new Set<Socket>();
  const server: TcpServer = createTcpServer((socket) => {
    sockets.add(socket);
    socket.end('INFO {"server_id":"not-http"}\r\n');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/**
 * Issue 8, findings 1, 2, 3 and 11: secrets belong to a tenant and egress is one policy, checked
 * on the address connected to. Every attack goes through the public API against the real
 * processes; the "attacker" and "internal" servers are run by the test and record what reaches them.
 */
describe('tenant secrets and egress', () => {
  const workerCanary = `worker-canary-${randomBytes(8).toString('hex')}`;
  const crmToken = `crm-token-${randomBytes(8).toString('hex')}`;
  const modelKey = `sk-tenant-a-${randomBytes(8).toString('hex')}`;
  const bodyCanary = `body-canary-${randomBytes(8).toString('hex')}`;
  let stack: Stack;
  let attacker: Awaited<ReturnType<typeof startRecorder>>;
  let internal: Awaited<ReturnType<typeof startRecorder>>;
  let notHttp: Awaited<ReturnType<typeof startNotHttp>>;
  let tool: Awaited<ReturnType<typeof startHttpToolServer>>;
  let closedPort: number;

  beforeAll(async () => {
    const secretsDir = mkdtempSync(join(tmpdir(), 'abide-tenant-secrets-'));
    mkdirSync(join(secretsDir, 'tenant-a'));
    mkdirSync(join(secretsDir, 'tenant-b'));
    writeFileSync(join(secretsDir, 'tenant-a', 'CRM_TOKEN'), `${crmToken}\n`);
    writeFileSync(join(secretsDir, 'tenant-a', 'MODEL_KEY'), `${modelKey}\n`);
    attacker = await startRecorder(() => ({ status: 401, body: JSON.stringify({ error: { message: `no entry: ${bodyCanary}` } }) }));
    internal = await startRecorder(() => ({ status: 200, body: '{"internal":true}' }));
    notHttp = await startNotHttp();
    tool = await startHttpToolServer((call) => ({ body: { ok: true, path: call.path } }));
    closedPort = await freePort();
    const loopback = (...ports: number[]) => ports.map((port) => `127.0.0.1:${port}`).join(',');
    stack = await Stack.start({
      env: {
        TENANT_SECRETS_DIR: secretsDir,
        LLM_EGRESS_ALLOW: loopback(attacker.port, closedPort, notHttp.port),
        TOOL_EGRESS_ALLOW: loopback(Number(new URL(tool.url).port), closedPort, notHttp.port),
      },
      // Variables the workers really have: an agent naming them must get nothing.
      serviceEnv: { 'llm-worker': { LEAK_CANARY: workerCanary }, 'tool-worker': { LEAK_CANARY: workerCanary } },
    });
  });

  afterAll(async () => {
    await stack?.stop();
    await Promise.all([attacker?.close(), internal?.close(), notHttp?.close(), tool?.close()]);
  });

  async function putAgent(key: string, agentId: string, body: unknown) {
    const response = await stack.api(key, 'PUT', `/v1/agents/${agentId}`, body);
    expect(response.status, JSON.stringify(response.body)).toBe(200);
  }

  /** Starts a run and returns its events (up to the terminal one) and its state. */
  async function runToEnd(key: string, agentId: string, timeoutMs = 30_000): Promise<{ events: ClientEvent[]; run: Record<string, any>; terminal: ClientEvent }> {
    const created = await stack.api(key, 'POST', '/v1/runs', { agentId, input: 'go' });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    const events = await fullReplay(stack, key, created.body.runId, timeoutMs);
    const run = (await stack.api(key, 'GET', `/v1/runs/${created.body.runId}`)).body;
    return { events, run, terminal: events.at(-1)! };
  }

  const model = (baseURL: string, apiKeyEnv?: string) => ({ provider: 'openai-compatible', baseURL, model: 'm', ...(apiKeyEnv ? { apiKeyEnv } : {}) });
  const attackerUrl = () => `http://127.0.0.1:${attacker.port}/v1`;

  it('finding 1: apiKeyEnv never reads the llm-worker’s environment; an existing and an unknown name fail alike', async () => {
    const names = ['LEAK_CANARY', 'NATS_URL', 'NO_SUCH_NAME_ANYWHERE'];
    for (const name of names) await putAgent(testKeys.a, `leak-${name.toLowerCase().replaceAll('_', '-')}`, { model: model(attackerUrl(), name) });
    const failures = await Promise.all(names.map((name) => runToEnd(testKeys.a, `leak-${name.toLowerCase().replaceAll('_', '-')}`)));
    for (const [index, { terminal, run }] of failures.entries()) {
      const name = names[index]!;
      expect(terminal.type).toBe('run.failed');
      expect(terminal.error).toEqual({ code: 'secret_not_found', message: `secret "${name}" not found for this tenant` });
      expect(run.error).toEqual(terminal.error);
    }
    // The message for a variable the worker has equals the one for a name that exists nowhere.
    const [canary, nats, unknown] = failures.map(({ terminal }, index) => (terminal.error.message as string).replace(names[index]!, 'NAME'));
    expect(canary).toBe(unknown);
    expect(nats).toBe(unknown);
    // No request carried the canary or the NATS URL (none was even sent: the key is resolved first).
    expect(attacker.everything()).not.toContain(workerCanary);
    expect(attacker.everything()).not.toContain(stack.servers.natsUrl);
    expect(attacker.seen.filter((request) => request.headers.authorization !== undefined)).toEqual([]);
  });

  it('finding 2: a non-2xx body never reaches run.failed or the run; the tenant’s own secret does reach its allowed server', async () => {
    await putAgent(testKeys.a, 'keyed', { model: model(attackerUrl(), 'MODEL_KEY') });
    const { terminal, run } = await runToEnd(testKeys.a, 'keyed');
    // Positive control: the tenant's own secret is the key sent to the server it allowed.
    expect(attacker.seen.map((request) => request.headers.authorization)).toContain(`Bearer ${modelKey}`);
    expect(terminal.type).toBe('run.failed');
    expect(terminal.error).toEqual({ code: 'model_error', message: `HTTP 401 from http://127.0.0.1:${attacker.port}` });
    expect(JSON.stringify(terminal)).not.toContain(bodyCanary);
    expect(JSON.stringify(run)).not.toContain(bodyCanary);
  });

  it('finding 3: headersFromEnv resolves in the caller’s tenant only, never to a tool-worker variable', async () => {
    const crmAgent = (toolNames: string[], headersFromEnv: Record<string, Record<string, string>>) => ({
      model: { provider: 'scripted', steps: [{ toolCalls: toolNames.map((toolName) => ({ toolName, args: {} })) }, { text: 'done' }] },
      tools: toolNames.map((name) => ({ name, kind: 'http', inputSchema: { type: 'object' }, http: { url: `${tool.url}/${name}`, headersFromEnv: headersFromEnv[name] } })),
    });
    const crm = { crm: { authorization: 'CRM_TOKEN' } };
    await putAgent(testKeys.a, 'crm', crmAgent(['crm'], crm));
    await putAgent(testKeys.b, 'crm', crmAgent(['crm'], crm));
    await putAgent(testKeys.b, 'worker-vars', crmAgent(['canary', 'nats', 'mongo', 'nowhere'], {
      canary: { 'x-leak': 'LEAK_CANARY' },
      nats: { 'x-leak': 'NATS_URL' },
      mongo: { 'x-leak': 'MONGO_URL' },
      nowhere: { 'x-leak': 'NO_SUCH_NAME_ANYWHERE' },
    }));

    const owner = await runToEnd(testKeys.a, 'crm');
    expect(owner.terminal.type).toBe('run.completed');
    expect(tool.calls.filter((call) => call.headers.authorization === crmToken)).toHaveLength(1);

    const other = await runToEnd(testKeys.b, 'crm');
    const otherResult = other.events.find((event) => event.type === 'tool.result')!;
    expect(otherResult.error).toEqual({ code: 'secret_not_found', message: 'secret "CRM_TOKEN" not found for this tenant' });
    expect(other.terminal.type).toBe('run.completed');

    const workerVars = await runToEnd(testKeys.b, 'worker-vars');
    const results = new Map(workerVars.events.filter((event) => event.type === 'tool.result').map((event) => [event.toolName as string, event.error]));
    const names = { canary: 'LEAK_CANARY', nats: 'NATS_URL', mongo: 'MONGO_URL', nowhere: 'NO_SUCH_NAME_ANYWHERE' };
    for (const [toolName, secretName] of Object.entries(names)) {
      expect(results.get(toolName), toolName).toEqual({ code: 'secret_not_found', message: `secret "${secretName}" not found for this tenant` });
    }
    // Only tenant-a's one call reached the tool server, and nothing of the worker's environment did.
    expect(tool.calls).toHaveLength(1);
    expect(tool.calls.map((call) => call.path)).toEqual(['/crm']);
    expect(JSON.stringify(tool.calls)).not.toContain(workerCanary);
    expect(JSON.stringify(tool.calls)).not.toContain(stack.servers.natsUrl);
  });

  it('finding 2/11: a model or tool pointed at a loopback port not allowed is refused before any request', async () => {
    const internalUrl = `http://127.0.0.1:${internal.port}`;
    await putAgent(testKeys.a, 'internal-model', { model: model(`${internalUrl}/v1`) });
    await putAgent(testKeys.a, 'internal-tool', {
      model: { provider: 'scripted', steps: [{ toolCalls: [{ toolName: 'peek', args: {} }] }, { text: 'done' }] },
      tools: [{ name: 'peek', kind: 'http', inputSchema: { type: 'object' }, http: { url: `${internalUrl}/admin` } }],
    });
    const [modelRun, toolRun] = await Promise.all([runToEnd(testKeys.a, 'internal-model'), runToEnd(testKeys.a, 'internal-tool')]);
    expect(modelRun.terminal.error).toEqual({ code: 'egress_denied', message: `calls to ${internalUrl} are not allowed (LLM_EGRESS_ALLOW)` });
    const peek = toolRun.events.find((event) => event.type === 'tool.result')!;
    expect(peek.error).toEqual({ code: 'egress_denied', message: `calls to ${internalUrl} are not allowed (TOOL_EGRESS_ALLOW)` });
    expect(internal.seen).toEqual([]);
    // A fragment or a query (the `#` that makes the whole path the tenant's) or userinfo is refused when the agent is written.
    for (const baseURL of [`${attackerUrl()}/internal#`, `${attackerUrl()}?x=1`, `http://user:pass@127.0.0.1:${attacker.port}/v1`]) {
      const refused = await stack.api(testKeys.a, 'PUT', '/v1/agents/tricky', { model: model(baseURL) });
      expect(refused.status, baseURL).toBe(400);
      expect(refused.body.error.code).toBe('invalid_request');
    }
  });

  it('finding 2: a closed port and an open port that is not HTTP give the same message, for models and tools', async () => {
    const targets = { closed: closedPort, 'not-http': notHttp.port };
    for (const [name, port] of Object.entries(targets)) {
      await putAgent(testKeys.a, `model-${name}`, { model: model(`http://127.0.0.1:${port}/v1`) });
      await putAgent(testKeys.a, `tool-${name}`, {
        model: { provider: 'scripted', steps: [{ toolCalls: [{ toolName: 'probe', args: {} }] }, { text: 'done' }] },
        tools: [{ name: 'probe', kind: 'http', inputSchema: { type: 'object' }, http: { url: `http://127.0.0.1:${port}/` } }],
      });
    }
    // Connection failures are transient: each call is retried until its deliveries are exhausted.
    const runs = await Promise.all(Object.keys(targets).flatMap((name) => [runToEnd(testKeys.a, `model-${name}`, 110_000), runToEnd(testKeys.a, `tool-${name}`, 110_000)]));
    const [modelClosed, toolClosed, modelNotHttp, toolNotHttp] = runs;
    const withoutPort = (text: string, port: number) => text.replaceAll(String(port), 'PORT');
    expect(modelClosed!.terminal.error.message).toContain(`could not reach http://127.0.0.1:${closedPort}`);
    expect(withoutPort(modelNotHttp!.terminal.error.message, notHttp.port)).toBe(withoutPort(modelClosed!.terminal.error.message, closedPort));
    expect(modelNotHttp!.terminal.error.code).toBe(modelClosed!.terminal.error.code);
    const toolError = (events: ClientEvent[]) => events.find((event) => event.type === 'tool.result')!.error;
    expect(toolError(toolClosed!.events).message).toContain(`could not reach http://127.0.0.1:${closedPort}`);
    expect(withoutPort(toolError(toolNotHttp!.events).message, notHttp.port)).toBe(withoutPort(toolError(toolClosed!.events).message, closedPort));
    for (const { events } of runs) expect(JSON.stringify(events)).not.toMatch(/ECONNREFUSED|ECONNRESET|HTTP\/1\.1 protocol|server_id/);
  }, 150_000);
});
