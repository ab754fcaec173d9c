import { ApiError, createRunBodySchema, createWsTicketBodySchema, inSpan, SpanKind, webSocketQuerySchema, wsClientFrameSchema, wsTicketResponseSchema, type Lease, type WsClientFrame, type WsServerFrame } from '@abide/shared';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import type { RawData, WebSocket } from 'ws';
import type { Caller } from '../auth.ts';
import { CursorExpiredError, toApiError } from '../http-errors.ts';
import { emptyResponse, errorResponses, jsonResponse } from '../openapi.ts';
import { createRateLimiter } from '../rate-limiter.ts';
import { describeIssues, parseOr400 } from '../validation.ts';
import type { Services } from '../services.ts';
import { isSameOrigin } from '../websocket-protocol.ts';
import type { RouteConfig, RouteContext } from './route-context.ts';

type RunEvents = NonNullable<Awaited<ReturnType<Services['openRunEvents']>>>;

/** Close codes (RFC 6455 §7.4.1). */
const closeCodes = { goingAway: 1001, tryAgainLater: 1013 } as const;

/** Whether a browser at `origin` may connect (no `Origin` = not a browser = allowed; `*` allows all). */
export function isOriginAllowed(origin: string | undefined, allowed: readonly string[]): boolean {
  if (origin === undefined) return true;
  return allowed.includes('*') || allowed.includes(origin);
}

