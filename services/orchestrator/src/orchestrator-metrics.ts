import { ensureError, runStatuses, terminalStatuses, type Logger, type Metrics, type RunStore } from '@abide/shared';

/** The statuses `abide_runs` counts: a run's life before its end (finished runs only ever accumulate). */
const liveStatuses = runStatuses.filter((status) => !terminalStatuses.includes(status));

/**
 * The orchestrator's own series, built once in `main.ts` from the process's `Metrics`:
 * - `commitLatency` (`abide_commit_duration_seconds`, label `result`: `committed`, `conflict`):
 *   the time of a transition's commit insert, observed by the commit path (`run-processor.ts`).
 * - `abide_oldest_overdue_deadline_seconds`: how long past its deadline the oldest run still
 *   waiting for its timer is (0 when none is more than `overdueAfterMs` late). A run whose
 *   deadline passed gets a timer within a sweep (1–2 s on MongoDB); one still due minutes later
 *   is stuck. Read with the sweeper's own query over `run_work` (`findDueWork`, one row), at most once per
 *   `refreshMs` however often Prometheus scrapes.
 * - `abide_runs{status}` (`queued`, `running`, `suspended`): runs of the read model in each live
 *   status, counted in one `$group` pass at most once per `refreshMs`; `status="suspended"` is the
 *   runs waiting for an approval. Every replica reports the same numbers (use `max`).
 */
export function createOrchestratorMetrics(deps: {
  metrics: Metrics;
  store: Pick<RunStore, 'findDueWork' | 'countRunsByStatus'>;
  logger: Logger;
  now?: () => number;
  /** @default 60000 */
  overdueAfterMs?: number;
  /** @default 30000 */
  refreshMs?: number;
}) {
  const { metrics, store, logger } = deps;
  const now = deps.now ?? Date.now;
  const overdueAfterMs = deps.overdueAfterMs ?? 60_000;
  const refreshMs = deps.refreshMs ?? 30_000;
  const commitLatency = metrics.histogram('commit_duration_seconds', 'Time of the commit insert of a transition in MongoDB, by result (committed, conflict)', ['result']);
  const overdue = metrics.gauge('oldest_overdue_deadline_seconds', 'How long past its deadline the oldest run still waiting for its timer is (0: none late by more than a minute)');
  const runs = metrics.gauge('runs', 'Runs in each live status (queued, running, suspended), counted on the read model at most every 30 s', undefined, ['status']);
  let readAt: number | undefined;
  metrics.beforeScrape(async () => {
    const started = now();
    if (readAt !== undefined && started - readAt < refreshMs) return;
    readAt = started;
    await Promise.all([
      (async () => {
        try {
          const [oldest] = await store.findDueWork('deadline', new Date(started - overdueAfterMs).toISOString(), 1);
          overdue.set(oldest ? Math.max(0, (started - Date.parse(oldest.dueAt)) / 1_000) : 0);
        } catch (error) {
          // The last value stays (the alert keeps its state); the next refresh tries again.
          logger.warn({ err: ensureError(error) }, 'could not read the oldest overdue deadline for the metrics');
        }
      })(),
      (async () => {
        try {
          const counts = await store.countRunsByStatus(liveStatuses);
          for (const status of liveStatuses) runs.set(counts[status] ?? 0, { status });
        } catch (error) {
          // The last counts stay; the next refresh tries again.
          logger.warn({ err: ensureError(error) }, 'could not count runs by status for the metrics');
        }
      })(),
    ]);
  });
  return { commitLatency };
}
export type OrchestratorMetrics = ReturnType<typeof createOrchestratorMetrics>;
