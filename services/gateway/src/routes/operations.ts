import { healthResponseSchema, notReadyBodySchema, openApiDocumentSchema, readinessResponseSchema } from '@abide/shared';
import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { jsonResponse, textResponse } from '../openapi.ts';
import type { RouteConfig, RouteContext } from './route-context.ts';

export type Readiness = () => Promise<{ ready: boolean; checks: Record<string, boolean>; draining: boolean }>;

/** `/healthz`, `/readyz`, `/metrics`, `/openapi.json` (unauthenticated). */
export function registerOperationRoutes(app: FastifyInstance, context: RouteContext, options: { readiness: Readiness; openApiDocument: () => unknown }): void {
  const routes = app.withTypeProvider<ZodTypeProvider>();
  // Public (no API key) and answered while draining: probes must tell the truth until the end.
  const probe = { public: true, servedWhileDraining: true } satisfies RouteConfig;
  routes.get(
    '/healthz',
    { config: probe, schema: { summary: 'Liveness: 200 while the process runs', response: { 200: jsonResponse('alive', healthResponseSchema) } } },
    async () => ({ status: 'ok' as const }),
  );

  routes.get(
    '/readyz',
    {
      config: probe,
      schema: {
        summary: 'Readiness: NATS and MongoDB reachable and not draining',
        response: { 200: jsonResponse('ready', readinessResponseSchema), 503: jsonResponse('error: unavailable (not ready, or draining), with each check', notReadyBodySchema) },
      },
    },
    async (_request, reply) => {
      const { ready, checks, draining } = await options.readiness();
      if (ready) return { status: 'ready' as const, checks };
      const why = draining ? 'draining for shutdown' : `not ready: ${Object.entries(checks).filter(([, ok]) => !ok).map(([name]) => name).join(', ')} unreachable`;
      return reply.code(503).header('retry-after', '1').send({ error: { code: 'unavailable', message: why }, checks, draining });
    },
  );

  routes.get(
    '/metrics',
    { config: probe, schema: { summary: 'Prometheus metrics', response: { 200: textResponse('text format 0.0.4', 'text/plain') } } },
    async (_request, reply) => reply.type(context.metrics.contentType).send(await context.metrics.render()),
  );

  routes.get(
    '/openapi.json',
    { config: { public: true } satisfies RouteConfig, schema: { summary: 'This document', response: { 200: jsonResponse('OpenAPI 3.1', openApiDocumentSchema) } } },
    async () => options.openApiDocument(),
  );
}
