import {
  collections as collectionNames,
  ensureError,
  makeEnvelope,
  publishJson,
  subjects,
  type Collections,
  type JetStreamClient,
  type Logger,
  type RunStore,
} from '@abide/shared';
import type { RunProcessor } from './run-processor.ts';

export type Sweeper = { start(): void; stop(): Promise<void> };

/** A sweep waits at least this many times its own last duration before the next one. */
export const sweepDutyFactor = 20;
/** The longest pause between two sweeps, however slow they are. */
export const maxSweepIntervalMs = 60_000;

/** The pause before the next sweep: `intervalMs`, stretched to `sweepDutyFactor` × the last sweep's duration (capped). */
export function nextSweepDelay(intervalMs: number, lastDurationMs: number): number {
  return Math.min(Math.max(intervalMs, maxSweepIntervalMs), Math.max(intervalMs, sweepDutyFactor * lastDurationMs));
}

/**
 * Runs `tick` every `intervalMs`, never two at once, until stopped. A sweep's query is not on
 * `_id`, and FerretDB answers it by scanning the whole collection (its cost grows with every run
 * ever stored); so a slow sweep stretches the pause after it (`nextSweepDelay`), keeping each
 * replica's sweeping to about 1/`sweepDutyFactor` of the database's time instead of saturating it.
 * On MongoDB, with its indexes, sweeps take milliseconds and run every `intervalMs`.
 */
function every(intervalMs: number, name: string, logger: Logger, tick: () => Promise<void>): Sweeper {
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<void> = Promise.resolve();
  let stopped = false;
  let lastDurationMs = 0;
  const schedule = () => {
    if (stopped) return;
    timer = setTimeout(() => {
      const startedAt = Date.now();
      running = tick()
        .catch((error: unknown) => logger.warn({ sweeper: name, err: ensureError(error) }, 'sweep failed; will retry'))
        .finally(() => {
          lastDurationMs = Date.now() - startedAt;
          schedule();
        });
    }, nextSweepDelay(intervalMs, lastDurationMs));
    timer.unref();
  };
  return {
    start: schedule,
    async stop() {
      stopped = true;
      clearTimeout(timer);
      await running;
    },
  };
}

/**
 * Publishes outboxes left unpublished for longer than `ageMs` (a crash between commit and
 * publish, DESIGN §3). Every replica runs it; `Nats-Msg-Id` dedupes what two replicas both send.
 */
export function createOutboxSweeper(deps: { store: RunStore; processor: RunProcessor; logger: Logger; intervalMs?: number; ageMs?: number }): Sweeper {
  const ageMs = deps.ageMs ?? 5_000;
  return every(deps.intervalMs ?? 2_000, 'outbox', deps.logger, async () => {
    const stale = await deps.store.findUnpublished(new Date(Date.now() - ageMs), 200);
    for (const transition of stale) await deps.processor.republish(transition);
  });
}

/**
 * Finds runs whose `nextDeadlineAt` has passed and sends each a `timer` message; the run's
 * transition decides what the deadline means. Nothing waits in memory: deadlines live in
 * MongoDB and any replica enforces them. The msg id dedupes the timers of several replicas.
 */
export function createDeadlineSweeper(deps: { collections: Collections; js: JetStreamClient; logger: Logger; intervalMs?: number }): Sweeper {
  return every(deps.intervalMs ?? 1_000, 'deadline', deps.logger, async () => {
    const nowIso = new Date().toISOString();
    const due = await deps.collections.runs
      .find({ nextDeadlineAt: { $ne: null, $lte: nowIso } }, { projection: { _id: 1, tenantId: 1, nextDeadlineAt: 1 } })
      .limit(500)
      .toArray();
    for (const run of due) {
      const runId = String(run._id);
      const id = `${runId}:timer:${String(run.nextDeadlineAt)}`;
      const message = makeEnvelope('timer', { id, runId, tenantId: String(run.tenantId) }, { deadlineAt: String(run.nextDeadlineAt) });
      await publishJson(deps.js, subjects.runInbox(runId, 'timer'), message, id);
    }
    if (due.length) deps.logger.info({ count: due.length, collection: collectionNames.runs }, 'deadline timers sent');
  });
}
