import {
  acceptedResponseSchema,
  cancelRunBodySchema,
  createRunBodySchema,
  createRunHeadersSchema,
  createRunResponseSchema,
  listRunsQuerySchema,
  listRunsResponseSchema,
  runIdParamsSchema,
  runViewSchema,
} from '@abide/shared';
import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { decodeListCursor, encodeListCursor } from '../list-cursor.ts';
import { errorResponses, jsonResponse } from '../openapi.ts';
import { loadTenantRunSummary } from '../run-access.ts';
import { toRunView } from '../run-views.ts';
import type { RouteConfig, RouteContext } from './route-context.ts';

/** `POST /v1/runs`, `GET /v1/runs/:runId`, `GET /v1/runs`, `POST /v1/runs/:runId/cancel`. */
export function registerRunRoutes(app: FastifyInstance, context: RouteContext): void {
  const routes = app.withTypeProvider<ZodTypeProvider>();
  routes.post(
    '/v1/runs',
    {
      schema: {
        summary: 'Start a run',
        headers: createRunHeadersSchema,
        body: createRunBodySchema,
        response: {
          201: jsonResponse('created', createRunResponseSchema),
          200: jsonResponse('the run an earlier request with this Idempotency-Key created', createRunResponseSchema),
          ...errorResponses(400, 401, 404, 409, 413, 415, 422, 429, 503),
        },
      },
    },
    async (request, reply) => {
      const caller = context.caller(request);
      const result = await context.services().createRun({ tenantId: caller.tenantId, body: request.body, idempotencyKey: request.headers['idempotency-key'], requestId: request.id });
      return reply.code(result.created ? 201 : 200).send({ runId: result.runId, status: result.status, conversationId: result.conversationId });
    },
  );

  routes.get(
    '/v1/runs/:runId',
    { schema: { summary: 'A run, as of now', params: runIdParamsSchema, response: { 200: jsonResponse('the run', runViewSchema), ...errorResponses(400, 401, 404, 503) } } },
    async (request) => toRunView(await loadTenantRunSummary(context.services().store, context.caller(request).tenantId, request.params.runId)),
  );

  routes.get(
    '/v1/runs',
    {
      // A bad cursor is 400 `invalid_cursor` (whatever else is wrong), other parameters `invalid_request`.
      config: { cursorFields: ['query.cursor'] } satisfies RouteConfig,
      schema: { summary: "The caller's runs, newest first", querystring: listRunsQuerySchema, response: { 200: jsonResponse('a page of runs', listRunsResponseSchema), ...errorResponses(400, 401, 503) } },
    },
    async (request) => {
      const query = request.query;
      const after = query.cursor === undefined ? undefined : decodeListCursor(query.cursor);
      const { tenantId } = context.caller(request);
      const page = await context.services().store.listRuns({ tenantId, conversationId: query.conversationId, status: query.status, limit: query.limit, after });
      return {
        // The read model may lag a transition: a run rolled forward out of the status asked for is left out.
        runs: page.runs.filter((run) => query.status === undefined || run.state.status === query.status).map(toRunView),
        nextCursor: page.hasMore && page.last ? encodeListCursor(page.last) : null,
      };
    },
  );

  routes.post(
    '/v1/runs/:runId/cancel',
    {
      config: { bodyOptional: true } satisfies RouteConfig,
      schema: {
        summary: 'Cancel a run',
        params: runIdParamsSchema,
        body: cancelRunBodySchema,
        response: { 202: jsonResponse('accepted', acceptedResponseSchema), ...errorResponses(400, 401, 404, 409, 503) },
      },
    },
    async (request, reply) => {
      await context.services().cancelRun(context.caller(request).tenantId, request.params.runId, request.body.reason);
      return reply.code(202).send({ status: 'accepted' as const });
    },
  );
}
