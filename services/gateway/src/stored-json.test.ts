import { storedJsonLimits } from '@abide/shared';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { auth, createTestApp, scriptedAgent, type TestApp } from './testing/test-app.ts';

// Finding 15 (API side): JSON that MongoDB cannot store ($-keys, dotted keys, too deep) is
// refused with 400 naming its path before any write or lock, never met at commit time as a 500.

let t: TestApp;
beforeEach(async () => {
  t = createTestApp();
  await t.app.inject({ method: 'PUT', url: '/v1/agents/helper', headers: auth(), payload: scriptedAgent });
});
afterEach(async () => {
  await t.app.close();
});

/** `storedJsonLimits.maxDepth` (checked below). */
const maxDepth = 8;
const nested = (depth: number): unknown => (depth === 0 ? 'leaf' : { level: nested(depth - 1) });
const createRun = (payload: Record<string, unknown>) => t.app.inject({ method: 'POST', url: '/v1/runs', headers: auth(), payload: { agentId: 'helper', ...payload } });

describe('stored JSON at the API', () => {
  it.each([
    ['a dotted metadata key', { metadata: { 'a.b': 1 } }, 'body.metadata["a.b"]'],
    ['a $-key in metadata', { metadata: { $where: 1 } }, 'body.metadata["$where"]'],
    ['a dotted key deep in metadata', { metadata: { a: [{ b: { 'c.d': true } }] } }, 'body.metadata.a.0.b["c.d"]'],
    ['an empty key', { metadata: { a: { '': 1 } } }, 'body.metadata.a[""]'],
    ['a $-key in a tool call input', { input: [{ role: 'assistant', content: [{ type: 'tool-call', toolCallId: 'p0', toolName: 'echo', input: { $set: 1 } }] }] }, '["$set"]'],
    ['a dotted key in a tool result', { input: [{ role: 'tool', content: [{ type: 'tool-result', toolCallId: 'p0', toolName: 'echo', output: { type: 'json', value: { 'x.y': 1 } } }] }] }, '["x.y"]'],
    ['metadata nested too deep', { metadata: { deep: nested(maxDepth) } }, `levels deep`],
    ['an array inside an array', { metadata: { a: [1, [2]] } }, 'body.metadata.a.1: an array inside an array'],
    ['an array inside an array in a tool result', { input: [{ role: 'tool', content: [{ type: 'tool-result', toolCallId: 'p0', toolName: 'echo', output: { type: 'error-json', value: { x: [[null]] } } }] }] }, '.value.x.0: an array inside an array'],
  ])('refuses %s with 400 invalid_request naming the path, and takes no lock', async (_name, payload, where) => {
    const response = await createRun({ input: 'hi', conversationId: 'conv-1', ...payload });
    expect(response.statusCode).toBe(400);
    expect(response.json().error).toEqual({ code: 'invalid_request', message: expect.stringContaining(where) });
    expect(t.memory.locks.size).toBe(0);
    // the conversation is free at once
    expect((await createRun({ input: 'hi', conversationId: 'conv-1' })).statusCode).toBe(201);
  });

  it('accepts storable JSON up to the depth bound, and drops unknown fields of input parts', async () => {
    expect(storedJsonLimits.maxDepth).toBe(maxDepth);
    const response = await createRun({
      input: [{ role: 'user', content: [{ type: 'text', text: 'hi', 'odd.field': 1 }] }],
      metadata: { deep: nested(maxDepth - 1), 'key with spaces$': 1 },
    });
    expect(response.statusCode).toBe(201);
    const run = t.memory.transitions.get(`${response.json().runId}:1`);
    expect(run?.state.messages).toEqual([{ role: 'user', content: [{ type: 'text', text: 'hi' }] }]);
  });

  it('releases the conversation lock when the commit fails after it was taken', async () => {
    t.memory.failNext('insertTransition', new Error('the store refused the document'));
    expect((await createRun({ input: 'hi', conversationId: 'conv-2' })).statusCode).toBe(500);
    expect(t.memory.locks.size).toBe(0);
    expect((await createRun({ input: 'hi', conversationId: 'conv-2' })).statusCode).toBe(201);
  });

  it('refuses unstorable approval args and agent definitions with 400 (agents may use any key)', async () => {
    const approval = await t.app.inject({ method: 'POST', url: '/v1/runs/run_x/approvals/s0c0', headers: auth(), payload: { approved: true, args: { 'a.b': 1 } } });
    expect(approval.statusCode).toBe(400);
    expect(approval.json().error.message).toContain('body.args["a.b"]');
    const batch = await t.app.inject({ method: 'POST', url: '/v1/runs/run_x/approvals', headers: auth(), payload: { decisions: [{ toolCallId: 's0c0', approved: true, args: { x: { $gt: 1 } } }] } });
    expect(batch.json().error.message).toContain('body.decisions.0.args.x["$gt"]');
    // An agent's JSON Schema may use any keyword (the store escapes keys), but not a nested array.
    const withKeywords = { type: 'object', $defs: { text: { type: 'string' } }, properties: { a: { $ref: '#/$defs/text' } } };
    const put = (inputSchema: Record<string, unknown>) =>
      t.app.inject({ method: 'PUT', url: '/v1/agents/helper', headers: auth(), payload: { ...scriptedAgent, tools: [{ name: 'echo', kind: 'builtin', inputSchema }] } });
    expect((await put(withKeywords)).statusCode).toBe(200);
    expect((await put({ type: 'object', properties: { 'a\u0000b': {} } })).statusCode).toBe(400);
    const nestedArray = await put({ type: 'object', properties: { a: { enum: [[1, 2]] } } });
    expect(nestedArray.statusCode).toBe(400);
    expect(nestedArray.json().error.message).toContain('body.tools.0.inputSchema.properties.a.enum.0: an array inside an array');
  });

  it('refuses them in a WebSocket run.create frame too, keeping the socket usable', async () => {
    await t.app.ready();
    const socket = await t.app.injectWS('/v1/ws', { headers: auth() });
    const frames: Record<string, unknown>[] = [];
    const next = () => new Promise<Record<string, unknown>>((resolve) => socket.once('message', (data) => resolve(JSON.parse(String(data)))));
    let reply = next();
    socket.send(JSON.stringify({ type: 'run.create', requestId: 'r1', agentId: 'helper', input: 'hi', metadata: { 'a.b': 1 } }));
    frames.push(await reply);
    reply = next();
    socket.send(JSON.stringify({ type: 'ping' }));
    frames.push(await reply);
    expect(frames).toEqual([{ type: 'error', requestId: 'r1', code: 'invalid_request', message: expect.stringContaining('frame.metadata["a.b"]') }, { type: 'pong' }]);
    expect(t.memory.locks.size).toBe(0);
    socket.terminate();
  });
});
