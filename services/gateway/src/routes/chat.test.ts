import type { LightMyRequestResponse } from 'fastify';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { auth, createTestApp, scriptedAgent, type TestApp } from '../testing/test-app.ts';

let t: TestApp;
beforeEach(async () => {
  t = createTestApp();
  await t.app.inject({ method: 'PUT', url: '/v1/agents/helper', headers: auth(), payload: scriptedAgent });
});
afterEach(async () => {
  await t.app.close();
});

const userMessage = { id: 'u1', role: 'user', parts: [{ type: 'text', text: 'hi' }] };

describe('POST /v1/agents/:agentId/chat (before the stream)', () => {
  it('refuses regenerate, non-text user parts and a bad chat id with 400, creating no run', async () => {
    const post = (payload: Record<string, unknown>): Promise<LightMyRequestResponse> => t.app.inject({ method: 'POST', url: '/v1/agents/helper/chat', headers: auth(), payload });
    const regenerate = await post({ id: 'c1', trigger: 'regenerate-message', messages: [userMessage] });
    expect([regenerate.statusCode, regenerate.json().error.code]).toEqual([400, 'invalid_request']);
    const file = await post({ id: 'c1', messages: [{ ...userMessage, parts: [{ type: 'file', url: 'http://x' }] }] });
    expect(file.json().error.message).toContain('only have text parts');
    const badId = await post({ id: 'no spaces allowed', messages: [userMessage] });
    expect(badId.statusCode).toBe(400);
    expect(t.bus.published).toHaveLength(0);
  });

  it("answers an unknown (or another tenant's) agent 404 and a missing key 401, in the API's error shape", async () => {
    const foreign = await t.app.inject({ method: 'POST', url: '/v1/agents/helper/chat', headers: auth('t2'), payload: { id: 'c1', messages: [userMessage] } });
    expect([foreign.statusCode, foreign.json().error.code]).toEqual([404, 'agent_not_found']);
    const anonymous = await t.app.inject({ method: 'POST', url: '/v1/agents/helper/chat', payload: { id: 'c1', messages: [userMessage] } });
    expect(anonymous.statusCode).toBe(401);
  });
});

describe('GET /v1/agents/:agentId/chat/:chatId/stream', () => {
  it('answers 204 without a run, 404 with ?startIndex, 400 on a bad index', async () => {
    expect((await t.app.inject({ url: '/v1/agents/helper/chat/c1/stream', headers: auth() })).statusCode).toBe(204);
    const workflow = await t.app.inject({ url: '/v1/agents/helper/chat/c1/stream?startIndex=0', headers: auth() });
    expect([workflow.statusCode, workflow.json().error.code]).toEqual([404, 'run_not_found']);
    const bad = await t.app.inject({ url: '/v1/agents/helper/chat/c1/stream?startIndex=x', headers: auth() });
    expect([bad.statusCode, bad.json().error.code]).toEqual([400, 'invalid_cursor']);
  });
});

describe('POST /v1/chat/completions errors', () => {
  const complete = (payload: Record<string, unknown>, headers: Record<string, string> = auth()): Promise<LightMyRequestResponse> => t.app.inject({ method: 'POST', url: '/v1/chat/completions', headers, payload });

  it("answers in OpenAI's shape, the auth hook's 401 included", async () => {
    const anonymous = await complete({ model: 'helper', messages: [{ role: 'user', content: 'hi' }] }, {});
    expect([anonymous.statusCode, anonymous.json()]).toEqual([401, { error: { message: expect.any(String), type: 'authentication_error', code: 'unauthorized', param: null } }]);
    const missing = await complete({ model: 'nobody', messages: [{ role: 'user', content: 'hi' }] });
    expect([missing.statusCode, missing.json().error]).toEqual([404, expect.objectContaining({ type: 'invalid_request_error', code: 'model_not_found', param: 'model' })]);
    const tools = await complete({ model: 'helper', messages: [{ role: 'user', content: 'hi' }], tools: [{ type: 'function', function: { name: 'x' } }] });
    expect([tools.statusCode, tools.json().error.param]).toEqual([400, 'tools']);
    const json = await t.app.inject({ method: 'POST', url: '/v1/chat/completions', headers: { ...auth(), 'content-type': 'application/json' }, payload: '{' });
    expect([json.statusCode, json.json().error.code, json.json().error.type]).toEqual([400, 'invalid_json', 'invalid_request_error']);
    expect(t.bus.published).toHaveLength(0);
  });
});
