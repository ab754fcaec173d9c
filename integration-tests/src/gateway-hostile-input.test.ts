import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { Stack, testKeys } from './harness/stack.ts';
import { TestSocket } from './harness/test-socket.ts';

/**
 * Issue 8, findings 4, 7, 9 and 14: hostile input at the gateway, through the public API of the
 * real processes (two gateway replicas, real NATS and FerretDB).
 */
describe('hostile input at the gateway', () => {
  let stack: Stack;
  let secondGatewayUrl: string;

  /** A tool whose edited args are checked against a catastrophic-backtracking pattern. */
  const redosAgent = {
    model: { provider: 'scripted', steps: [{ text: 'Sending.', toolCalls: [{ toolName: 'echo', args: { code: 'aaaa' } }] }, { text: 'Sent.' }] },
    tools: [
      {
        name: 'echo',
        kind: 'builtin',
        needsApproval: true,
        inputSchema: { type: 'object', properties: { code: { type: 'string', pattern: '^(a|a)+$' } }, required: ['code'] },
      },
    ],
  };

  beforeAll(async () => {
    stack = await Stack.start({ replicas: { gateway: 2 }, env: { WS_TICKET_TTL: '10s' } });
    secondGatewayUrl = stack.service('gateway', 1).healthUrl;
    const put = await stack.api(testKeys.a, 'PUT', '/v1/agents/redos', redosAgent);
    expect(put.status, JSON.stringify(put.body)).toBe(200);
  });

  afterAll(async () => {
    await stack?.stop();
  });

  /** A run of `agentId` for tenant-a, suspended on its approval; the socket stays subscribed. */
  async function suspendedRun(agentId: string): Promise<{ socket: TestSocket; runId: string }> {
    const socket = await stack.socket(testKeys.a);
    socket.send({ type: 'run.create', requestId: 'create', agentId, input: 'go' });
    const { runId } = await socket.waitFor((frame) => frame.type === 'run.created' || frame.type === 'error');
    expect(runId, JSON.stringify(socket.frames)).toBeDefined();
    await socket.waitFor((frame) => frame.type === 'event' && frame.runId === runId && frame.event.type === 'run.suspended').catch((error: Error) => {
      throw new Error(`${error.message}\n${stack.logs()}`);
    });
    return { socket, runId };
  }

  it('answers edited args against ^(a|a)+$ promptly with invalid_args while another tenant is served', async () => {
    const { socket, runId } = await suspendedRun('redos');
    // On a backtracking engine this request blocks the gateway's event loop for hours, and with it
    // every other tenant's request to that replica.
    const attack = stack.api(testKeys.a, 'POST', `/v1/runs/${runId}/approvals/s0c0`, { approved: true, args: { code: `${'a'.repeat(48)}!` } });
    const bystander = stack.api(testKeys.b, 'PUT', '/v1/agents/bystander', { model: { provider: 'scripted', steps: [{ text: 'hi' }] } });
    const [attacked, served] = await Promise.all([attack, bystander]);
    expect([attacked.status, attacked.body.error?.code]).toEqual([400, 'invalid_args']);
    expect(attacked.body.error.message).toContain('must match pattern');
    expect(served.status, JSON.stringify(served.body)).toBe(200);

    // Nothing was recorded: the call is still pending, and a valid edit is accepted and runs.
    const view = await stack.api(testKeys.a, 'GET', `/v1/runs/${runId}`);
    expect(view.body).toMatchObject({ status: 'suspended', pendingApprovals: [{ toolCallId: 's0c0' }] });
    const approved = await stack.api(testKeys.a, 'POST', `/v1/runs/${runId}/approvals/s0c0`, { approved: true, args: { code: 'a'.repeat(48) } });
    expect(approved.status, JSON.stringify(approved.body)).toBe(202);
    await socket.waitFor((frame) => frame.type === 'event' && frame.runId === runId && frame.event.type === 'run.completed');
    socket.socket.close();
  });

  it('stops a validation that costs more than linear time (uniqueItems over 60,000 objects) and answers invalid_args', async () => {
    const put = await stack.api(testKeys.a, 'PUT', '/v1/agents/unique', {
      ...redosAgent,
      model: { provider: 'scripted', steps: [{ toolCalls: [{ toolName: 'echo', args: { list: [] } }] }, { text: 'Done.' }] },
      tools: [{ ...redosAgent.tools[0], inputSchema: { type: 'object', properties: { list: { type: 'array', uniqueItems: true } } } }],
    });
    expect(put.status, JSON.stringify(put.body)).toBe(200);
    const { socket, runId } = await suspendedRun('unique');
    // Pairwise comparison of 60,000 distinct objects takes minutes: the gateway gives up after its limit.
    const list = Array.from({ length: 60_000 }, (_, index) => ({ a: index }));
    const attack = stack.api(testKeys.a, 'POST', `/v1/runs/${runId}/approvals/s0c0`, { approved: true, args: { list } });
    const bystander = stack.api(testKeys.b, 'GET', '/v1/runs?limit=1');
    const [attacked, served] = await Promise.all([attack, bystander]);
    expect([attacked.status, attacked.body.error?.code]).toEqual([400, 'invalid_args']);
    expect(attacked.body.error.message).toContain('took longer than');
    expect(served.status).toBe(200);
    const approved = await stack.api(testKeys.a, 'POST', `/v1/runs/${runId}/approvals/s0c0`, { approved: true, args: { list: [1, 2, 3] } });
    expect(approved.status, JSON.stringify(approved.body)).toBe(202);
    socket.socket.close();
  });

  it('refuses at PUT a pattern RE2 cannot run (lookahead), naming the tool and the path', async () => {
    const put = await stack.api(testKeys.a, 'PUT', '/v1/agents/lookahead', {
      ...redosAgent,
      tools: [{ ...redosAgent.tools[0], inputSchema: { type: 'object', properties: { code: { type: 'string', pattern: '^(?=a)a+$' } } } }],
    });
    expect([put.status, put.body.error?.code]).toEqual([400, 'invalid_request']);
    expect(put.body.error.message).toContain('body.tools.0.inputSchema.properties.code.pattern (tool echo)');
  });

  it("does not resolve another tenant's schema by its $id", async () => {
    const secretId = 'https://tenant-a.example/schemas/secret';
    const tool = (inputSchema: Record<string, unknown>) => ({ model: { provider: 'scripted', steps: [{ text: 'x' }] }, tools: [{ name: 'echo', kind: 'builtin', inputSchema }] });
    // Tenant A's schema is compiled at PUT whatever the store then does with its `$`-keys
    // (finding 15); with one shared Ajv instance that compile alone registered its $id for everyone.
    await stack.api(testKeys.a, 'PUT', '/v1/agents/owner', tool({ $id: secretId, type: 'object', properties: { pin: { const: '4242' } } }));

    const reader = await stack.api(testKeys.b, 'PUT', '/v1/agents/reader', tool({ type: 'object', properties: { leak: { $ref: secretId } } }));
    expect([reader.status, reader.body.error?.code], JSON.stringify(reader.body)).toEqual([400, 'invalid_request']);
    expect(reader.body.error.message).toContain('$ref');
  });

  it('answers frames over the per-socket in-flight cap with too_many_in_flight and keeps the socket open', async () => {
    const { socket: owner, runId } = await suspendedRun('redos');
    const socket = await stack.socket(testKeys.b);
    const count = 300;
    // Each cancel reads the run from MongoDB; sent at once, most arrive while 16 are still waiting.
    for (let index = 0; index < count; index += 1) socket.send({ type: 'cancel', requestId: `c${index}`, runId });
    const answers = await Promise.all(Array.from({ length: count }, (_, index) => socket.waitFor((frame) => frame.requestId === `c${index}`)));
    const codes = answers.map((frame) => frame.code);
    expect(codes.filter((code) => code === 'too_many_in_flight').length).toBeGreaterThan(0);
    expect(new Set(codes)).toEqual(new Set(['too_many_in_flight', 'run_not_found']));
    socket.send({ type: 'ping' });
    await socket.waitFor((frame) => frame.type === 'pong');
    expect(socket.socket.readyState).toBe(socket.socket.OPEN);
    // Tenant B's frames changed nothing of tenant A's run.
    expect((await stack.api(testKeys.a, 'GET', `/v1/runs/${runId}`)).body.status).toBe('suspended');
    socket.socket.close();
    owner.socket.close();
  });

  describe('WebSocket tickets', () => {
    const wsUrl = (base: string, ticket: string) => `${base.replace('http', 'ws')}/v1/ws?ticket=${ticket}`;
    const issue = async (key: string) => {
      const response = await stack.api<{ ticket: string; expiresAt: string }>(key, 'POST', '/v1/ws/tickets');
      expect(response.status, JSON.stringify(response.body)).toBe(201);
      return response.body;
    };

    it("works once, on another replica than the one that issued it, and sees only its tenant's runs", async () => {
      const { socket: owner, runId } = await suspendedRun('redos');
      const { ticket } = await issue(testKeys.a);
      const socket = await TestSocket.open(wsUrl(secondGatewayUrl, ticket));
      socket.send({ type: 'subscribe', runId });
      expect(await socket.waitFor((frame) => frame.type === 'event' && frame.runId === runId)).toMatchObject({ event: { type: 'run.started' } });
      socket.socket.close();

      await expect(TestSocket.open(wsUrl(stack.gatewayUrl, ticket))).rejects.toThrow(/401/);
      await expect(TestSocket.open(wsUrl(secondGatewayUrl, ticket))).rejects.toThrow(/401/);

      const otherTenant = await TestSocket.open(wsUrl(stack.gatewayUrl, (await issue(testKeys.b)).ticket));
      otherTenant.send({ type: 'subscribe', runId });
      expect(await otherTenant.waitFor((frame) => frame.type === 'error')).toMatchObject({ code: 'run_not_found', runId });
      otherTenant.socket.close();
      owner.socket.close();
    });

    it('refuses an expired ticket and one that was never issued with 401', async () => {
      const { expiresAt, ticket } = await issue(testKeys.a);
      // Expiry is the condition under test: wait for the clock to pass it (WS_TICKET_TTL is 10 s here).
      await sleep(Math.max(0, Date.parse(expiresAt) - Date.now()) + 250);
      await expect(TestSocket.open(wsUrl(stack.gatewayUrl, ticket))).rejects.toThrow(/401/);
      await expect(TestSocket.open(wsUrl(stack.gatewayUrl, `wst_${'A'.repeat(43)}`))).rejects.toThrow(/401/);
      // A ticket is not a key: it opens nothing but the WebSocket.
      const unused = await issue(testKeys.a);
      expect((await stack.api(undefined, 'GET', `/v1/runs?ticket=${unused.ticket}`)).status).toBe(401);
    });
  });
});
