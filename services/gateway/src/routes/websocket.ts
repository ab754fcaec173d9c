import { ApiError, createRunBodySchema, wsClientFrameSchema, type WsClientFrame, type WsServerFrame } from '@abide/shared';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { RawData, WebSocket } from 'ws';
import type { Caller } from '../auth.ts';
import { CursorExpiredError, toApiError } from '../http-errors.ts';
import { describeIssues, parseOr400 } from '../validation.ts';
import type { RouteContext } from './route-context.ts';

/** Close codes (RFC 6455 §7.4.1). */
const closeCodes = { goingAway: 1001, tryAgainLater: 1013 } as const;

/** Whether a browser at `origin` may connect (no `Origin` = not a browser = allowed; `*` allows all). */
export function isOriginAllowed(origin: string | undefined, allowed: readonly string[]): boolean {
  if (origin === undefined) return true;
  return allowed.includes('*') || allowed.includes(origin);
}

/** `GET /v1/ws` (DESIGN §7): subscriptions to run events, run creation, cancels and approvals over one socket. */
export function registerWebSocketRoute(app: FastifyInstance, context: RouteContext): void {
  app.route({
    method: 'GET',
    url: '/v1/ws',
    config: { allowQueryToken: true },
    onRequest: async (request) => {
      if (!isOriginAllowed(request.headers.origin, context.wsAllowedOrigins)) {
        throw new ApiError('forbidden', `origin ${request.headers.origin} is not allowed (WS_ALLOWED_ORIGINS)`);
      }
      if (context.live.closing) throw new ApiError('unavailable', 'shutting down', { headers: { 'retry-after': '1' } });
      // Fail before the upgrade when the backend is not connected yet.
      context.services();
    },
    wsHandler: (socket, request) => {
      context.recordRequest('GET', '/v1/ws', 101);
      handleConnection(socket, request, context.caller(request), context);
    },
    // A plain HTTP request (no upgrade) to the WebSocket path.
    handler: async () => {
      throw new ApiError('upgrade_required', 'GET /v1/ws is a WebSocket endpoint: send Connection: Upgrade, Upgrade: websocket', { headers: { upgrade: 'websocket', connection: 'Upgrade' } });
    },
  });
}

