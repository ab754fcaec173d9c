/**
 * The openai-compatible path for real: the handler, `createLanguageModel` and the AI SDK's
 * provider against a tiny local server speaking the chat-completions streaming format.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ackDecisionFor, AbideError, createEgressPolicy, llmResultMessageSchema, type Resolver } from '@abide/shared';
import { createLanguageModel } from './model-factory.ts';
import { createRunStep } from './run-step.ts';
import {
  createFakeBodyReader,
  createFakeCancellations,
  createFakePublisher,
  createFakeResultStore,
  createFakeSecrets,
  deliveryOf,
  llmRequest,
  silentLogger,
} from './test-fakes.ts';

type Received = { path: string; authorization: string | undefined; body: Record<string, unknown> };
type Reply = (response: ServerResponse) => void;

const sse = (chunks: unknown[]) => chunks.map((chunk) => `data: ${JSON.stringify(chunk)}\n\n`).join('') + 'data: [DONE]\n\n';
const chunk = (delta: Record<string, unknown>, finishReason: string | null = null) => ({
  id: 'chatcmpl-1',
  object: 'chat.completion.chunk',
  created: 1_700_000_000,
  model: 'tiny-model',
  choices: [{ index: 0, delta, finish_reason: finishReason }],
});

const streamWithToolCall: Reply = (response) => {
  response.writeHead(200, { 'content-type': 'text/event-stream' });
  response.end(
    sse([
      chunk({ role: 'assistant', content: '' }),
      chunk({ content: 'Hel' }),
      chunk({ content: 'lo' }),
      chunk({ tool_calls: [{ index: 0, id: 'call_abc', type: 'function', function: { name: 'echo', arguments: '{"te' } }] }),
      chunk({ tool_calls: [{ index: 0, function: { arguments: 'xt":"hi"}' } }] }),
      chunk({}, 'tool_calls'),
      { id: 'chatcmpl-1', object: 'chat.completion.chunk', created: 1_700_000_000, model: 'tiny-model', choices: [], usage: { prompt_tokens: 12, completion_tokens: 5, total_tokens: 17 } },
    ]),
  );
};

let server: Server;
let baseURL: string;
let reply: Reply = streamWithToolCall;
const received: Received[] = [];

beforeAll(async () => {
  server = createServer((request: IncomingMessage, response: ServerResponse) => {
    let data = '';
    request.on('data', (part: Buffer) => (data += part.toString()));
    request.on('end', () => {
      received.push({ path: request.url ?? '', authorization: request.headers.authorization, body: JSON.parse(data || '{}') });
      reply(response);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  baseURL = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1`;
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
});

/** The request's tenant (`llmRequest`) holds the key unless a test says otherwise. */
function setup(
  secrets: Record<string, Record<string, string>> = { tenant_a: { TINY_MODEL_KEY: 'sk-test' } },
  egressAllow: string[] = ['127.0.0.1:*'],
  options: { baseURL?: string; resolve?: Resolver } = {},
) {
  const { publisher, published } = createFakePublisher();
  const { results, entries } = createFakeResultStore();
  const handler = createRunStep({
    publisher,
    results,
    bodies: createFakeBodyReader(),
    cancellations: createFakeCancellations().tracker,
    createModel: (config, { step, tenantId }) =>
      createLanguageModel(config, {
        step,
        tenantId,
        secrets: createFakeSecrets(secrets),
        egress: createEgressPolicy({ allow: egressAllow, variable: 'LLM_EGRESS_ALLOW', ...(options.resolve ? { resolve: options.resolve } : {}) }),
      }),
    logger: silentLogger,
    maxRetryAfterMs: 60_000,
  });
  const message = llmRequest({
    model: { provider: 'openai-compatible', baseURL: options.baseURL ?? baseURL, model: 'tiny-model', apiKeyEnv: 'TINY_MODEL_KEY' },
    tools: [{ name: 'echo', description: 'Returns its input', inputSchema: { type: 'object', properties: { text: { type: 'string' } } } }],
  });
  const llmResult = () => {
    const found = published.find((item) => item.subject === 'run.in.run_1.llm_result');
    return found && llmResultMessageSchema.parse(found.value).payload;
  };
  return { handler, message, published, entries, llmResult };
}