/** `GET /v1/ws` (DESIGN §7): subscriptions to run events, run creation, cancels and approvals over one socket. */
export function registerWebSocketRoute(app: FastifyInstance, context: RouteContext): void {
  const routes = app.withTypeProvider<ZodTypeProvider>();
  // A single-use ticket for `GET /v1/ws?ticket=` (authenticated by the Authorization header only).
  const ticketSchema = {
    summary: 'A single-use, short-lived ticket for GET /v1/ws?ticket= (keeps the API key out of URLs)',
    body: createWsTicketBodySchema,
    response: { 201: jsonResponse('the ticket and when it stops being accepted', wsTicketResponseSchema), ...errorResponses(400, 401, 503) },
  };
  routes.post('/v1/ws/tickets', { config: { bodyOptional: true } satisfies RouteConfig, schema: ticketSchema }, async (request, reply) => {
    return reply.code(201).send(await context.services().wsTickets.issue(context.caller(request)));
  });

  routes.route({
    method: 'GET',
    url: '/v1/ws',
    config: { allowQueryToken: true, allowTicket: true } satisfies RouteConfig,
    schema: {
      summary: 'WebSocket (JSON text frames; see docs/api.md). Client frames are described by x-client-frames',
      querystring: webSocketQuerySchema,
      response: { 101: emptyResponse('switching protocols'), ...errorResponses(400, 401, 403, 426, 429, 503) },
      'x-client-frames': wsClientFrameSchema,
    },
    onRequest: async (request) => {
      if (!isOriginAllowed(request.headers.origin, context.wsAllowedOrigins) && !isSameOrigin(request.headers.origin, request.headers.host)) {
        throw new ApiError('forbidden', `origin ${request.headers.origin} is not allowed (WS_ALLOWED_ORIGINS)`);
      }
      if (context.live.closing) throw new ApiError('unavailable', 'shutting down', { headers: { 'retry-after': '1' } });
      // Fail before the upgrade when the backend is not connected yet.
      const services = context.services();
      // A plain HTTP request is answered 426 by `handler` below and holds no connection slot.
      if (request.headers.upgrade?.toLowerCase() !== 'websocket') return;
      // The socket is one of the tenant's connections (issue 8): 429 before the upgrade over the cap,
      // released when the TCP connection closes (whatever ends it: the upgrade failing included).
      const lease = await services.capacity.acquireConnection(context.caller(request).tenantId, request.id);
      const connection = request.raw.socket as typeof request.raw.socket | undefined; // absent under app.injectWS
      if (!connection || connection.destroyed) await lease.release();
      else connection.once('close', () => void lease.release());
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
  const subscriptions = new Map<string, { controller: AbortController; ended: () => void; lease: Lease }>();
  /** Frames being handled now (a subscription counts until its run is loaded and its stream requested, not while it streams). */
  let inFlight = 0;
  const churn = createRateLimiter(context.streaming.subscribeChurn, Date.now, 'subscribe and unsubscribe frames on this connection');
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
    void subscription.lease.release(); // never rejects: a failed release is logged, the slot turns stale
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

  /**
   * Opens the run's events and returns once they are open (or refused); the events then stream
   * on their own until the run ends, the client unsubscribes or the socket closes. `created`:
   * the run was created by this socket's `run.create` a moment ago (`openRunEvents`' `created`).
   */
  async function subscribe(runId: string, after: number | undefined, created = false): Promise<void> {
    if (!subscriptions.has(runId) && subscriptions.size >= context.streaming.maxSubscriptionsPerSocket) {
      throw new ApiError('rate_limited', `at most ${context.streaming.maxSubscriptionsPerSocket} subscriptions per connection`);
    }
    unsubscribe(runId); // a new subscribe to the same run replaces the old one (e.g. with a new `after`)
    // One of the tenant's subscriptions across every gateway (issue 8): an `error` frame over the cap.
    const lease = await context.services().capacity.acquireSubscription(caller.tenantId, `${request.id}:${runId}`);
    if (closed) {
      await lease.release();
      return;
    }
    unsubscribe(runId); // a concurrent subscribe to the same run got here first: the newest wins
    const controller = new AbortController();
    const subscription = { controller, ended: context.live.subscriptionStarted(), lease };
    subscriptions.set(runId, subscription);
    const isCurrent = () => subscriptions.get(runId) === subscription;
    let events: RunEvents | null = null;
    try {
      events = await context.services().openRunEvents({ tenantId: caller.tenantId, runId, after, signal: controller.signal, created });
    } catch (error) {
      if (!controller.signal.aborted) sendError(error, { runId });
    }
    if (!events) {
      if (isCurrent()) unsubscribe(runId);
      return;
    }
    void forward(runId, events, controller, isCurrent);
  }

  async function forward(runId: string, events: RunEvents, controller: AbortController, isCurrent: () => boolean): Promise<void> {
    try {
      for await (const event of events) {
        if (!isCurrent() || !send({ type: 'event', runId, event })) break;
      }
    } catch (error) {
      if (!controller.signal.aborted) sendError(error, { runId });
    } finally {
      if (isCurrent()) unsubscribe(runId);
    }
  }

  /** A frame that changes a run (create, cancel, approval) gets a server span, as an HTTP request does (issue 10). */
  async function handle(frame: WsClientFrame): Promise<void> {
    if (frame.type === 'ping' || frame.type === 'subscribe' || frame.type === 'unsubscribe') return handleFrame(frame);
    return inSpan(`ws ${frame.type}`, { kind: SpanKind.SERVER, attributes: { 'abide.frame.type': frame.type } }, () => handleFrame(frame));
  }

  async function handleFrame(frame: WsClientFrame): Promise<void> {
    const services = () => context.services();
    switch (frame.type) {
      case 'ping':
        send({ type: 'pong' });
        return;
      case 'subscribe':
        churn.take('socket');
        await subscribe(frame.runId, frame.after);
        return;
      case 'unsubscribe':
        churn.take('socket');
        unsubscribe(frame.runId);
        return;
      case 'run.create': {
        const { type: _type, requestId, idempotencyKey, ...fields } = frame;
        // The HTTP body's rules (e.g. the metadata key limit) apply to the frame too.
        const body = parseOr400(createRunBodySchema, fields, 'frame');
        const result = await services().createRun({ tenantId: caller.tenantId, body, idempotencyKey, requestId: `${request.id}:${requestId}` });
        send({ type: 'run.created', requestId, runId: result.runId, status: result.status, conversationId: result.conversationId });
        await subscribe(result.runId, undefined, result.created);
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
      // A subscribe whose only fault is its `after` is a bad cursor: the code HTTP answers for it.
      const frameType = (value as { type?: unknown } | null)?.type;
      const cursorOnly = frameType === 'subscribe' && parsed.error.issues.every((issue) => issue.path[0] === 'after');
      const runIdField = cursorOnly && typeof (value as { runId?: unknown }).runId === 'string' ? { runId: (value as { runId: string }).runId } : {};
      send({
        type: 'error',
        ...(requestId === undefined ? {} : { requestId }),
        ...runIdField,
        code: cursorOnly ? 'invalid_cursor' : 'invalid_request',
        message: describeIssues('frame', parsed.error.issues),
      });
      return;
    }
    const frame = parsed.data;
    const fields = { requestId: 'requestId' in frame ? frame.requestId : undefined, runId: 'runId' in frame ? frame.runId : undefined };
    if (inFlight >= context.streaming.maxInFlightPerSocket) {
      // Answered, not queued and not fatal: the client waits for answers before sending more.
      sendError(new ApiError('too_many_in_flight', `at most ${context.streaming.maxInFlightPerSocket} frames are handled at once per connection; wait for answers`), fields);
      return;
    }
    inFlight += 1;
    handle(frame)
      .catch((error: unknown) => sendError(error, fields))
      .finally(() => {
        inFlight -= 1;
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
