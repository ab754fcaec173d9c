import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { AbideError, createEgressPolicy, SecretNotFoundError, toolDefinitionSchema, type TenantSecrets, type ToolDefinition } from '@abide/shared';
import { createHttpTool, parseRetryAfter, type HttpToolOptions } from './http-tool.ts';
import type { ToolInvocation } from './tool-invocation.ts';

type Seen = { method: string; path: string; headers: IncomingMessage['headers']; body: string };
type Route = (request: IncomingMessage, response: ServerResponse, body: string) => void;

let server: Server;
let base: string;
let seen: Seen[] = [];
const routes = new Map<string, Route>();

beforeAll(async () => {
  server = createServer((request, response) => {
    let body = '';
    request.on('data', (chunk: Buffer) => (body += chunk.toString('utf8')));
    request.on('end', () => {
      const path = request.url ?? '/';
      seen.push({ method: request.method ?? '', path, headers: request.headers, body });
      const route = routes.get(path);
      if (route) route(request, response, body);
      else response.writeHead(404).end('no such route');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
});
beforeEach(() => {
  seen = [];
  routes.clear();
});

function tool(path: string, http: Partial<NonNullable<ToolDefinition['http']>> = {}): ToolDefinition {
  return toolDefinitionSchema.parse({ name: 'remote', kind: 'http', inputSchema: { type: 'object' }, http: { url: `${base}${path}`, ...http } });
}

function invocation(definition: ToolDefinition, overrides: Partial<ToolInvocation> = {}): ToolInvocation {
  return {
    runId: 'run_abc',
    tenantId: 'tenant-a',
    toolCallId: 's1c2',
    tool: definition,
    args: { city: 'Oslo' },
    timeoutMs: 5_000,
    signal: new AbortController().signal,
    onExternalEffect: () => {},
    ...overrides,
  };
}

/** Secrets per tenant, as `TENANT_SECRETS_DIR` would hold them. */
function fakeSecrets(byTenant: Record<string, Record<string, string>>): TenantSecrets {
  return {
    async read(tenantId, name) {
      const value = byTenant[tenantId]?.[name];
      if (value === undefined) throw new SecretNotFoundError(name);
      return value;
    },
  };
}

function httpTool(options: Partial<Omit<HttpToolOptions, 'secrets'>> & { egressAllow?: string[]; secrets?: Record<string, Record<string, string>> } = {}) {
  const { egressAllow = ['127.0.0.1:*'], secrets = {}, ...rest } = options;
  return createHttpTool({ egress: createEgressPolicy({ allow: egressAllow, variable: 'TOOL_EGRESS_ALLOW' }), secrets: fakeSecrets(secrets), ...rest });
}

describe('HTTP tool', () => {
  it('POSTs the args as JSON with the idempotency key, the static headers and the tenant’s secret headers', async () => {
    routes.set('/weather', (_request, response) => response.writeHead(200, { 'content-type': 'application/json' }).end('{"temp":21}'));
    let effects = 0;
    const outcome = await httpTool({ secrets: { 'tenant-a': { WEATHER_TOKEN: 'secret-123' } } }).run(
      invocation(tool('/weather', { headers: { 'x-static': 'yes', 'Idempotency-Key': 'forged' }, headersFromEnv: { authorization: 'WEATHER_TOKEN' } }), {
        onExternalEffect: () => effects++,
      }),
    );
    expect(outcome).toEqual({ kind: 'success', value: { temp: 21 } });
    expect(seen).toHaveLength(1);
    const request = seen[0]!;
    expect(request.method).toBe('POST');
    expect(JSON.parse(request.body)).toEqual({ city: 'Oslo' });
    expect(request.headers['content-type']).toBe('application/json');
    expect(request.headers['idempotency-key']).toBe('run_abc:s1c2');
    expect(request.headers['x-static']).toBe('yes');
    expect(request.headers.authorization).toBe('secret-123');
    expect(effects).toBe(1);
  });

  it('uses the tool method', async () => {
    routes.set('/put', (_request, response) => response.writeHead(204).end());
    expect(await httpTool().run(invocation(tool('/put', { method: 'PUT' })))).toEqual({ kind: 'success', value: null });
    expect(seen[0]!.method).toBe('PUT');
  });

  it('answers a non-JSON 2xx body as { text }', async () => {
    routes.set('/text', (_request, response) => response.writeHead(200, { 'content-type': 'text/plain' }).end('plain words'));
    expect(await httpTool().run(invocation(tool('/text')))).toEqual({ kind: 'success', value: { text: 'plain words' } });
  });

  it('fails for good with secret_not_found, naming only the name, when the tenant has no such secret', async () => {
    const secrets = { 'tenant-a': { OTHER: 'x' }, 'tenant-b': { MISSING_TOKEN: 'tenant-b-value' } };
    const outcome = await httpTool({ secrets }).run(invocation(tool('/weather', { headersFromEnv: { authorization: 'MISSING_TOKEN' } })));
    expect(outcome).toEqual({ kind: 'error', error: { code: 'secret_not_found', message: 'secret "MISSING_TOKEN" not found for this tenant' } });
    expect(seen).toHaveLength(0);
  });

  it('throws a retryable error on 500, with Retry-After', async () => {
    routes.set('/flaky', (_request, response) => response.writeHead(503, { 'retry-after': '3' }).end('overloaded'));
    const error = await httpTool().run(invocation(tool('/flaky'))).catch((caught: unknown) => caught);
    expect(AbideError.isInstance(error)).toBe(true);
    expect(error).toMatchObject({ code: 'tool_error', retryable: true, retryAfterMs: 3_000, message: `HTTP 503 from ${base}` });
  });

  it('treats 408 and 429 as retryable', async () => {
    routes.set('/busy', (_request, response) => response.writeHead(429).end('slow down'));
    routes.set('/late', (_request, response) => response.writeHead(408).end());
    await expect(httpTool().run(invocation(tool('/busy')))).rejects.toMatchObject({ retryable: true });
    await expect(httpTool().run(invocation(tool('/late')))).rejects.toMatchObject({ retryable: true });
  });

  it('answers another 4xx as a final error naming the status, never the body (the body goes to the log)', async () => {
    routes.set('/bad', (_request, response) => response.writeHead(400).end('{"error":"city unknown"}'));
    const logged: unknown[] = [];
    const outcome = await httpTool({ logger: { warn: (fields: unknown) => logged.push(fields) } }).run(invocation(tool('/bad')));
    expect(outcome).toEqual({ kind: 'error', error: { code: 'tool_error', message: `HTTP 400 from ${base}` } });
    expect(logged).toEqual([expect.objectContaining({ status: 400, body: '{"error":"city unknown"}' })]);
  });

  it('answers the timeout as a final tool_timeout', async () => {
    routes.set('/slow', (_request, response) => setTimeout(() => response.writeHead(200).end('{}'), 2_000).unref());
    const started = Date.now();
    expect(await httpTool().run(invocation(tool('/slow'), { timeoutMs: 100 }))).toMatchObject({ kind: 'error', error: { code: 'tool_timeout' } });
    expect(Date.now() - started).toBeLessThan(1_500);
  });

  it('throws the signal reason when aborted (cancel or shutdown)', async () => {
    routes.set('/slow', (_request, response) => setTimeout(() => response.writeHead(200).end('{}'), 2_000).unref());
    const controller = new AbortController();
    setTimeout(() => controller.abort(new Error('run cancelled')), 50);
    await expect(httpTool().run(invocation(tool('/slow'), { signal: controller.signal }))).rejects.toThrow('run cancelled');
  });

  it('refuses a destination outside TOOL_EGRESS_ALLOW without calling it', async () => {
    routes.set('/weather', (_request, response) => response.writeHead(200).end('{}'));
    const outcome = await httpTool({ egressAllow: ['example.com'] }).run(invocation(tool('/weather')));
    expect(outcome).toEqual({ kind: 'error', error: { code: 'egress_denied', message: `calls to ${base} are not allowed (TOOL_EGRESS_ALLOW)` } });
    const none = await httpTool({ egressAllow: [] }).run(invocation(tool('/weather')));
    expect(none).toMatchObject({ kind: 'error', error: { code: 'egress_denied' } });
    // A plain host entry is the default port only; a loopback name is refused unless the address is listed.
    const defaultPortOnly = await httpTool({ egressAllow: ['127.0.0.1'] }).run(invocation(tool('/weather')));
    expect(defaultPortOnly).toMatchObject({ kind: 'error', error: { code: 'egress_denied' } });
    const loopbackName = await httpTool({ egressAllow: ['localhost:*'] }).run(invocation(tool('/weather', { url: `${base.replace('127.0.0.1', 'localhost')}/weather` })));
    expect(loopbackName).toMatchObject({ kind: 'error', error: { code: 'egress_denied' } });
    expect(seen).toHaveLength(0);
  });

  it('does not follow redirects', async () => {
    routes.set('/moved', (_request, response) => response.writeHead(302, { location: `${base}/target` }).end());
    routes.set('/target', (_request, response) => response.writeHead(200).end('{"reached":true}'));
    const outcome = await httpTool().run(invocation(tool('/moved')));
    expect(outcome).toMatchObject({ kind: 'error', error: { code: 'tool_error', message: expect.stringContaining('HTTP 302') } });
    expect(seen.map((request) => request.path)).toEqual(['/moved']);
  });

  it('refuses a response over the size limit', async () => {
    routes.set('/big', (_request, response) => response.writeHead(200).end('x'.repeat(2_000)));
    routes.set('/big-chunked', (_request, response) => {
      response.writeHead(200);
      for (let index = 0; index < 20; index++) response.write('y'.repeat(100));
      response.end();
    });
    for (const path of ['/big', '/big-chunked']) {
      const outcome = await httpTool({ maxResponseBytes: 1_000 }).run(invocation(tool(path)));
      expect(outcome).toMatchObject({ kind: 'error', error: { code: 'tool_error', message: expect.stringContaining('1000 bytes') } });
    }
  });

  it('throws a retryable error when the connection is refused', async () => {
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const port = (closed.address() as AddressInfo).port;
    await new Promise((resolve) => closed.close(resolve));
    const definition = toolDefinitionSchema.parse({ name: 'remote', kind: 'http', inputSchema: { type: 'object' }, http: { url: `http://127.0.0.1:${port}/` } });
    await expect(httpTool().run(invocation(definition))).rejects.toMatchObject({ code: 'tool_error', retryable: true, message: `could not reach http://127.0.0.1:${port}` });
  });

  it('gives a port that answers something other than HTTP the same message as a closed one', async () => {
    const { createServer: createTcpServer } = await import('node:net');
    const sockets = new Set<import('node:net').Socket>();
    const notHttp = createTcpServer((socket) => {
      sockets.add(socket);
      socket.end('INFO {"server_id":"nats"}\r\n');
    });
    await new Promise<void>((resolve) => notHttp.listen(0, '127.0.0.1', resolve));
    const port = (notHttp.address() as AddressInfo).port;
    const definition = toolDefinitionSchema.parse({ name: 'remote', kind: 'http', inputSchema: { type: 'object' }, http: { url: `http://127.0.0.1:${port}/` } });
    await expect(httpTool().run(invocation(definition))).rejects.toMatchObject({ code: 'tool_error', retryable: true, message: `could not reach http://127.0.0.1:${port}` });
    for (const socket of sockets) socket.destroy();
    await new Promise((resolve) => notHttp.close(resolve));
  });
});

describe('parseRetryAfter', () => {
  it('reads seconds and dates, caps them, and ignores garbage', () => {
    expect(parseRetryAfter('5', 60_000)).toBe(5_000);
    expect(parseRetryAfter('3600', 60_000)).toBe(60_000);
    expect(parseRetryAfter(new Date(10_000).toUTCString(), 60_000, 4_000)).toBe(6_000);
    expect(parseRetryAfter('soon', 60_000)).toBeUndefined();
    expect(parseRetryAfter(null, 60_000)).toBeUndefined();
  });
});
