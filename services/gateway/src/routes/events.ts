import { cursorExpiredBodySchema, eventsHeadersSchema, eventsQuerySchema, runIdParamsSchema, type ApiError, type ClientEvent, type ErrorBody } from '@abide/shared';
import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { toApiError } from '../http-errors.ts';
import { emptyResponse, errorResponses, jsonResponse, textResponse } from '../openapi.ts';
import type { Services } from '../services.ts';
import type { RouteConfig, RouteContext } from './route-context.ts';
import { holdStreamLeases, openStreamingResponse } from './streaming-response.ts';

/** One SSE message: `id:` the seq, `event:` the type, `data:` the client event. */
export function formatSseEvent(event: ClientEvent): string {
  return `id: ${event.seq}\nevent: ${event.type}\ndata: ${JSON.stringify(event)}\n\n`;
}

/** The `error` event that ends a stream which failed after its 200 (`data:` is the HTTP error body; no `id:`, so the cursor stays). */
export function formatSseError(error: ApiError): string {
  const body: ErrorBody = { error: { code: error.code, message: error.message } };
  return `event: error\ndata: ${JSON.stringify(body)}\n\n`;
}

/** `GET /v1/runs/:runId/events`: the run's events as `text/event-stream`, ending after the terminal event. */
export function registerEventRoutes(app: FastifyInstance, context: RouteContext): void {
  const routes = app.withTypeProvider<ZodTypeProvider>();
  const config = {
    allowQueryToken: true,
    // Both cursors are validated when present (an invalid `after` is refused even when the header wins).
    cursorFields: ['query.after', 'headers.last-event-id'],
  } satisfies RouteConfig;
  const schema = {
    summary: "The run's events as Server-Sent Events (Last-Event-ID wins over after); ends after the terminal event",
    params: runIdParamsSchema,
    querystring: eventsQuerySchema,
    headers: eventsHeadersSchema,
    response: {
      200: textResponse('`id:` seq, `event:` type, `data:` the event JSON; an `error` event (data: the error body) if the stream fails after its start', 'text/event-stream'),
      204: emptyResponse('the run has ended and the client holds its last event'),
      410: jsonResponse('cursor_expired, with the run attached as `run`', cursorExpiredBodySchema),
      ...errorResponses(400, 401, 404, 429, 503),
    },
  };
  routes.get('/v1/runs/:runId/events', { config, schema }, async (request, reply) => {
    const { runId } = request.params;
    // The resume cursor: `Last-Event-ID` wins over `?after=` (a browser reconnects with the old URL and the newer header).
    const after = request.headers['last-event-id'] ?? request.query.after;
    const { tenantId } = context.caller(request);
    const controller = new AbortController();
    const { signal } = controller;
    reply.raw.on('close', () => controller.abort());
    // The stream is one of the tenant's connections and one of its subscriptions (issue 8): 429 over either cap.
    const releaseLeases = await holdStreamLeases(context, tenantId, `${request.id}:${runId}`, { connection: true });
    let events: Awaited<ReturnType<Services['openRunEvents']>>;
    try {
      events = await context.services().openRunEvents({ tenantId, runId, after, signal });
    } catch (error) {
      await releaseLeases();
      throw error;
    }
    // The client holds every event of an ended run already: 204 also stops a browser's EventSource from reconnecting.
    if (!events) {
      await releaseLeases();
      return reply.code(204).send();
    }

    const response = openStreamingResponse(
      context,
      request,
      reply,
      { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache, no-transform', connection: 'keep-alive', 'x-accel-buffering': 'no' },
      releaseLeases,
      controller,
    );
    await response.write(': connected\n\n');
    try {
      for await (const event of events) {
        await response.write(formatSseEvent(event));
        if (signal.aborted) break;
      }
    } catch (error) {
      // The relay could not resume its reader (NATS unreachable past its bound): say so in an
      // `error` event before ending, never a silent end; the client resumes with Last-Event-ID.
      if (!signal.aborted) {
        request.log.warn({ runId, err: error }, 'event stream failed');
        await response.write(formatSseError(toApiError(error, { maxBodyBytes: context.maxBodyBytes })));
      }
    } finally {
      await response.end();
    }
  });
}
