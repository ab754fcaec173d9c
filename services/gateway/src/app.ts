import { ApiError, newId, type Logger, type Metrics } from '@abide/shared';
import fastifyWebsocket from '@fastify/websocket';
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance, type FastifyRequest } from 'fastify';
import { serializerCompiler, validatorCompiler } from 'fastify-type-provider-zod';
import { createAuthenticator, type Caller } from './auth.ts';
import type { GatewayConfig } from './config.ts';
import { errorBody, toApiError } from './http-errors.ts';
import { createLiveConnections, type LiveConnections } from './live-connections.ts';
import { maxAgentDeadlineMs } from './agents.ts';
import { registerOpenApi } from './openapi.ts';
import type { Backend } from './ports.ts';
import { createRateLimiter, defaultRunCreationLimit, type RateLimitOptions } from './rate-limiter.ts';
import { registerAgentRoutes } from './routes/agents.ts';
import { registerApprovalRoutes } from './routes/approvals.ts';
import { registerChatRoutes } from './routes/chat.ts';
import { registerChatWebSocketRoute } from './routes/chat-ws.ts';
import { registerOpenAiRoutes } from './routes/openai.ts';
import { registerConsoleRoutes } from './routes/console.ts';
import { registerEventRoutes } from './routes/events.ts';
import { registerOperationRoutes, type Readiness } from './routes/operations.ts';
import type { RouteConfig, RouteContext, StreamingOptions } from './routes/route-context.ts';
import { registerRunHistoryRoute } from './routes/run-history.ts';
import { registerRunRoutes } from './routes/runs.ts';
import { registerWebSocketRoute } from './routes/websocket.ts';
import { createServices, type Services } from './services.ts';
import { registerRequestTracing } from './request-tracing.ts';
import { createArgsValidation } from './args-validation.ts';
import { apiKeyFromWebSocketProtocols, selectWebSocketProtocol } from './websocket-protocol.ts';

export type AppDeps = {
  config: Pick<
    GatewayConfig,
    'apiKeys' | 'MAX_BODY_BYTES' | 'WS_MAX_FRAME_BYTES' | 'WS_ALLOWED_ORIGINS' | 'EVENTS_MAX_AGE' | 'REQUEST_TIMEOUT' | 'HEADERS_TIMEOUT' | 'CONNECTION_TIMEOUT' | 'KEEP_ALIVE_TIMEOUT' | 'WS_TICKET_TTL'
  > &
    Partial<Pick<GatewayConfig, 'TENANT_MAX_ACTIVE_RUNS'>>;
  logger: Logger;
  metrics: Metrics;
  /** NATS and MongoDB, once connected (undefined while `main.ts` is still connecting: answers 503). */
  backend(): Backend | undefined;
  readiness: Readiness;
  /** True once shutdown began: new requests get 503. */
  isDraining(): boolean;
  streaming?: Partial<StreamingOptions>;
  runCreationLimit?: RateLimitOptions;
  /** Where the built console is (`console/dist` by default; `npm run build -w console`). */
  consoleDirectory?: string;
  /** How long a live event stream may try to resume its reader before ending with `subscription_interrupted` (tests shorten it). @default 20000 */
  eventsResumeWithinMs?: number;
  /** How long a created run's reader may read nothing before the run is checked (`run-events.ts`). @default 2500 */
  createdRunCheckMs?: number;
  now?: () => Date;
};

export const defaultStreamingOptions: StreamingOptions = {
  heartbeatMs: 15_000,
  wsHighWaterMarkBytes: 8 * 1_048_576,
  maxSubscriptionsPerSocket: 100,
  maxInFlightPerSocket: 16,
  subscribeChurn: { burst: 50, perSecond: 10 },
};

const requestIdPattern = /^[A-Za-z0-9_.:-]{1,128}$/;

/** Whether `text` parses as JSON (used only after fastify's parser refused it). */
function isJson(text: string): boolean {
  try {
    JSON.parse(text);
    return true;
  } catch {
    // Not JSON: fastify's own refusal (invalid_json) stands.
    return false;
  }
}

/**
 * The gateway's HTTP and WebSocket API (DESIGN §7) as a fastify instance: one error handler
 * (`{ error: { code, message } }`, statuses from `httpStatusByCode`), API-key auth on `/v1`,
 * and the routes. `live` holds the open SSE streams and WebSockets (closed on shutdown).
 */
