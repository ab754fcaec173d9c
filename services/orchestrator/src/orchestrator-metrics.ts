import { ensureError, type Logger, type Metrics, type RunStatus, type RunStore } from '@abide/shared';

/** The statuses `abide_runs` counts: a run's life before its end (finished runs only ever accumulate). */
const liveStatuses = ['queued', 'running', 'suspended'] as const satisfies readonly RunStatus[];

/**
 * The orchestrator's own series, built once in `main.ts` from the process's `Metrics`:
 * - `commitLatency` (`abide_commit_duration_seconds`, label `result`: `committed`, `conflict`):
 *   the time of a transition's commit insert, observed by the commit path (`run-processor.ts`).
 * - `abide_oldest_overdue_deadline_seconds`: how long past its deadline the oldest deadline this
 *   replica's sweeper knows due and has not sent a timer for is (0 when none is more than
 *   `overdueAfterMs` late): a slot of the work timeline it has not read though it is over, or a
 *   timer waiting for its retry. A deadline gets its timer within ~6 s (a 2-s slot read 3 s after
 *   it ends, a 1-s tick); one still unsent a minute later is stuck. Read from the sweeper's memory
 *   at each scrape: no query.
 * - `abide_runs{status}` (`queued`, `running`, `suspended`): `running` and `suspended` are the
 *   runs the read model records in that status (its status sets, kept by the read-model writes),
 *   `queued` the new runs whose `start` is not yet known published; each one collection's count
 *   (`countRunsByStatus`, no document read), at most once per `refreshMs`. `status="suspended"` is
 *   the runs waiting for an approval. Every replica reports the same numbers (use `max`).
 */
export function createOrchestratorMetrics(deps: {
  metrics: Metrics;
  store: Pick<RunStore, 'countRunsByStatus'>;
  /** The deadline sweeper (`createDeadlineSweeper`). */
  deadlines: { oldestPendingDueAt(): number | null };
  logger: Logger;
  now?: () => number;
  /** @default 60000 */
  overdueAfterMs?: number;
  /** @default 30000 */
  refreshMs?: number;
}) {
  const { metrics, store, deadlines, logger } = deps;
  const now = deps.now ?? Date.now;
  const overdueAfterMs = deps.overdueAfterMs ?? 60_000;
  const refreshMs = deps.refreshMs ?? 30_000;
  const commitLatency = metrics.histogram('commit_duration_seconds', 'Time of the commit insert of a transition in MongoDB, by result (committed, conflict)', ['result']);
  const overdue = metrics.gauge('oldest_overdue_deadline_seconds', 'How long past its deadline the oldest deadline still without a timer is (0: none late by more than a minute)');
  const runs = metrics.gauge('runs', 'Runs in each live status: running and suspended as the read model records them, queued = created with their start not yet known published (read at most every 30 s)', undefined, ['status']);
  let readAt: number | undefined;
  metrics.beforeScrape(async () => {
    const started = now();
    const oldest = deadlines.oldestPendingDueAt();
    overdue.set(oldest !== null && started - oldest >= overdueAfterMs ? (started - oldest) / 1_000 : 0);
    if (readAt !== undefined && started - readAt < refreshMs) return;
    readAt = started;
    try {
      const counts = await store.countRunsByStatus(liveStatuses);
      for (const status of liveStatuses) runs.set(counts[status] ?? 0, { status });
    } catch (error) {
      // The last counts stay; the next refresh tries again.
      logger.warn({ err: ensureError(error) }, 'could not count runs by status for the metrics');
    }
  });
  return { commitLatency };
}
export type OrchestratorMetrics = ReturnType<typeof createOrchestratorMetrics>;
