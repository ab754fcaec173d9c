import { approvalDecisionBodySchema, approvalParamsSchema, batchApprovalBodySchema, pendingApprovalsQuerySchema, runIdParamsSchema } from '@abide/shared';
import type { FastifyInstance } from 'fastify';
import { toApiError } from '../http-errors.ts';
import { decodeListCursor, encodeListCursor } from '../list-cursor.ts';
import { parseOr400 } from '../validation.ts';
import type { RouteContext } from './route-context.ts';

/** Approvals (DESIGN §7): one decision, a batch, and the tenant's pending approvals. */
export function registerApprovalRoutes(app: FastifyInstance, context: RouteContext): void {
  app.post('/v1/runs/:runId/approvals/:toolCallId', async (request, reply) => {
    const { runId, toolCallId } = parseOr400(approvalParamsSchema, request.params, 'params');
    const body = parseOr400(approvalDecisionBodySchema, request.body, 'body');
    const outcome = await context.services().approvals.decide(context.caller(request), { runId, toolCallId, ...body });
    return reply.code(outcome === 'accepted' ? 202 : 200).send({ status: outcome });
  });

  app.post('/v1/runs/:runId/approvals', async (request) => {
    const { runId } = parseOr400(runIdParamsSchema, request.params, 'params');
    const { decisions } = parseOr400(batchApprovalBodySchema, request.body, 'body');
    const caller = context.caller(request);
    const { approvals } = context.services();
    // The run is read once for the whole batch; each decision still goes through the ledger.
    const run = await approvals.loadRun(caller, runId);
    const results = [];
    // One after the other: two decisions on one call in a batch are answered like two requests.
    for (const { toolCallId, ...decision } of decisions) {
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
  });

  app.get('/v1/approvals', async (request) => {
    const { cursor } = request.query as { cursor?: unknown };
    // The cursor first: a bad one is 400 `invalid_cursor`, other parameters `invalid_request`.
    const after = cursor === undefined ? undefined : decodeListCursor(cursor);
    const query = parseOr400(pendingApprovalsQuerySchema, request.query, 'query');
    const page = await context.services().approvals.listPending(context.caller(request).tenantId, { limit: query.limit, after });
    return { approvals: page.approvals, nextCursor: page.next ? encodeListCursor(page.next) : null };
  });
}

