import { connect as connectTcp } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { auth, createTestApp, keys, scriptedAgent, type TestApp } from './testing/test-app.ts';

/** Finding 19: a slow request body cannot hold a connection; streams (responses) are not cut. */
let t: TestApp;
afterEach(async () => {
  await t.app.close();
});

function appWith(timeouts: { REQUEST_TIMEOUT: number; HEADERS_TIMEOUT: number; CONNECTION_TIMEOUT: number }, heartbeatMs = 60_000): TestApp {
  return createTestApp({
    streaming: { heartbeatMs },
    config: {
      apiKeys: new Map([
        [keys.t1, 't1'],
        [keys.t2, 't2'],
      ]),
      MAX_BODY_BYTES: 64 * 1024,
      WS_MAX_FRAME_BYTES: 16 * 1024,
      WS_ALLOWED_ORIGINS: [],
      EVENTS_MAX_AGE: 7 * 86_400_000,
      KEEP_ALIVE_TIMEOUT: 5_000,
      WS_TICKET_TTL: 30_000,
      ...timeouts,
    },
  });
}

describe('request and connection timeouts', () => {
  it('answers 408 and closes a connection whose body never finishes arriving', async () => {
    t = appWith({ REQUEST_TIMEOUT: 400, HEADERS_TIMEOUT: 400, CONNECTION_TIMEOUT: 60_000 });
    await t.app.listen({ host: '127.0.0.1', port: 0 });
    const { port } = t.app.server.address() as { port: number };
    const socket = connectTcp(port, '127.0.0.1');
    let received = '';
    socket.on('data', (chunk) => (received += chunk.toString('utf8')));
    const closed = new Promise<void>((resolve) => socket.on('close', () => resolve()));
    await new Promise<void>((resolve) => socket.on('connect', () => resolve()));
    socket.write(`POST /v1/runs HTTP/1.1\r\nhost: x\r\nauthorization: Bearer ${keys.t1}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{"agentId":`);
    // The client never sends the rest: the server must give up on it by itself.
    await closed;
    expect(received).toMatch(/^HTTP\/1\.1 408/);
  });

  it('keeps an SSE stream open past the request and connection timeouts (heartbeats flow)', async () => {
    t = appWith({ REQUEST_TIMEOUT: 300, HEADERS_TIMEOUT: 300, CONNECTION_TIMEOUT: 500 }, 150);
    await t.app.inject({ method: 'PUT', url: '/v1/agents/helper', headers: auth(), payload: scriptedAgent });
    const runId = (await t.app.inject({ method: 'POST', url: '/v1/runs', headers: auth(), payload: { agentId: 'helper', input: 'hi' } })).json().runId;
    const address = await t.app.listen({ host: '127.0.0.1', port: 0 });
    const response = await fetch(`${address}/v1/runs/${runId}/events`, { headers: auth() });
    expect(response.status).toBe(200);
    const reader = response.body!.getReader();
    let heartbeats = 0;
    // 16 heartbeats of 150 ms: the stream lives well past both timeouts and a connection check.
    while (heartbeats < 16) {
      const { value, done } = await reader.read();
      expect(done).toBe(false);
      heartbeats += (Buffer.from(value!).toString('utf8').match(/: heartbeat/g) ?? []).length;
    }
    await reader.cancel();
  });

  it('keeps a WebSocket open past the request and connection timeouts', async () => {
    t = appWith({ REQUEST_TIMEOUT: 300, HEADERS_TIMEOUT: 300, CONNECTION_TIMEOUT: 500 }, 150);
    const address = await t.app.listen({ host: '127.0.0.1', port: 0 });
    const socket = new WebSocket(`${address.replace('http', 'ws')}/v1/ws`, { headers: auth() });
    let pongs = 0;
    let closed = false;
    socket.on('close', () => (closed = true));
    await new Promise<void>((resolve, reject) => {
      socket.on('message', (data) => {
        if (JSON.parse(String(data)).type === 'pong' && (pongs += 1) >= 16) resolve();
      });
      socket.on('close', (code) => reject(new Error(`closed with ${code} after ${pongs} heartbeats`)));
    });
    expect(closed).toBe(false);
    socket.close();
  });
});
