import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { auth, createTestApp, keys, scriptedAgent, type TestApp } from './testing/test-app.ts';
import { apiKeyFromWebSocketProtocols, isSameOrigin, selectWebSocketProtocol } from './websocket-protocol.ts';

const keyProtocol = (key: string) => `abide.key.${Buffer.from(key).toString('base64url')}`;

describe('API keys in Sec-WebSocket-Protocol', () => {
  it('reads the key protocol, and selects only abide.v1 (never echoes the key)', () => {
    expect(apiKeyFromWebSocketProtocols(`abide.v1, ${keyProtocol('key with: odd chars')}`)).toBe('key with: odd chars');
    expect(apiKeyFromWebSocketProtocols('abide.v1')).toBeUndefined();
    expect(apiKeyFromWebSocketProtocols('abide.key.not base64!')).toBeUndefined();
    expect(selectWebSocketProtocol(new Set(['abide.v1', keyProtocol('k')]))).toBe('abide.v1');
    expect(selectWebSocketProtocol(new Set([keyProtocol('k')]))).toBe(false);
  });

  it('treats only the Host the browser connected to as the same origin', () => {
    expect(isSameOrigin('http://gateway.example:8080', 'gateway.example:8080')).toBe(true);
    expect(isSameOrigin('https://evil.example', 'gateway.example:8080')).toBe(false);
    expect(isSameOrigin('null', 'gateway.example')).toBe(false);
    expect(isSameOrigin(undefined, 'gateway.example')).toBe(false);
  });
});

describe('GET /v1/ws from the console', () => {
  let t: TestApp;
  beforeEach(async () => {
    t = createTestApp();
    await t.app.inject({ method: 'PUT', url: '/v1/agents/helper', headers: auth(), payload: scriptedAgent });
    await t.app.ready();
  });
  afterEach(async () => {
    await t.app.close();
  });

  it('accepts the key as a subprotocol from the gateway own origin; refuses a wrong key and a foreign origin', async () => {
    const address = await t.app.listen({ port: 0, host: '127.0.0.1' });
    // A real handshake, as a browser makes it: the key as a subprotocol, the page's own origin.
    const socket = new WebSocket(`${address.replace('http', 'ws')}/v1/ws`, ['abide.v1', keyProtocol(keys.t1)], { origin: address });
    await new Promise((resolve, reject) => socket.once('open', resolve).once('error', reject));
    expect(socket.protocol).toBe('abide.v1');
    const pong = new Promise((resolve) => socket.on('message', (data) => resolve(JSON.parse(String(data)))));
    socket.send(JSON.stringify({ type: 'ping' }));
    expect(await pong).toEqual({ type: 'pong' });
    socket.terminate();
    const headers = { 'sec-websocket-protocol': `abide.v1, ${keyProtocol(keys.t1)}`, origin: 'http://localhost:80', host: 'localhost:80' };
    (await t.app.injectWS('/v1/ws', { headers })).terminate();
    await expect(t.app.injectWS('/v1/ws', { headers: { ...headers, 'sec-websocket-protocol': `abide.v1, ${keyProtocol('wrong-key-0000000')}` } })).rejects.toThrow(/401/);
    await expect(t.app.injectWS('/v1/ws', { headers: { ...headers, origin: 'http://evil.example' } })).rejects.toThrow(/403/);
  });
});
