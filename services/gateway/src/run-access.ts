import { ApiError, makeEnvelope, subjects, type LoadedSummary } from '@abide/shared';
import type { GatewayBus, GatewayStore, LoadedRun } from './ports.ts';
import { isEnded } from './run-views.ts';

/**
 * The caller's run, exactly as of now (rolled forward), or null; another tenant's run is
 * answered exactly like a missing one (DESIGN §7).
 */
export async function findTenantRun(store: GatewayStore, tenantId: string, runId: string): Promise<LoadedRun | null> {
  const run = await store.loadRun(runId);
  return run && run.state.tenantId === tenantId ? run : null;
}

/** The caller's run as its summary, exactly as of now (no messages or finished tool calls); a missing or foreign run is 404. */
export async function loadTenantRunSummary(store: GatewayStore, tenantId: string, runId: string): Promise<LoadedSummary> {
  const run = await store.loadRunSummary(runId);
  if (!run || run.state.tenantId !== tenantId) throw new ApiError('run_not_found', `run ${runId} not found`);
  return run;
}

/** Like `findTenantRun`, but a missing run is 404 `run_not_found`. */
export async function loadTenantRun(store: GatewayStore, tenantId: string, runId: string): Promise<LoadedRun> {
  const run = await findTenantRun(store, tenantId, runId);
  if (!run) throw new ApiError('run_not_found', `run ${runId} not found`);
  return run;
}

/** The deterministic message id of a run's cancel request: repeats are dropped by JetStream. */
export const cancelMessageId = (runId: string) => `${runId}:cancel`;

/**
 * Asks the orchestrator to cancel a run (`run.in.<runId>.cancel`). A run that has ended →
 * 409 `run_finished`; otherwise accepted (the orchestrator ignores it if the run ends first).
 */
export function createRunCanceller(deps: { store: GatewayStore; bus: GatewayBus }) {
  return async function cancelRun(tenantId: string, runId: string, reason: string | undefined): Promise<void> {
    // Its status only: the summary (the read model rolled forward by `_id`), not a fold of the whole run.
    const run = await loadTenantRunSummary(deps.store, tenantId, runId);
    if (isEnded(run)) throw new ApiError('run_finished', `run ${runId} has ended (${run.state.status})`);
    const id = cancelMessageId(runId);
    const message = makeEnvelope('cancel', { id, runId, tenantId }, reason === undefined ? {} : { reason });
    await deps.bus.publish(subjects.runInbox(runId, 'cancel'), message, id);
  };
}
export type CancelRun = ReturnType<typeof createRunCanceller>;