describe('openai-compatible model through the handler', () => {
  it('streams text, a tool call and usage from a chat-completions server', async () => {
    reply = streamWithToolCall;
    received.length = 0;
    const { handler, message, published, llmResult, entries } = setup();
    await handler.handle(deliveryOf(message));

    const request = received[0]!;
    expect(request.path).toBe('/v1/chat/completions');
    expect(request.authorization).toBe('Bearer sk-test');
    expect(request.body).toMatchObject({ model: 'tiny-model', stream: true, stream_options: { include_usage: true } });
    expect(request.body.messages).toEqual([
      { role: 'system', content: 'You are terse.' },
      { role: 'user', content: 'hello' },
    ]);
    expect(request.body.tools).toEqual([expect.objectContaining({ type: 'function', function: expect.objectContaining({ name: 'echo' }) })]);

    const deltas = published.filter((item) => item.value.type === 'message.delta').map((item) => item.value.payload.text);
    expect(deltas.join('')).toBe('Hello');
    const result = llmResult();
    expect(result).toEqual({
      ok: true,
      step: 0,
      attempt: 1,
      text: 'Hello',
      toolCalls: [{ providerToolCallId: 'call_abc', toolName: 'echo', args: { text: 'hi' } }],
      finishReason: 'tool-calls',
      usage: { inputTokens: 12, outputTokens: 5, totalTokens: 17 },
    });
    expect(entries.get('run_1.0')).toEqual(result);
  });

  it('retries a 429 after its Retry-After', async () => {
    reply = (response) => response.writeHead(429, { 'content-type': 'application/json', 'retry-after': '1' }).end('{"error":{"message":"slow down","type":"rate_limit"}}');
    const { handler, message, llmResult } = setup();
    const error = await handler.handle(deliveryOf(message)).catch((caught: unknown) => caught);
    expect(AbideError.isInstance(error) && error.retryable).toBe(true);
    expect(ackDecisionFor(error)).toEqual({ action: 'nak', delayMs: 1_000 });
    expect(llmResult()).toBeUndefined();
  });

  it('retries when the server drops the stream before its end', async () => {
    reply = (response) => {
      response.writeHead(200, { 'content-type': 'text/event-stream' });
      response.write(`data: ${JSON.stringify(chunk({ content: 'Hel' }))}\n\n`);
      setTimeout(() => response.socket?.destroy(), 20);
    };
    const { handler, message, llmResult } = setup();
    const error = await handler.handle(deliveryOf(message)).catch((caught: unknown) => caught);
    expect(AbideError.isInstance(error) && error.retryable).toBe(true);
    expect((error as Error).message).toMatch(/transient model failure/);
    expect(llmResult()).toBeUndefined();
  });

  it('fails the run for good on a 400, naming the status but never the body', async () => {
    reply = (response) => response.writeHead(400, { 'content-type': 'application/json' }).end('{"error":{"message":"model not found","type":"invalid_request_error"}}');
    const { handler, message, llmResult } = setup();
    await handler.handle(deliveryOf(message));
    const origin = new URL(baseURL).origin;
    expect(llmResult()).toMatchObject({ ok: false, error: { code: 'model_error', message: `HTTP 400 from ${origin}` } });
  });

  it('fails the run for good with secret_not_found when the key is not a secret of the run’s tenant', async () => {
    received.length = 0;
    const { handler, message, llmResult } = setup({ other_tenant: { TINY_MODEL_KEY: 'sk-other' } });
    await handler.handle(deliveryOf(message));
    expect(llmResult()).toMatchObject({ ok: false, error: { code: 'secret_not_found', message: 'secret "TINY_MODEL_KEY" not found for this tenant' } });
    expect(received).toEqual([]);
  });

  it('fails the run for good with egress_denied when the baseURL is not allowed, without a request', async () => {
    received.length = 0;
    const { handler, message, llmResult } = setup(undefined, ['127.0.0.1']);
    await handler.handle(deliveryOf(message));
    const origin = new URL(baseURL).origin;
    expect(llmResult()).toMatchObject({ ok: false, error: { code: 'egress_denied', message: `calls to ${origin} are not allowed (LLM_EGRESS_ALLOW)` } });
    expect(received).toEqual([]);
  });

  it('fails with egress_denied when an allowed name resolves to loopback (checked on the connection), without a request', async () => {
    received.length = 0;
    const port = new URL(baseURL).port;
    const resolve: Resolver = async () => [{ address: '127.0.0.1', family: 4 }];
    const { handler, message, llmResult } = setup(undefined, ['*.evil.example:*'], { baseURL: `http://model.evil.example:${port}/v1`, resolve });
    await handler.handle(deliveryOf(message));
    expect(llmResult()).toMatchObject({ ok: false, error: { code: 'egress_denied', message: `calls to http://model.evil.example:${port} are not allowed (LLM_EGRESS_ALLOW)` } });
    expect(received).toEqual([]);
  });
});
