/**
 * The whole stack on a nats-server with the production users and permissions
 * (deploy/nats/local.conf + auth.conf), each service connecting as its own NATS user: a run with
 * an approval completes (decided over HTTP, and by an internal approvals publisher), a run is
 * cancelled, no service hits a permissions violation on the way, and subjects outside a user's
 * permissions are refused.
 */
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { jetstream } from '@nats-io/jetstream';
import { approvalMessageSchema, makeEnvelope, subjects } from '@abide/shared';
import { freePort, startMongoServer, type ManagedServer } from '../../../scripts/lib/servers.ts';
import { startHttpToolServer } from '../harness/http-tool-server.ts';
import { ServiceProcess, type ServiceName } from '../harness/service-process.ts';
import { TestSocket } from '../harness/test-socket.ts';
import { natsPasswordVariables, startAuthNats, type AuthNats } from './auth-nats.ts';

const apiKey = 'key-deploy-auth-0123456789';
const tenantId = 'tenant-auth';

describe('the stack with per-service NATS users (deploy/nats/auth.conf)', () => {
  let nats: AuthNats;
  let mongo: ManagedServer;
  let tool: Awaited<ReturnType<typeof startHttpToolServer>>;
  const services: ServiceProcess[] = [];
  let gatewayUrl = '';

  const logs = () => services.map((service) => service.logTail(30)).join('\n');

  async function api(method: string, path: string, body?: unknown) {
    const response = await fetch(`${gatewayUrl}${path}`, {
      method,
      headers: { authorization: `Bearer ${apiKey}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
    const text = await response.text();
    return { status: response.status, body: text ? JSON.parse(text) : undefined };
  }

  async function waitForStatus(runId: string, status: string, timeoutMs = 30_000) {
    const deadline = Date.now() + timeoutMs;
    let last: unknown;
    while (Date.now() < deadline) {
      const view = await api('GET', `/v1/runs/${runId}`);
      last = view.body;
      if (view.body?.status === status) return view.body;
      await new Promise((done) => setTimeout(done, 200));
    }
    throw new Error(`run ${runId} is not ${status}: ${JSON.stringify(last)}\n${logs()}`);
  }

  async function startSuspendedRun() {
    const created = await api('POST', '/v1/runs', { agentId: 'payer', input: 'pay' });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    const runId = created.body.runId as string;
    const view = await waitForStatus(runId, 'suspended');
    expect(view.pendingApprovals).toMatchObject([{ toolCallId: 's0c0', toolName: 'pay' }]);
    return runId;
  }

  beforeAll(async () => {
    const dir = mkdtempSync(join(tmpdir(), 'abide-deploy-auth-'));
    nats = await startAuthNats();
    mongo = await startMongoServer({ dataDir: join(dir, 'mongo'), log: () => {} });
    tool = await startHttpToolServer((call) => ({ body: { paid: true, request: call.body } }));
    const mongoUrl = mongo.url.replace(/\/[^/?]*(\?|$)/, `/abide_deploy_auth$1`);
    for (const name of ['orchestrator', 'tool-worker', 'llm-worker', 'gateway'] as ServiceName[]) {
      const port = await freePort();
      const env: Record<string, string> = {
        NATS_URL: nats.url,
        NATS_USER: name,
        NATS_PASSWORD: nats.password(name),
        MONGO_URL: mongoUrl,
        ABIDE_API_KEYS: `${apiKey}:${tenantId}`,
        LOG_LEVEL: 'info',
        SHUTDOWN_GRACE: '5s',
        TOOL_EGRESS_ALLOW: '127.0.0.1:*,localhost:*',
        ...(name === 'gateway' ? { GATEWAY_PORT: String(port) } : { HEALTH_PORT: String(port) }),
      };
      if (name === 'gateway') gatewayUrl = `http://127.0.0.1:${port}`;
      services.push(new ServiceProcess({ name, replica: 0, logDir: dir, env, healthUrl: `http://127.0.0.1:${port}` }));
    }
    for (const service of services) service.start();
    await Promise.all(services.map((service) => service.waitReady())).catch((error: Error) => {
      throw new Error(`${error.message}\n${logs()}`);
    });
    const agent = await api('PUT', '/v1/agents/payer', {
      model: { provider: 'scripted', steps: [{ text: 'Paying.', toolCalls: [{ toolName: 'pay', args: { amount: 10 } }] }, { text: 'Paid.' }] },
      tools: [
        {
          name: 'pay',
          kind: 'http',
          description: 'Pay',
          needsApproval: true,
          inputSchema: { type: 'object', properties: { amount: { type: 'number' } }, required: ['amount'] },
          http: { url: `${tool.url}/pay` },
        },
      ],
    });
    expect(agent.status, JSON.stringify(agent.body)).toBe(200);
  });

  afterAll(async () => {
    await Promise.all(services.map((service) => service.stop('SIGTERM')));
    await tool?.close();
    await mongo?.stop();
    await nats?.stop();
  });

  it('completes a run approved over HTTP', async () => {
    const runId = await startSuspendedRun();
    const decision = await api('POST', `/v1/runs/${runId}/approvals/s0c0`, { approved: true });
    expect(decision.status, JSON.stringify(decision.body)).toBe(202);
    const done = await waitForStatus(runId, 'completed');
    expect(done.output).toBeDefined();
    expect(tool.calls.filter((call) => call.idempotencyKey === `${runId}:s0c0`)).toHaveLength(1);
  });

  it('completes a run approved by an internal publisher with the approvals-publisher user', async () => {
    const runId = await startSuspendedRun();
    const publisher = await nats.connectAs('approvals-publisher');
    const message = approvalMessageSchema.parse(
      makeEnvelope('approval', { id: `internal-${runId}-s0c0`, runId, tenantId }, { toolCallId: 's0c0', approved: true, source: 'billing-service', decidedBy: 'policy' }),
    );
    await jetstream(publisher).publish(subjects.approvals(tenantId, runId), JSON.stringify(message), { msgID: message.id });
    await waitForStatus(runId, 'completed');
    expect(tool.calls.filter((call) => call.idempotencyKey === `${runId}:s0c0`)).toHaveLength(1);
  });

  it('cancels a suspended run (the orchestrator writes RUN_CONTROL, the workers watch it)', async () => {
    const runId = await startSuspendedRun();
    const cancel = await api('POST', `/v1/runs/${runId}/cancel`);
    expect(cancel.status, JSON.stringify(cancel.body)).toBe(202);
    await waitForStatus(runId, 'cancelled');
    expect(tool.calls.filter((call) => call.idempotencyKey === `${runId}:s0c0`)).toHaveLength(0);
  });

  it('lists an MCP server through a tool-worker (gateway request, tool-worker reply on mcp.tools.list)', async () => {
    // The worker's answer (its egress policy refusing a private address) proves the round trip;
    // without the permissions the gateway would get no reply and answer 503.
    const agent = await api('PUT', '/v1/agents/mcp-private', {
      model: { provider: 'scripted', steps: [{ text: 'hi' }] },
      tools: [{ kind: 'mcp', name: 'internal', server: { transport: 'streamable-http', url: 'http://10.255.255.1/mcp' } }],
    });
    expect(agent.status, JSON.stringify(agent.body)).toBe(422);
    expect(agent.body.error).toEqual({
      code: 'mcp_list_failed',
      message: "body.tools.0: listing the MCP server's tools failed (egress_denied: calls to http://10.255.255.1:80 are not allowed (TOOL_EGRESS_ALLOW))",
    });
  });

  it('issues and consumes a single-use WebSocket ticket as the gateway user (KV WS_TICKETS)', async () => {
    const issued = await api('POST', '/v1/ws/tickets');
    expect(issued.status, JSON.stringify(issued.body)).toBe(201);
    const url = `${gatewayUrl.replace('http', 'ws')}/v1/ws?ticket=${issued.body.ticket}`;
    const socket = await TestSocket.open(url);
    socket.send({ type: 'ping' });
    await socket.waitFor((frame) => frame.type === 'pong');
    socket.socket.close();
    await expect(TestSocket.open(url)).rejects.toThrow(/401/);
  });

  it('refuses subjects outside a user’s permissions, and no service ran into one', async () => {
    const refusals: [keyof typeof natsPasswordVariables, string][] = [
      ['llm-worker', 'run.in.r_x.tool_result'],
      ['tool-worker', subjects.runEvents('r_x')],
      ['gateway', subjects.llmRequest('r_x')],
      ['llm-worker', subjects.mcpToolsList],
      ['approvals-publisher', 'run.in.r_x.cancel'],
    ];
    for (const [user, subject] of refusals) {
      const connection = await nats.connectAs(user);
      await expect(connection.request(subject, '{}', { timeout: 5_000 }), `${user} → ${subject}`).rejects.toThrow(/permissions violation/i);
    }
    for (const service of services) {
      expect(readFileSync(service.logFile, 'utf8'), `${service.name} log`).not.toMatch(/permissions violation/i);
    }
  });
});
