import type { Logger, Metrics } from '@abide/shared';
import type { FastifyRequest } from 'fastify';
import type { Caller } from '../auth.ts';
import type { RateLimitOptions } from '../rate-limiter.ts';
import type { LiveConnections } from '../live-connections.ts';
import type { Services } from '../services.ts';

/** Timing and size knobs of the streaming routes (tests shorten them). */
export type StreamingOptions = {
  /** SSE comment / WebSocket `pong` interval. @default 15000 */
  heartbeatMs: number;
  /** A WebSocket whose send buffer passes this is closed with 1013. @default 8 MiB */
  wsHighWaterMarkBytes: number;
  /** Event subscriptions one WebSocket may hold. @default 100 */
  maxSubscriptionsPerSocket: number;
  /** Frames one WebSocket may have being handled at once; beyond, a frame is answered `too_many_in_flight`. @default 16 */
  maxInFlightPerSocket: number;
  /** `subscribe` / `unsubscribe` frames per WebSocket (a token bucket); beyond, `rate_limited`. @default burst 50, 10/s */
  subscribeChurn: RateLimitOptions;
};

/** What a route declares in its fastify `config` (read by `createApp`'s hooks). */
export type RouteConfig = {
  /** Answered without an API key (probes, metrics, this document). Every other route needs one. */
  public?: boolean;
  /** Answered while draining (probes must tell the truth until the end). */
  servedWhileDraining?: boolean;
  /** Accepts `?access_token=` (or the WebSocket key subprotocol) where a browser cannot set headers (SSE, WebSocket). */
  allowQueryToken?: boolean;
  /** Accepts a single-use `?ticket=` instead of a key (`GET /v1/ws`). */
  allowTicket?: boolean;
  /** The route that answers 405 for the methods a path lacks (not an operation of the API). */
  methodNotAllowed?: boolean;
  /** The body may be left out (no body, or an empty one, is `{}`); the document says `required: false`. A JSON `null` is still refused. */
  bodyOptional?: boolean;
  /**
   * Request fields whose refusal by the route's schema is 400 `invalid_cursor`, not `invalid_request`
   * (`query.after`, `headers.last-event-id`; `query` for the whole query string). A cursor's fault wins over the others'.
   */
  cursorFields?: readonly string[];
};

/** What every route module gets from `createApp`. */
export type RouteContext = {
  /** The use cases; throws 503 `unavailable` while NATS or MongoDB is not connected yet. */
  services(): Services;
  /** The authenticated caller of a `/v1` request. */
  caller(request: FastifyRequest): Caller;
  logger: Logger;
  metrics: Metrics;
  /** Counts a request in `/metrics` (upgraded WebSocket requests count themselves; everything else is counted on response). */
  recordRequest(method: string, route: string, status: number): void;
  live: LiveConnections;
  streaming: StreamingOptions;
  maxBodyBytes: number;
  wsAllowedOrigins: readonly string[];
};
