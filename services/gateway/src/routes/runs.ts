import {
  cancelRunBodySchema,
  createRunBodySchema,
  idempotencyKeySchema,
  listRunsQuerySchema,
  runIdParamsSchema,
} from '@abide/shared';
import type { FastifyInstance } from 'fastify';
import { decodeListCursor, encodeListCursor } from '../list-cursor.ts';
import { loadTenantRunSummary } from '../run-access.ts';
import { toRunView } from '../run-views.ts';
import { parseOr400 } from '../validation.ts';
import type { RouteContext } from './route-context.ts';

/** `POST /v1/runs`, `GET /v1/runs/:runId`, `GET /v1/runs`, `POST /v1/runs/:runId/cancel`. */
export function registerRunRoutes(app: FastifyInstance, context: RouteContext): void {
  app.post('/v1/runs', async (request, reply) => {
    const header = request.headers['idempotency-key'];
    const idempotencyKey = header === undefined ? undefined : parseOr400(idempotencyKeySchema, header, 'headers.idempotency-key');
    const body = parseOr400(createRunBodySchema, request.body, 'body');
    const caller = context.caller(request);
    const result = await context.services().createRun({ tenantId: caller.tenantId, body, idempotencyKey, requestId: request.id });
    return reply.code(result.created ? 201 : 200).send({ runId: result.runId, status: result.status, conversationId: result.conversationId });
  });

  app.get('/v1/runs/:runId', async (request) => {
    const { runId } = parseOr400(runIdParamsSchema, request.params, 'params');
    return toRunView(await loadTenantRunSummary(context.services().store, context.caller(request).tenantId, runId));
  });

  app.get('/v1/runs', async (request) => {
    const { cursor } = request.query as { cursor?: unknown };
    // The cursor first: a bad one is 400 `invalid_cursor`, other parameters `invalid_request`.
    const after = cursor === undefined ? undefined : decodeListCursor(cursor);
    const query = parseOr400(listRunsQuerySchema, request.query, 'query');
    const { tenantId } = context.caller(request);
    const page = await context.services().store.listRuns({ tenantId, conversationId: query.conversationId, status: query.status, limit: query.limit, after });
    return {
      // The read model may lag a transition: a run rolled forward out of the status asked for is left out.
      runs: page.runs.filter((run) => query.status === undefined || run.state.status === query.status).map(toRunView),
      nextCursor: page.hasMore && page.last ? encodeListCursor(page.last) : null,
    };
  });

  app.post('/v1/runs/:runId/cancel', async (request, reply) => {
    const { runId } = parseOr400(runIdParamsSchema, request.params, 'params');
    const body = parseOr400(cancelRunBodySchema, request.body === undefined ? {} : request.body, 'body');
    await context.services().cancelRun(context.caller(request).tenantId, runId, body.reason);
    return reply.code(202).send({ status: 'accepted' });
  });
}
