import { ApiError, chatAgentParamsSchema, chatRequestBodySchema, chatWebSocketQuerySchema, decodeJson, wsChatClientFrameSchema, type WsChatClientFrame, type WsChatServerFrame } from '@abide/shared';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import type { RawData, WebSocket } from 'ws';
import type { Caller } from '../auth.ts';
import { planChatRequest, refusalChunks, responseChunks, type ResponseChunk } from '../chat-requests.ts';
import { findChatRun } from '../chat-runs.ts';
import { toApiError } from '../http-errors.ts';
import { emptyResponse, errorResponses } from '../openapi.ts';
import { describeIssues } from '../validation.ts';
import type { RouteContext } from './route-context.ts';
import { holdStreamLeases } from './streaming-response.ts';
import { isSameOrigin } from '../websocket-protocol.ts';
import { isOriginAllowed } from './websocket.ts';

/** Close codes (RFC 6455 §7.4.1). */
const closeCodes = { goingAway: 1001, policyViolation: 1008, tryAgainLater: 1013 } as const;

/**
 * `GET /v1/agents/:agentId/chat/ws`: the AI SDK's `WebSocketChatTransport` protocol (`CLIENTS.md`
 * §2b), many chats over one socket. Authenticated at the handshake by the `Authorization` header
 * or a single-use ticket (`?ticket=`, from `POST /v1/ws/tickets`): browsers cannot set headers.
 */
export function registerChatWebSocketRoute(app: FastifyInstance, context: RouteContext): void {
  app.withTypeProvider<ZodTypeProvider>().route({
    method: 'GET',
    url: '/v1/agents/:agentId/chat/ws',
    config: { allowTicket: true },
    schema: {
      summary: 'AI SDK WebSocketChatTransport: many chats over one socket (send, resume with lastSequence, abort cancels the run); ?ticket= or the Authorization header',
      params: chatAgentParamsSchema,
      querystring: chatWebSocketQuerySchema,
      response: { 101: emptyResponse('switching protocols'), ...errorResponses(400, 401, 403, 426, 429, 503) },
    },
    onRequest: async (request) => {
      if (!isOriginAllowed(request.headers.origin, context.wsAllowedOrigins) && !isSameOrigin(request.headers.origin, request.headers.host)) {
        throw new ApiError('forbidden', `origin ${request.headers.origin} is not allowed (WS_ALLOWED_ORIGINS)`);
      }
      if (context.live.closing) throw new ApiError('unavailable', 'shutting down', { headers: { 'retry-after': '1' } });
      // A plain HTTP request is answered 426 by `handler` below and holds no connection slot.
      if (request.headers.upgrade?.toLowerCase() !== 'websocket') return;
      // One of the tenant's connections, as on /v1/ws: 429 before the upgrade over the cap,
      // released when the TCP connection closes (whatever ends it).
      const lease = await context.services().capacity.acquireConnection(context.caller(request).tenantId, request.id);
      const connection = request.raw.socket as typeof request.raw.socket | undefined; // absent under app.injectWS
      if (!connection || connection.destroyed) await lease.release();
      else connection.once('close', () => void lease.release());
    },
    wsHandler: (socket, request) => {
      context.recordRequest('GET', '/v1/agents/:agentId/chat/ws', 101);
      handleChatConnection(socket, request, context.caller(request), request.params.agentId, context);
    },
    // A plain HTTP request (no upgrade) to the WebSocket path.
    handler: async () => {
      throw new ApiError('upgrade_required', 'this is a WebSocket endpoint: send Connection: Upgrade, Upgrade: websocket', { headers: { upgrade: 'websocket', connection: 'Upgrade' } });
    },
  });
}

/** A request being answered: its abort, the run it follows once known, and whether the user stopped it. */
type ActiveRequest = { controller: AbortController; runId?: string; stopped?: boolean };

