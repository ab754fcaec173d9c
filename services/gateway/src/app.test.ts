import { ApiError, httpStatusByCode, type PublicErrorCode } from '@abide/shared';
import { readFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { toApiError } from './http-errors.ts';
import { JetStreamApiError } from '@nats-io/jetstream';
import { jserrors } from '@nats-io/jetstream/internal';
import type { RouteConfig } from './routes/route-context.ts';
import { auth, createTestApp, keys, scriptedAgent, type TestApp } from './testing/test-app.ts';

let current: TestApp | undefined;
function setup(...args: Parameters<typeof createTestApp>) {
  current = createTestApp(...args);
  return current;
}
afterEach(async () => {
  await current?.app.close();
  current = undefined;
});

describe('errors, auth and validation', () => {
  it('answers 401 without a key or with an unknown one, on every /v1 route', async () => {
    const { app } = setup();
    for (const headers of [{}, { authorization: 'Bearer nope-nope' }, { authorization: 'Basic abc' }]) {
      const response = await app.inject({ method: 'GET', url: '/v1/runs/run_x', headers });
      expect(response.statusCode).toBe(401);
      expect(response.json()).toEqual({ error: { code: 'unauthorized', message: expect.any(String) } });
    }
    // the query token is accepted only where a browser cannot set headers
    expect((await app.inject({ method: 'GET', url: `/v1/runs/run_x?access_token=${keys.t1}` })).statusCode).toBe(401);
  });

  it('leaves probes, metrics and the OpenAPI document open', async () => {
    const { app } = setup();
    expect((await app.inject('/healthz')).statusCode).toBe(200);
    expect((await app.inject('/readyz')).json()).toMatchObject({ status: 'ready' });
    expect((await app.inject('/metrics')).body).toContain('abide_http_requests_total');
    expect((await app.inject('/openapi.json')).json()).toMatchObject({ openapi: '3.1.0' });
  });

  it('answers unknown routes 404 not_found', async () => {
    const { app } = setup();
    const response = await app.inject({ method: 'GET', url: '/v1/nothing', headers: auth() });
    expect(response.statusCode).toBe(404);
    expect(response.json().error.code).toBe('not_found');
  });

  it('answers malformed JSON 400 invalid_json, other media types 415, a body over the limit 413', async () => {
    const { app } = setup();
    const bad = await app.inject({ method: 'POST', url: '/v1/runs', headers: { ...auth(), 'content-type': 'application/json' }, payload: '{"agentId":' });
    expect(bad.statusCode).toBe(400);
    expect(bad.json().error.code).toBe('invalid_json');
    const text = await app.inject({ method: 'POST', url: '/v1/runs', headers: { ...auth(), 'content-type': 'text/plain' }, payload: 'hi' });
    expect(text.statusCode).toBe(415);
    expect(text.json().error.code).toBe('unsupported_media_type');
    const large = await app.inject({ method: 'POST', url: '/v1/runs', headers: auth(), payload: { agentId: 'a', input: 'x'.repeat(70 * 1024) } });
    expect(large.statusCode).toBe(413);
    expect(large.json().error.code).toBe('payload_too_large');
  });

  it('answers a body that fails validation 400 invalid_request naming the field', async () => {
    const { app } = setup();
    const response = await app.inject({ method: 'POST', url: '/v1/runs', headers: auth(), payload: { agentId: 'a b', input: 'hi' } });
    expect(response.statusCode).toBe(400);
    expect(response.json().error).toEqual({ code: 'invalid_request', message: expect.stringContaining('body.agentId') });
    const unknownField = await app.inject({ method: 'POST', url: '/v1/runs', headers: auth(), payload: { agentId: 'a', input: 'hi', extra: 1 } });
    expect(unknownField.json().error.code).toBe('invalid_request');
    const badKey = await app.inject({ method: 'POST', url: '/v1/runs', headers: { ...auth(), 'idempotency-key': 'has space' }, payload: { agentId: 'a', input: 'hi' } });
    expect(badKey.json().error.message).toContain('headers.idempotency-key');
  });

  it('answers 503 unavailable while the backend is not connected, and while draining', async () => {
    const { app, setDraining } = setup({ backend: () => undefined });
    const starting = await app.inject({ method: 'GET', url: '/v1/runs/run_x', headers: auth() });
    expect(starting.statusCode).toBe(503);
    expect(starting.headers['retry-after']).toBe('1');
    setDraining(true);
    expect((await app.inject({ method: 'GET', url: '/v1/agents/a', headers: auth() })).json().error.code).toBe('unavailable');
    expect((await app.inject('/readyz')).statusCode).toBe(503);
    expect((await app.inject('/healthz')).statusCode).toBe(200);
  });

  it('answers 5xx without internals', async () => {
    const { app, memory } = setup();
    memory.failNext('loadRun', new Error('secret connection string mongodb://user:pw@db'));
    const response = await app.inject({ method: 'GET', url: '/v1/runs/run_x', headers: auth() });
    expect(response.statusCode).toBe(500);
    expect(response.json()).toEqual({ error: { code: 'internal', message: 'internal error' } });
    // An unreachable dependency is recognised by its class (shared/src/dependency-errors.test.ts
    // covers the NATS and MongoDB ones): 503. A plain Error that only carries such a name is a bug: 500.
    memory.failNext('loadRun', new DOMException('the operation timed out', 'TimeoutError'));
    expect((await app.inject({ method: 'GET', url: '/v1/runs/run_x', headers: auth() })).statusCode).toBe(503);
    memory.failNext('loadRun', Object.assign(new Error('no server'), { name: 'MongoServerSelectionError' }));
    expect((await app.inject({ method: 'GET', url: '/v1/runs/run_x', headers: auth() })).statusCode).toBe(500);
  });

  it('echoes a valid X-Request-Id and makes one otherwise', async () => {
    const { app } = setup();
    expect((await app.inject({ url: '/healthz', headers: { 'x-request-id': 'abc-123' } })).headers['x-request-id']).toBe('abc-123');
    expect((await app.inject({ url: '/healthz', headers: { 'x-request-id': 'bad id!' } })).headers['x-request-id']).toMatch(/^req_/);
  });
});

describe('auth is decided by the matched route (finding 13)', () => {
  const upgrade = { connection: 'Upgrade', upgrade: 'websocket', 'sec-websocket-version': '13', 'sec-websocket-key': 'dGhlIHNhbXBsZSBub25jZQ==' };

  it('answers 401 without a key however the path is spelled, WebSocket upgrades included', async () => {
    const { app } = setup();
    for (const url of ['/%761/ws', '/%76%31/ws', '/v%31/ws', '/V1/ws', '//v1/ws', '/v1//ws', '/v1/ws.', '/v1/ws/', '/%761/runs/run_x', '/v1/runs/%72un_x', '/nothing', '/%2Fv1/ws']) {
      for (const headers of [{}, upgrade]) {
        const response = await app.inject({ method: 'GET', url, headers });
        expect(response.statusCode, url).toBe(401);
        expect(response.json().error.code, url).toBe('unauthorized');
      }
    }
    // the decoded path is the route: with a key, `/%761/runs/run_x` is `GET /v1/runs/:runId`
    expect((await app.inject({ method: 'GET', url: '/%761/runs/run_x', headers: auth() })).json().error.code).toBe('run_not_found');
    // public routes opt out explicitly, also when spelled with escapes
    expect((await app.inject('/%68ealthz')).statusCode).toBe(200);
  });

  it('never upgrades an escaped WebSocket path without a key', async () => {
    const { app } = setup();
    await app.ready();
    await expect(app.injectWS('/%761/ws')).rejects.toThrow(/401/);
    const socket = await app.injectWS('/%761/ws', { headers: auth() });
    const pong = new Promise((resolve) => socket.once('message', (data) => resolve(JSON.parse(String(data)))));
    socket.send(JSON.stringify({ type: 'ping' }));
    expect(await pong).toEqual({ type: 'pong' });
    socket.terminate();
  });
});

describe('405 for methods a path does not have', () => {
  it('answers 405 method_not_allowed with Allow, after the key on /v1 paths', async () => {
    const { app } = setup();
    const runs = await app.inject({ method: 'DELETE', url: '/v1/runs', headers: auth() });
    expect(runs.statusCode).toBe(405);
    expect(runs.json().error.code).toBe('method_not_allowed');
    expect(runs.headers.allow).toBe('GET, HEAD, POST');
    expect((await app.inject({ method: 'PATCH', url: '/v1/runs/run_x/cancel', headers: auth() })).headers.allow).toBe('POST');
    expect((await app.inject({ method: 'PUT', url: '/v1/ws', headers: auth() })).statusCode).toBe(405);
    // before the body is read: a QUERY without Content-Type is 405 too
    expect((await app.inject({ method: 'QUERY', url: '/v1/runs/run_x', headers: auth() })).statusCode).toBe(405);
    expect((await app.inject({ method: 'TRACE', url: '/v1/approvals', headers: auth() })).statusCode).toBe(405);
    expect((await app.inject({ method: 'DELETE', url: '/v1/runs' })).statusCode).toBe(401);
    const probe = await app.inject({ method: 'POST', url: '/healthz' });
    expect(probe.statusCode).toBe(405);
    expect(probe.headers.allow).toBe('GET, HEAD');
    // unknown paths stay 404
    expect((await app.inject({ method: 'DELETE', url: '/v1/nothing', headers: auth() })).statusCode).toBe(404);
  });
});

describe('the error registry', () => {
  it('answers every code with its registry status and body through the one error handler', async () => {
    const { app } = setup();
    // A route that throws the code it is asked for: the answer comes from the app's error handler,
    // not from the error object, so a handler that remaps or drops a status fails here.
    app.get('/test-errors/:code', { config: { public: true } }, async (request) => {
      throw new ApiError((request.params as { code: PublicErrorCode }).code, `thrown ${(request.params as { code: string }).code}`);
    });
    for (const [code, status] of Object.entries(httpStatusByCode)) {
      const response = await app.inject({ url: `/test-errors/${code}` });
      expect(response.statusCode, code).toBe(status);
      expect(response.json(), code).toEqual({ error: { code, message: `thrown ${code}` } });
    }
  });

  it('answers 503 unavailable, not 500, while a NATS cluster has no JetStream leader', () => {
    const electing = new JetStreamApiError({ code: 503, err_code: 10008, description: 'JetStream system temporarily unavailable' });
    expect(toApiError(electing, { maxBodyBytes: 1 })).toMatchObject({ code: 'unavailable', status: 503 });
    const noResponders = new jserrors.JetStreamNotEnabled('jetstream is not enabled');
    expect(toApiError(noResponders, { maxBodyBytes: 1 })).toMatchObject({ code: 'unavailable', status: 503 });
    const missing = new JetStreamApiError({ code: 404, err_code: 10059, description: 'stream not found' });
    expect(toApiError(missing, { maxBodyBytes: 1 }).code).toBe('internal');
  });

  it('converts what is not an ApiError without trusting its fields', () => {
    expect(toApiError(Object.assign(new Error('x'), { name: 'MongoNetworkError', statusCode: 503 }), { maxBodyBytes: 1 }).code).toBe('internal');
    expect(toApiError(Object.assign(new Error('bad'), { code: 'FST_ERR_CTP_BODY_TOO_LARGE' }), { maxBodyBytes: 10 })).toMatchObject({ code: 'payload_too_large', status: 413 });
  });

  it('documents every code with its status in docs/api.md', () => {
    const docs = readFileSync(new URL('../../../docs/api.md', import.meta.url), 'utf8');
    for (const [code, status] of Object.entries(httpStatusByCode)) {
      expect(docs, `docs/api.md lacks ${code}`).toMatch(new RegExp(`\\|\\s*${status}\\s*\\|\\s*\`${code}\``));
    }
  });
});

describe('OpenAPI', () => {
  it('is generated from the routes: every route the app serves, with its schemas, and nothing else', async () => {
    const { app } = setup();
    const served = new Map<string, RouteConfig>();
    app.addHook('onRoute', (route) => {
      if ((route.config as RouteConfig | undefined)?.methodNotAllowed) return;
      for (const method of [route.method].flat()) if (method !== 'HEAD') served.set(`${method.toLowerCase()} ${route.url.replace(/:([A-Za-z]+)/g, '{$1}')}`, (route.config ?? {}) as RouteConfig);
    });
    await app.ready();
    const document = (await app.inject('/openapi.json')).json();
    const documented = Object.entries(document.paths as Record<string, Record<string, unknown>>).flatMap(([path, methods]) => Object.keys(methods).map((method) => `${method} ${path}`));
    expect(documented.sort()).toEqual([...served.keys()].sort());
    for (const [key, config] of served) {
      const [method, path] = key.split(' ') as [string, string];
      const operation = document.paths[path][method];
      // every route declares what it is and what it answers (a route added without a schema fails here)
      expect(operation.summary, key).toEqual(expect.any(String));
      const statuses = Object.keys(operation.responses);
      expect(statuses.some((status) => /^[123]/.test(status)), key).toBe(true);
      if (config.public) {
        expect(operation.security, key).toEqual([]);
      } else {
        expect(operation.security, key).toEqual([{ apiKey: [] }]);
        expect(statuses, key).toContain('401');
        expect(operation.responses['401'].content['application/json'].schema, key).toBeDefined();
      }
      if (path.includes('{')) expect(operation.parameters.filter((parameter: { in: string }) => parameter.in === 'path').length, key).toBe(path.split('{').length - 1);
    }
    expect(document.paths['/v1/runs/{runId}/approvals/{toolCallId}'].post.requestBody).toBeDefined();
    expect(document.paths['/v1/runs'].post.parameters).toContainEqual(expect.objectContaining({ name: 'idempotency-key', in: 'header' }));
    expect(document.paths['/v1/runs'].get.parameters.map((parameter: { name: string }) => parameter.name)).toEqual(['conversationId', 'status', 'limit', 'cursor']);
    // the streaming routes state their content types; optional bodies are not required
    expect(Object.keys(document.paths['/v1/runs/{runId}/events'].get.responses['200'].content)).toEqual(['text/event-stream']);
    expect(Object.keys(document.paths['/v1/chat/completions'].post.responses['200'].content).sort()).toEqual(['application/json', 'text/event-stream']);
    expect(document.paths['/v1/runs/{runId}/cancel'].post.requestBody.required).toBe(false);
    expect(document.paths['/v1/runs'].post.requestBody.required).toBe(true);
    expect(document.paths['/v1/ws'].get['x-client-frames'].oneOf ?? document.paths['/v1/ws'].get['x-client-frames'].anyOf).toHaveLength(6);
  });
});

describe('answers are serialized through their route schemas', () => {
  it('answers 500 internal, not a body that breaks its contract', async () => {
    const { app } = setup({ readiness: async () => ({ ready: true, checks: { nats: 'yes' as unknown as boolean }, draining: false }) });
    const response = await app.inject('/readyz');
    expect(response.statusCode).toBe(500);
    expect(response.json()).toEqual({ error: { code: 'internal', message: 'internal error' } });
  });
});

describe('the OpenAPI document promises what the server enforces', () => {
  it('states the list cursor, Last-Event-ID, the deadline maxima and the stored-JSON key rule', async () => {
    const { app } = setup();
    const document = (await app.inject('/openapi.json')).json();
    const parameter = (path: string, name: string) => document.paths[path].get.parameters.find((candidate: { name: string }) => candidate.name === name).schema;
    // every string the schema allows is a cursor the server takes
    const cursor = parameter('/v1/runs', 'cursor');
    expect(cursor.pattern).toBeDefined();
    const forged = '2031-01-01T00:00:00.000Z~run_anything';
    expect(new RegExp(cursor.pattern).test(forged)).toBe(true);
    expect((await app.inject({ method: 'GET', url: `/v1/runs?cursor=${forged}`, headers: auth() })).statusCode).toBe(200);
    expect(parameter('/v1/runs/{runId}/events', 'last-event-id').pattern).toBeDefined();

    // every $ref points into components, and resolves
    const text = JSON.stringify(document);
    const refs = [...text.matchAll(/"\$ref":"([^"]+)"/g)].map((match) => match[1]!);
    expect(refs.length).toBeGreaterThan(0);
    for (const ref of refs) {
      expect(ref).toMatch(/^#\/components\/schemas\//);
      expect(document.components.schemas[ref.slice('#/components/schemas/'.length)], ref).toBeDefined();
    }
    // the configured deadline bound (EVENTS_MAX_AGE minus a day) is the schema's maximum
    expect(text).toContain(`"maximum":${7 * 86_400_000 - 86_400_000}`);
    expect(text).toContain('"propertyNames"');
  });
});

describe('found by schemathesis', () => {
  it('answers an empty tool URL 400 (not 500), and a JSON null body 400 where the body is optional', async () => {
    const { app } = setup();
    const agent = await app.inject({
      method: 'PUT',
      url: '/v1/agents/helper',
      headers: auth(),
      payload: { ...scriptedAgent, tools: [{ name: 'remote', kind: 'http', inputSchema: { type: 'object' }, http: { url: '' } }] },
    });
    expect(agent.statusCode).toBe(400);
    expect(agent.json().error.message).toContain('body.tools.0.http.url');
    const json = { ...auth(), 'content-type': 'application/json' };
    expect((await app.inject({ method: 'POST', url: '/v1/ws/tickets', headers: json, payload: 'null' })).statusCode).toBe(400);
    expect((await app.inject({ method: 'POST', url: '/v1/runs/run_x/cancel', headers: json, payload: 'null' })).statusCode).toBe(400);
    expect((await app.inject({ method: 'POST', url: '/v1/runs/run_x/cancel', headers: auth() })).json().error.code).toBe('run_not_found');
    const poisoned = await app.inject({ method: 'POST', url: '/v1/runs', headers: json, payload: '{"agentId":"a","input":"hi","metadata":{"__proto__":{"x":1}}}' });
    expect(poisoned.json().error).toEqual({ code: 'invalid_json', message: expect.stringContaining('__proto__') });
  });
});

describe('agents', () => {
  it('versions each PUT and answers the agent in force', async () => {
    const { app } = setup();
    const first = await app.inject({ method: 'PUT', url: '/v1/agents/helper', headers: auth(), payload: scriptedAgent });
    expect(first.statusCode).toBe(200);
    expect(first.json()).toMatchObject({ agentId: 'helper', tenantId: 't1', version: 1, maxSteps: 20 });
    const second = await app.inject({ method: 'PUT', url: '/v1/agents/helper', headers: auth(), payload: { ...scriptedAgent, system: 'v2' } });
    expect(second.json()).toMatchObject({ version: 2, system: 'v2', createdAt: first.json().createdAt });
    const read = await app.inject({ method: 'GET', url: '/v1/agents/helper', headers: auth() });
    expect(read.json()).toMatchObject({ version: 2, system: 'v2' });
    expect(read.json()._id).toBeUndefined();
  });

  it('takes the next version when another writer took one (agents document lagging)', async () => {
    const { app, memory } = setup();
    await app.inject({ method: 'PUT', url: '/v1/agents/helper', headers: auth(), payload: scriptedAgent });
    // A writer inserted version 2 and died before rewriting `agents`.
    const v1 = memory.agents.get('t1:helper')!;
    memory.agentVersions.set('t1:helper:2', { ...v1, version: 2, system: 'from a dead writer' });
    expect((await app.inject({ method: 'GET', url: '/v1/agents/helper', headers: auth() })).json().version).toBe(2);
    const put = await app.inject({ method: 'PUT', url: '/v1/agents/helper', headers: auth(), payload: scriptedAgent });
    expect(put.json().version).toBe(3);
  });

  it('scopes agents to the tenant and refuses bad definitions', async () => {
    const { app } = setup();
    await app.inject({ method: 'PUT', url: '/v1/agents/helper', headers: auth(), payload: scriptedAgent });
    const other = await app.inject({ method: 'GET', url: '/v1/agents/helper', headers: auth('t2') });
    expect(other.statusCode).toBe(404);
    expect(other.json().error.code).toBe('agent_not_found');
    const provider = await app.inject({ method: 'PUT', url: '/v1/agents/helper', headers: auth(), payload: { model: { provider: 'nope', model: 'x' } } });
    expect(provider.statusCode).toBe(400);
    expect(provider.json().error).toMatchObject({ code: 'invalid_request', message: expect.stringContaining('body.model') });
    const schema = await app.inject({
      method: 'PUT',
      url: '/v1/agents/helper',
      headers: auth(),
      payload: { ...scriptedAgent, tools: [{ name: 'echo', kind: 'builtin', inputSchema: { type: 'object', properties: { a: { type: 'nonsense' } } } }] },
    });
    expect(schema.json().error).toMatchObject({ code: 'invalid_request', message: expect.stringContaining('body.tools.0.inputSchema') });
    const deadline = await app.inject({
      method: 'PUT',
      url: '/v1/agents/helper',
      headers: auth(),
      payload: { ...scriptedAgent, limits: { llmStepTimeoutMs: 7 * 86_400_000 } },
    });
    expect(deadline.json().error.message).toContain('EVENTS_MAX_AGE');
    expect((await app.inject({ method: 'PUT', url: '/v1/agents/bad%20id', headers: auth(), payload: scriptedAgent })).json().error.code).toBe('invalid_request');
  });
});