export function createApp(deps: AppDeps): { app: FastifyInstance; live: LiveConnections } {
  const { config, logger, metrics } = deps;
  const streaming = { ...defaultStreamingOptions, ...deps.streaming };
  const limits = { maxBodyBytes: config.MAX_BODY_BYTES };
  const live = createLiveConnections();
  const authenticator = createAuthenticator(config.apiKeys);
  const callers = new WeakMap<FastifyRequest, Caller>();
  const toolArgs = createArgsValidation();
  const rateLimiter = createRateLimiter(deps.runCreationLimit ?? defaultRunCreationLimit);
  const requests = metrics.counter('http_requests_total', 'HTTP requests by method, route and status');
  const latency = metrics.histogram('http_request_duration_seconds', 'HTTP request latency by method and route pattern (streams count until they end)', ['method', 'route']);
  metrics.gauge('websocket_connections', 'Open WebSocket connections', () => live.counts().websockets);
  metrics.gauge('sse_streams', 'Open SSE streams', () => live.counts().sseStreams);
  metrics.gauge('event_subscriptions', 'Active run event subscriptions (SSE and WebSocket)', () => live.counts().subscriptions);

  let services: { backend: Backend; services: Services } | undefined;
  function currentServices(): Services {
    const backend = deps.backend();
    if (!backend) throw new ApiError('unavailable', 'starting: not connected to NATS and MongoDB yet', { headers: { 'retry-after': '1' } });
    if (services?.backend !== backend) {
      services = {
        backend,
        services: createServices(backend, {
          logger,
          toolArgs,
          rateLimiter,
          eventsMaxAgeMs: config.EVENTS_MAX_AGE,
          wsTicketTtlMs: config.WS_TICKET_TTL,
          maxActiveRuns: config.TENANT_MAX_ACTIVE_RUNS,
          ...(deps.now ? { now: deps.now } : {}),
          ...(deps.eventsResumeWithinMs === undefined ? {} : { eventsResumeWithinMs: deps.eventsResumeWithinMs }),
          ...(deps.createdRunCheckMs === undefined ? {} : { createdRunCheckMs: deps.createdRunCheckMs }),
        }),
      };
    }
    return services.services;
  }

  const app: FastifyInstance = Fastify({
    loggerInstance: logger as FastifyBaseLogger,
    // Requests are logged once, on response, by the hook below (route pattern only: no query strings, no keys).
    logController: new LogController({ disableRequestLogging: true, requestIdLogLabel: 'requestId' }),
    bodyLimit: config.MAX_BODY_BYTES,
    // A request (headers and body) must arrive within REQUEST_TIMEOUT (Node answers 408 and closes);
    // SSE and WebSocket streams are responses, not request bodies, so they are not cut by it.
    requestTimeout: config.REQUEST_TIMEOUT,
    // Node looks for expired requests every `connectionsCheckingInterval` (30 s by default): check every second.
    http: { headersTimeout: config.HEADERS_TIMEOUT, connectionsCheckingInterval: 1_000 },
    // Idle sockets (no bytes either way); SSE sends heartbeats, and ws turns the timeout off after an upgrade.
    connectionTimeout: config.CONNECTION_TIMEOUT,
    keepAliveTimeout: config.KEEP_ALIVE_TIMEOUT,
    genReqId: (request) => {
      const header = request.headers['x-request-id'];
      return typeof header === 'string' && requestIdPattern.test(header) ? header : newId('req');
    },
    // While closing, requests still reach the hooks, which answer 503 in the API's error format.
    return503OnClosing: false,
    forceCloseConnections: 'idle',
  });

  app.addHook('onClose', async () => {
    await toolArgs.close();
  });

  // Routes declare their schemas with the zod contracts: fastify validates requests with them
  // (a refusal becomes 400 in the error handler below) and serializes answers through them.
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);
  // Before any route: the OpenAPI document is collected from the routes as they are added.
  registerOpenApi(app, { maxDeadlineMs: maxAgentDeadlineMs(config.EVENTS_MAX_AGE) });

  // JSON bodies: an empty body is "no body" (an optional body such as cancel's), not an error.
  const defaultJsonParser = app.getDefaultJsonParser('error', 'error');
  app.removeContentTypeParser(['application/json', 'text/plain']);
  app.addContentTypeParser('application/json', { parseAs: 'string' }, (request, body, done) => {
    if (body === '' || (typeof body === 'string' && body.trim() === '')) {
      done(null, undefined);
      return;
    }
    defaultJsonParser(request, body as string, (error, value) => {
      if (error && isJson(body as string)) {
        // Valid JSON that fastify's parser (secure-json-parse) refused: prototype poisoning.
        done(new ApiError('invalid_json', 'the request body holds a __proto__ key, or a constructor key whose object has a prototype key: refused'), undefined);
        return;
      }
      done(error, value);
    });
  });

  app.setErrorHandler((error, request, reply) => {
    const apiError = toApiError(error, { ...limits, cursorFields: (request.routeOptions.config as RouteConfig | undefined)?.cursorFields });
    if (apiError.code === 'internal') request.log.error({ err: error }, 'request failed');
    else if (apiError.code === 'unavailable') request.log.warn({ message: apiError.message, cause: (apiError.cause as Error | undefined)?.message }, 'request refused: unavailable');
    else request.log.debug({ code: apiError.code, message: apiError.message }, 'request refused');
    return reply.code(apiError.status).headers(apiError.headers).send(errorBody(apiError));
  });

  app.setNotFoundHandler((request, reply) => {
    return reply.code(404).send(errorBody(new ApiError('not_found', `no route ${request.method} ${request.url.split('?')[0]}`)));
  });

  registerRequestTracing(app);

  // Auth is decided by the route the router matched (its config), never by the raw URL: the router
  // decodes (`/%761/ws` is `/v1/ws`), so a URL test and the route could disagree. Every route needs
  // a caller unless it opts out with `public`; unmatched paths (the 404 handler) need one too.
  app.addHook('onRequest', async (request, reply) => {
    reply.header('x-request-id', request.id);
    const routeConfig = (request.routeOptions.config ?? {}) as RouteConfig;
    if (deps.isDraining() && routeConfig.servedWhileDraining !== true) {
      reply.header('connection', 'close');
      throw new ApiError('unavailable', 'shutting down', { headers: { 'retry-after': '1' } });
    }
    if (routeConfig.public === true) return;
    const query = (request.query ?? {}) as Record<string, unknown>;
    const allowQueryToken = routeConfig.allowQueryToken === true;
    // A browser cannot set headers on a WebSocket handshake: the key may come as `?access_token=`
    // or as the `abide.key.<base64url>` subprotocol (websocket-protocol.ts), or a ticket instead.
    const accessToken =
      typeof query.access_token === 'string' && allowQueryToken ? query.access_token
      : allowQueryToken ? apiKeyFromWebSocketProtocols(request.headers['sec-websocket-protocol'])
      : undefined;
    const ticket = routeConfig.allowTicket === true && request.headers.authorization === undefined ? query.ticket : undefined;
    const caller =
      typeof ticket === 'string'
        ? await currentServices().wsTickets.redeem(ticket)
        : authenticator.authenticate(request.headers.authorization, accessToken);
    callers.set(request, caller);
    request.log = request.log.child({ tenantId: caller.tenantId });
  });

  // A route whose body is optional validates a missing one as `{}` (a JSON `null` still fails its schema).
  app.addHook('preValidation', async (request) => {
    if ((request.routeOptions.config as RouteConfig | undefined)?.bodyOptional === true && request.body === undefined) request.body = {};
  });

  app.addHook('onResponse', async (request, reply) => {
    const route = request.routeOptions.url ?? 'unmatched';
    requests.inc({ method: request.method, route, status: String(reply.statusCode) });
    latency.observe({ method: request.method, route }, reply.elapsedTime / 1_000);
    request.log.info({ method: request.method, route, status: reply.statusCode, ms: Math.round(reply.elapsedTime) }, 'request');
  });

  const context: RouteContext = {
    services: currentServices,
    caller(request) {
      const caller = callers.get(request);
      if (!caller) throw new ApiError('unauthorized', 'missing or unknown API key');
      return caller;
    },
    logger,
    metrics,
    recordRequest: (method, route, status) => requests.inc({ method, route, status: String(status) }),
    live,
    streaming,
    maxBodyBytes: config.MAX_BODY_BYTES,
    wsAllowedOrigins: config.WS_ALLOWED_ORIGINS,
  };

  app.register(fastifyWebsocket, {
    options: { maxPayload: config.WS_MAX_FRAME_BYTES, handleProtocols: selectWebSocketProtocol },
    errorHandler: (error, socket, request) => {
      request.log.error({ err: error }, 'WebSocket handler failed');
      socket.close(1011, 'internal error');
    },
  });
  const methodsByPath = new Map<string, { methods: Set<string>; public: boolean }>();
  app.register(async (scope) => {
    scope.addHook('onRoute', (route) => {
      const entry = methodsByPath.get(route.url) ?? { methods: new Set<string>(), public: true };
      for (const method of [route.method].flat()) entry.methods.add(method);
      entry.public &&= (route.config as RouteConfig | undefined)?.public === true;
      methodsByPath.set(route.url, entry);
    });
    registerOperationRoutes(scope, context, { readiness: deps.readiness, openApiDocument: () => app.swagger() });
    registerAgentRoutes(scope, context);
    registerRunRoutes(scope, context);
    registerEventRoutes(scope, context);
    registerApprovalRoutes(scope, context);
    registerWebSocketRoute(scope, context);
    registerChatRoutes(scope, context);
    registerChatWebSocketRoute(scope, context);
    registerOpenAiRoutes(scope, context);
    registerRunHistoryRoute(scope, context);
    registerConsoleRoutes(scope, deps.consoleDirectory ? { directory: deps.consoleDirectory } : {});
  });
  // Registered after every route above: each path answers the methods it lacks 405 with `Allow`
  // (authenticated like the path's own routes).
  app.register(async (scope) => {
    for (const [url, entry] of methodsByPath) {
      // Every method fastify routes (GET, HEAD, TRACE, DELETE, OPTIONS, PATCH, PUT, POST, QUERY).
      const missing = scope.supportedMethods.filter((method) => !entry.methods.has(method));
      if (missing.length === 0) continue;
      const allow = [...entry.methods].sort().join(', ');
      scope.route({
        method: [...missing],
        url,
        config: { public: entry.public, methodNotAllowed: true } satisfies RouteConfig,
        // In onRequest (after auth), before fastify reads a body: a QUERY without Content-Type is still 405.
        onRequest: async (request) => {
          throw new ApiError('method_not_allowed', `${request.method} is not allowed on ${url} (allowed: ${allow})`, { headers: { allow } });
        },
        handler: async () => {
          throw new Error('unreachable: the onRequest hook answers 405');
        },
      });
    }
  });

  return { app, live };
}
