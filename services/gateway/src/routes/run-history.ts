import { ApiError, runHistoryQuerySchema, runHistoryResponseSchema, runIdParamsSchema, type RunTransitionView } from '@abide/shared';
import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { errorResponses, jsonResponse } from '../openapi.ts';
import type { GatewayStore, TransitionHeader } from '../ports.ts';
import { loadTenantRun } from '../run-access.ts';
import type { RouteConfig, RouteContext } from './route-context.ts';

/** Exact-`_id` reads in flight at once for one page. */
const parallelReads = 10;

function toTransitionView(transition: TransitionHeader): RunTransitionView {
  const { state } = transition;
  return {
    version: transition.version,
    cause: transition.cause,
    status: state.status,
    step: state.step,
    awaiting: state.awaiting.kind,
    at: transition.at instanceof Date ? transition.at.toISOString() : String(transition.at),
  };
}

/**
 * The headers of transitions `from`..`to` of a run, each read by its exact `_id` (`<runId>:<version>`).
 * Versions are contiguous (each commit inserts v+1), so the page is the list of ids itself: no
 * range query over `_id` (whose unpadded versions sort as strings: `:10` before `:2`) and no
 * scan of a non-`_id` filter, which FerretDB 1.24 cannot push down.
 */
export async function readTransitions(store: GatewayStore, runId: string, from: number, to: number): Promise<TransitionHeader[]> {
  const found: TransitionHeader[] = [];
  for (let start = from; start <= to; start += parallelReads) {
    const versions = Array.from({ length: Math.min(parallelReads, to - start + 1) }, (_, index) => start + index);
    const batch = await Promise.all(versions.map((version) => store.loadTransitionHeader(runId, version)));
    for (const [index, transition] of batch.entries()) {
      if (!transition) {
        // The run's latest version was read first, and transitions are deleted only by retention,
        // which marks the run pruned before deleting any: pruned since, or a broken store.
        if ((await store.loadRun(runId))?.pruned) throw historyPruned(runId);
        throw new ApiError('internal', `run ${runId}: transition ${versions[index]} is missing`);
      }
      found.push(transition);
    }
  }
  return found;
}

const historyPruned = (runId: string) => new ApiError('run_history_pruned', `run ${runId} has ended and its history was deleted after the retention period (RUN_RETENTION); GET /v1/runs/${runId} still answers`);

/**
 * `GET /v1/runs/:runId/history?after=&limit=`: the run's transitions (DESIGN §7), oldest first;
 * `410 run_history_pruned` once retention has deleted them (the run itself stays).
 */
export function registerRunHistoryRoute(app: FastifyInstance, context: RouteContext): void {
  const routes = app.withTypeProvider<ZodTypeProvider>();
  const schema = {
    summary: "The run's transitions (version, cause, status, step, awaiting, at), oldest first, paginated by version",
    params: runIdParamsSchema,
    querystring: runHistoryQuerySchema,
    response: { 200: jsonResponse('a page of transitions', runHistoryResponseSchema), ...errorResponses(400, 401, 404, 503) },
  };
  // A bad `after` is 400 `invalid_cursor` (whatever else is wrong), other parameters `invalid_request`.
  routes.get('/v1/runs/:runId/history', { config: { cursorFields: ['query.after'] } satisfies RouteConfig, schema }, async (request) => {
    const { runId } = request.params;
    const query = request.query;
    const { tenantId } = context.caller(request);
    const { store } = context.services();
    // Tenant check first: another tenant's run is a 404, exactly like a missing one.
    const run = await loadTenantRun(store, tenantId, runId);
    if (run.pruned) throw historyPruned(runId);
    const from = (query.after ?? 0) + 1;
    const to = Math.min(run.version, from + query.limit - 1);
    const transitions = from <= to ? await readTransitions(store, runId, from, to) : [];
    if (transitions.some((transition) => transition.tenantId !== tenantId)) throw new ApiError('run_not_found', `run ${runId} not found`);
    return {
      transitions: transitions.map(toTransitionView),
      nextCursor: to < run.version ? String(to) : null,
    };
  });
}
