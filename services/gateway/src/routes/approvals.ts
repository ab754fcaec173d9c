import {
  acceptedResponseSchema,
  approvalDecisionBodySchema,
  approvalParamsSchema,
  batchApprovalBodySchema,
  batchApprovalResponseSchema,
  pendingApprovalsQuerySchema,
  pendingApprovalsResponseSchema,
  runIdParamsSchema,
} from '@abide/shared';
import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { toApiError } from '../http-errors.ts';
import { decodeListCursor, encodeListCursor } from '../list-cursor.ts';
import { errorResponses, jsonResponse } from '../openapi.ts';
import type { RouteConfig, RouteContext } from './route-context.ts';

/** Approvals (DESIGN §7): one decision, a batch, and the tenant's pending approvals. */
export function registerApprovalRoutes(app: FastifyInstance, context: RouteContext): void {
  const routes = app.withTypeProvider<ZodTypeProvider>();
  routes.post(
    '/v1/runs/:runId/approvals/:toolCallId',
    {
      schema: {
        summary: 'Approve or deny a pending tool call',
        params: approvalParamsSchema,
        body: approvalDecisionBodySchema,
        response: {
          202: jsonResponse('accepted', acceptedResponseSchema),
          200: jsonResponse('already_decided: the same decision was recorded before', acceptedResponseSchema),
          ...errorResponses(400, 401, 404, 409, 413, 503),
        },
      },
    },
    async (request, reply) => {
      const outcome = await context.services().approvals.decide(context.caller(request), { ...request.params, ...request.body });
      return reply.code(outcome === 'accepted' ? 202 : 200).send({ status: outcome });
    },
  );

  routes.post(
    '/v1/runs/:runId/approvals',
    {
      schema: {
        summary: 'Decide several pending tool calls of a run; one result per decision',
        params: runIdParamsSchema,
        body: batchApprovalBodySchema,
        response: { 200: jsonResponse('per-decision results', batchApprovalResponseSchema), ...errorResponses(400, 401, 413, 503) },
      },
    },
    async (request) => {
      const { runId } = request.params;
      const caller = context.caller(request);
      const { approvals } = context.services();
      // The run is read once for the whole batch; each decision still goes through the ledger.
      const run = await approvals.loadRun(caller, runId);
      const results = [];
      // One after the other: two decisions on one call in a batch are answered like two requests.
      for (const { toolCallId, ...decision } of request.body.decisions) {
        try {
          results.push({ toolCallId, status: await approvals.decide(caller, { runId, toolCallId, ...decision }, run) });
        } catch (error) {
          const apiError = toApiError(error, { maxBodyBytes: context.maxBodyBytes });
          // Per-decision failures are answered in the list; a dependency failure fails the whole request.
          if (apiError.status >= 500) throw error;
          results.push({ toolCallId, status: 'error' as const, error: { code: apiError.code, message: apiError.message } });
        }
      }
      return { results };
    },
  );

  routes.get(
    '/v1/approvals',
    {
      // A bad cursor is 400 `invalid_cursor` (whatever else is wrong), other parameters `invalid_request`.
      config: { cursorFields: ['query.cursor'] } satisfies RouteConfig,
      schema: {
        summary: "The caller's pending approvals across runs",
        querystring: pendingApprovalsQuerySchema,
        response: { 200: jsonResponse('pending approvals', pendingApprovalsResponseSchema), ...errorResponses(400, 401, 503) },
      },
    },
    async (request) => {
      const { cursor, limit } = request.query;
      const after = cursor === undefined ? undefined : decodeListCursor(cursor);
      const page = await context.services().approvals.listPending(context.caller(request).tenantId, { limit, after });
      return { approvals: page.approvals, nextCursor: page.next ? encodeListCursor(page.next) : null };
    },
  );
}