function handleConnection(socket: WebSocket, request: FastifyRequest, caller: Caller, context: RouteContext): void {
  const log = request.log.child({ tenantId: caller.tenantId });
  const subscriptions = new Map<string, { controller: AbortController; ended: () => void }>();
  let closed = false;

  function send(frame: WsServerFrame): boolean {
    if (closed || socket.readyState !== socket.OPEN) return false;
    socket.send(JSON.stringify(frame));
    if (socket.bufferedAmount > context.streaming.wsHighWaterMarkBytes) {
      // A client that does not read would grow our memory without bound: drop it, it resumes with `after`.
      log.warn({ bufferedAmount: socket.bufferedAmount }, 'closing a WebSocket whose client does not keep up');
      close(closeCodes.tryAgainLater, 'client too slow');
      return false;
    }
    return true;
  }

  function sendError(error: unknown, fields: { requestId?: string | undefined; runId?: string | undefined }): void {
    const apiError = toApiError(error, { maxBodyBytes: context.maxBodyBytes });
    if (apiError.code === 'internal') log.error({ err: error, ...fields }, 'WebSocket request failed');
    send({
      type: 'error',
      ...(fields.requestId === undefined ? {} : { requestId: fields.requestId }),
      ...(fields.runId === undefined ? {} : { runId: fields.runId }),
      code: apiError.code,
      message: apiError.message,
      ...(apiError instanceof CursorExpiredError ? { run: apiError.run } : {}),
    });
  }

  function unsubscribe(runId: string): void {
    const subscription = subscriptions.get(runId);
    if (!subscription) return;
    subscriptions.delete(runId);
    subscription.controller.abort();
    subscription.ended();
  }

  function cleanUp(): void {
    if (closed) return;
    closed = true;
    clearInterval(heartbeat);
    for (const runId of [...subscriptions.keys()]) unsubscribe(runId);
    forget();
  }

  function close(code: number, reason: string): void {
    cleanUp();
    socket.close(code, reason);
  }

  async function subscribe(runId: string, after: number | undefined): Promise<void> {
    if (!subscriptions.has(runId) && subscriptions.size >= context.streaming.maxSubscriptionsPerSocket) {
      throw new ApiError('rate_limited', `at most ${context.streaming.maxSubscriptionsPerSocket} subscriptions per connection`);
    }
    unsubscribe(runId); // a new subscribe to the same run replaces the old one (e.g. with a new `after`)
    const controller = new AbortController();
    const subscription = { controller, ended: context.live.subscriptionStarted() };
    subscriptions.set(runId, subscription);
    const isCurrent = () => subscriptions.get(runId) === subscription;
    try {
      const events = await context.services().openRunEvents({ tenantId: caller.tenantId, runId, after, signal: controller.signal });
      if (!events) return;
      for await (const event of events) {
        if (!isCurrent() || !send({ type: 'event', runId, event })) break;
      }
    } catch (error) {
      if (!controller.signal.aborted) {
        sendError(error, { runId });
      }
    } finally {
      if (isCurrent()) unsubscribe(runId);
    }
  }

  async function handle(frame: WsClientFrame): Promise<void> {
    const services = () => context.services();
    switch (frame.type) {
      case 'ping':
        send({ type: 'pong' });
        return;
      case 'subscribe':
        await subscribe(frame.runId, frame.after);
        return;
      case 'unsubscribe':
        unsubscribe(frame.runId);
        return;
      case 'run.create': {
        const { type: _type, requestId, idempotencyKey, ...fields } = frame;
        // The HTTP body's rules (e.g. the metadata key limit) apply to the frame too.
        const body = parseOr400(createRunBodySchema, fields, 'frame');
        const result = await services().createRun({ tenantId: caller.tenantId, body, idempotencyKey, requestId: `${request.id}:${requestId}` });
        send({ type: 'run.created', requestId, runId: result.runId, status: result.status, conversationId: result.conversationId });
        await subscribe(result.runId, undefined);
        return;
      }
      case 'cancel':
        await services().cancelRun(caller.tenantId, frame.runId, frame.reason);
        send({ type: 'ack', requestId: frame.requestId, status: 'accepted' });
        return;
      case 'approval': {
        const { type: _type, requestId, ...decision } = frame;
        const outcome = await services().approvals.decide(caller, decision);
        send({ type: 'ack', requestId, status: outcome });
        return;
      }
    }
  }

  function onMessage(data: RawData): void {
    let value: unknown;
    try {
      value = JSON.parse(Buffer.isBuffer(data) ? data.toString('utf8') : Buffer.concat(Array.isArray(data) ? data : [Buffer.from(data)]).toString('utf8'));
    } catch {
      // Answered, not fatal: a bad frame never closes the socket.
      send({ type: 'error', code: 'invalid_json', message: 'the frame is not valid JSON' });
      return;
    }
    const requestId = typeof (value as { requestId?: unknown } | null)?.requestId === 'string' ? (value as { requestId: string }).requestId : undefined;
    const parsed = wsClientFrameSchema.safeParse(value);
    if (!parsed.success) {
      send({ type: 'error', ...(requestId === undefined ? {} : { requestId }), code: 'invalid_request', message: describeIssues('frame', parsed.error.issues) });
      return;
    }
    const frame = parsed.data;
    handle(frame).catch((error: unknown) => {
      sendError(error, { requestId: 'requestId' in frame ? frame.requestId : undefined, runId: 'runId' in frame ? frame.runId : undefined });
    });
  }

  const forget = context.live.addSocket({ close: () => close(closeCodes.goingAway, 'server shutting down') });
  const heartbeat = setInterval(() => send({ type: 'pong' }), context.streaming.heartbeatMs);
  socket.on('message', onMessage);
  socket.on('close', cleanUp);
  socket.on('error', (error) => {
    // Protocol errors (e.g. a frame over WS_MAX_FRAME_BYTES: the ws library closes with 1009).
    log.info({ err: error }, 'WebSocket error');
  });
}
