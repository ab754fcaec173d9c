import type { FastifyInstance } from 'fastify';
import type { RouteConfig, RouteContext } from './route-context.ts';

export type Readiness = () => Promise<{ ready: boolean; checks: Record<string, boolean>; draining: boolean }>;

/** `/healthz`, `/readyz`, `/metrics`, `/openapi.json` (unauthenticated). */
export function registerOperationRoutes(app: FastifyInstance, context: RouteContext, options: { readiness: Readiness; openApiDocument: () => unknown }): void {
  // Public (no API key) and answered while draining: probes must tell the truth until the end.
  const probe = { config: { public: true, servedWhileDraining: true } satisfies RouteConfig };
  app.get('/healthz', probe, async () => ({ status: 'ok' }));

  app.get('/readyz', probe, async (_request, reply) => {
    const { ready, checks, draining } = await options.readiness();
    if (ready) return { status: 'ready', checks };
    const why = draining ? 'draining for shutdown' : `not ready: ${Object.entries(checks).filter(([, ok]) => !ok).map(([name]) => name).join(', ')} unreachable`;
    return reply.code(503).header('retry-after', '1').send({ error: { code: 'unavailable', message: why }, checks, draining });
  });

  app.get('/metrics', probe, async (_request, reply) => {
    return reply.type(context.metrics.contentType).send(await context.metrics.render());
  });

  app.get('/openapi.json', { config: { public: true } satisfies RouteConfig }, async () => options.openApiDocument());
}