function handleChatConnection(socket: WebSocket, request: FastifyRequest, caller: Caller, agentId: string, context: RouteContext): void {
  const log = request.log.child({ tenantId: caller.tenantId, agentId });
  /** Requests being answered: their abort, and the run they follow once known. */
  const active = new Map<string, ActiveRequest>();
  let closed = false;

  function send(frame: WsChatServerFrame): boolean {
    if (closed || socket.readyState !== socket.OPEN) return false;
    socket.send(JSON.stringify(frame));
    if (socket.bufferedAmount > context.streaming.wsHighWaterMarkBytes) {
      // A client that does not read would grow our memory without bound: drop it; its chats resume.
      log.warn({ bufferedAmount: socket.bufferedAmount }, 'closing a chat WebSocket whose client does not keep up');
      close(closeCodes.tryAgainLater, 'client too slow');
      return false;
    }
    return true;
  }

  function close(code: number, reason: string): void {
    if (closed) return;
    closed = true;
    for (const entry of active.values()) entry.controller.abort();
    active.clear();
    socket.close(code, reason);
  }

  const forget = context.live.addSocket({ close: () => close(closeCodes.goingAway, 'shutting down') });
  // A protocol-level ping: the transport throws on any frame type it does not know.
  const heartbeat = setInterval(() => {
    if (!closed && socket.readyState === socket.OPEN) socket.ping();
  }, context.streaming.heartbeatMs);
  socket.on('close', () => {
    closed = true;
    clearInterval(heartbeat);
    forget();
    // The socket went away, not the user: the runs go on (durable), the chats resume on a new socket.
    for (const entry of active.values()) entry.controller.abort();
    active.clear();
  });

  /** Streams chunks as `chunk` frames (`sequenceOf` numbers them), then `end` after the last. */
  async function stream(requestId: string, chunks: AsyncIterable<ResponseChunk & { last: boolean }> | Iterable<ResponseChunk & { last: boolean }>, signal: AbortSignal, sequenceOf: (chunk: ResponseChunk, position: number) => number): Promise<void> {
    if (!send({ type: 'start', requestId })) return;
    let position = 0;
    for await (const item of chunks) {
      if (signal.aborted || !send({ type: 'chunk', requestId, sequence: sequenceOf(item, position++), chunk: item.chunk })) return;
      if (item.last) {
        send({ type: 'end', requestId });
        return;
      }
    }
  }

  async function answer(frame: Exclude<WsChatClientFrame, { type: 'abort' }>): Promise<void> {
    const { requestId } = frame;
    const controller = new AbortController();
    const entry: ActiveRequest = { controller };
    active.set(requestId, entry);
    const services = context.services();
    let release: (() => Promise<void>) | undefined;
    try {
      if (frame.type === 'send') {
        const parsed = chatRequestBodySchema.safeParse({ id: frame.id, messages: frame.messages, trigger: frame.trigger, messageId: frame.messageId });
        if (!parsed.success) throw new ApiError('invalid_request', describeIssues('frame', parsed.error.issues));
        // The subscription's lease first: a tenant over its cap gets an error and no run is created.
        release = await holdStreamLeases(context, caller.tenantId, `${request.id}:${requestId}`, { connection: false });
        const plan = await planChatRequest(services, context.maxBodyBytes, { caller, agentId, body: parsed.data, requestId: `${request.id}:${requestId}` });
        if (plan.kind === 'refused') {
          await stream(requestId, refusalChunks(plan.errorText), controller.signal, (_chunk, position) => position);
          return;
        }
        entry.runId = plan.runId;
        // Stopped while the run was being created: cancel it now that it has an id.
        if (entry.stopped) {
          await cancel(plan.runId);
          return;
        }
        const chunks = responseChunks(services, { tenantId: caller.tenantId, runId: plan.runId, selection: plan.selection, signal: controller.signal, created: plan.created });
        await stream(requestId, chunks, controller.signal, (_chunk, position) => position);
        return;
      }
      const run = await findChatRun(services, { tenantId: caller.tenantId, agentId, chatId: frame.id, latest: false });
      if (!run) {
        send({ type: 'no-active', requestId });
        return;
      }
      entry.runId = run.state.runId;
      release = await holdStreamLeases(context, caller.tenantId, `${request.id}:${requestId}`, { connection: false });
      const fromIndex = frame.lastSequence === undefined ? 0 : frame.lastSequence + 1;
      const chunks = responseChunks(services, { tenantId: caller.tenantId, runId: run.state.runId, selection: { fromIndex }, signal: controller.signal });
      // A resume counts in the run's chunk indexes: `lastSequence` + 1 is exactly the next chunk the client lacks.
      await stream(requestId, chunks, controller.signal, (chunk) => chunk.index);
    } catch (error) {
      const apiError = toApiError(error, { maxBodyBytes: context.maxBodyBytes });
      if (apiError.code === 'internal') log.error({ err: error, requestId }, 'chat WebSocket request failed');
      if (!controller.signal.aborted) send({ type: 'error', requestId, errorText: `${apiError.code}: ${apiError.message}` });
    } finally {
      active.delete(requestId);
      controller.abort();
      await release?.();
    }
  }

  /** `abort`: the user stopped the chat — the request ends and its run is cancelled. */
  async function abort(requestId: string): Promise<void> {
    const entry = active.get(requestId);
    if (!entry) return;
    entry.stopped = true;
    entry.controller.abort();
    if (entry.runId !== undefined) await cancel(entry.runId);
  }

  async function cancel(runId: string): Promise<void> {
    try {
      await context.services().cancelRun(caller.tenantId, runId, 'aborted from the chat');
    } catch (error) {
      // A run that ended meanwhile (run_finished) needs nothing; anything else is logged: the client sent a fire-and-forget frame.
      if (!(error instanceof ApiError && error.code === 'run_finished')) log.warn({ err: error, runId }, 'could not cancel an aborted chat run');
    }
  }

  socket.on('message', (data: RawData) => {
    let value: unknown;
    try {
      value = decodeJson(Array.isArray(data) ? Buffer.concat(data) : data instanceof ArrayBuffer ? new Uint8Array(data) : data);
    } catch (error) {
      // Not JSON: no request id to answer to, and the transport has no frame for it.
      log.debug({ err: error }, 'chat WebSocket frame is not JSON');
      close(closeCodes.policyViolation, 'frames must be JSON');
      return;
    }
    const parsed = wsChatClientFrameSchema.safeParse(value);
    if (!parsed.success) {
      const requestId = (value as { requestId?: unknown } | null)?.requestId;
      if (typeof requestId === 'string' && requestId.length <= 128) send({ type: 'error', requestId, errorText: `invalid_request: ${describeIssues('frame', parsed.error.issues)}` });
      else close(closeCodes.policyViolation, 'invalid frame');
      return;
    }
    const frame = parsed.data;
    if (frame.type === 'abort') {
      void abort(frame.requestId);
      return;
    }
    if (active.has(frame.requestId)) {
      send({ type: 'error', requestId: frame.requestId, errorText: 'invalid_request: this requestId is in use' });
      return;
    }
    if (active.size >= context.streaming.maxSubscriptionsPerSocket) {
      send({ type: 'error', requestId: frame.requestId, errorText: `too_many_in_flight: at most ${context.streaming.maxSubscriptionsPerSocket} chat requests at once on one socket` });
      return;
    }
    void answer(frame);
  });
}
