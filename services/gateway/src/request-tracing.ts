import { context, propagation, ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Context, type Span } from '@opentelemetry/api';
import { abideTracer, linkTo } from '@abide/shared';
import type { FastifyInstance, FastifyRequest } from 'fastify';

/** Routes probed every few seconds: no span (they would drown the traces that matter). */
const untracedRoutes = new Set(['/healthz', '/readyz', '/metrics']);

/**
 * A server span per HTTP request (issue 10), by two small hooks rather than an instrumentation
 * that patches `http` (unreliable under ESM; docs/decisions.md "Operations"). Named by method and
 * route template (bounded). Callers are tenants, so a request always starts a new trace: a
 * caller's `traceparent` becomes a link, never the parent (a tenant cannot choose the trace id its
 * run is recorded under, nor force sampling, nor pass its `tracestate` down the bus). The span is made active for the handler in `preHandler` (after the body is read: the
 * body parser's stream events would lose an earlier context), so what the handler publishes
 * continues its trace. 5xx answers mark it failed, with the error recorded. With tracing off the spans are no-ops.
 */
export function registerRequestTracing(app: FastifyInstance): void {
  const spans = new WeakMap<FastifyRequest, { span: Span; context: Context; error?: Error }>();

  app.addHook('onRequest', (request, _reply, done) => {
    const route = request.routeOptions.url;
    // WebSocket handshakes too: a socket lives for hours; its frames get their own spans (websocket.ts).
    if ((route !== undefined && untracedRoutes.has(route)) || request.headers.upgrade !== undefined) return done();
    const caller = propagation.extract(ROOT_CONTEXT, request.headers);
    const span = abideTracer().startSpan(
      `${request.method} ${route ?? 'unmatched'}`,
      {
        kind: SpanKind.SERVER,
        attributes: { 'http.request.method': request.method, 'http.route': route ?? 'unmatched', 'abide.request.id': request.id },
        links: linkTo(caller, { 'abide.link': 'caller' }),
      },
      ROOT_CONTEXT,
    );
    spans.set(request, { span, context: trace.setSpan(ROOT_CONTEXT, span) });
    done();
  });

  app.addHook('preHandler', (request, _reply, done) => {
    const traced = spans.get(request);
    if (!traced) return done();
    context.with(traced.context, done);
  });

  app.addHook('onError', async (request, _reply, error) => {
    const traced = spans.get(request);
    if (traced) traced.error = error;
  });

  app.addHook('onRequestAbort', async (request) => {
    const traced = spans.get(request);
    if (!traced) return;
    traced.span.setAttribute('abide.request.aborted', true);
    traced.span.end();
  });

  app.addHook('onResponse', async (request, reply) => {
    const traced = spans.get(request);
    if (!traced) return;
    traced.span.setAttribute('http.response.status_code', reply.statusCode);
    // Only a 5xx is the server's failure; a 4xx error's message may quote what the caller sent.
    if (reply.statusCode >= 500) {
      if (traced.error) traced.span.recordException(traced.error);
      traced.span.setStatus({ code: SpanStatusCode.ERROR });
    }
    traced.span.end();
  });
}
