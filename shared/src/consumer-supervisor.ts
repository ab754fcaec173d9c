import { ensureError } from './errors.ts';
import type { ReadinessCheck } from './health.ts';
import type { Logger } from './logger.ts';
import type { Metrics } from './metrics.ts';
import { sleep } from './retry.ts';

/**
 * Where a supervised loop is: `starting` (first run, not consuming yet), `running` (consuming),
 * `restarting` (its last run ended or failed; backing off or starting again), `stopped`.
 */
export type SupervisedState = 'starting' | 'running' | 'restarting' | 'stopped';

/** What a supervisor reports about its loop (`/readyz` and the logs read it). */
export type SupervisedHealth = {
  name: string;
  state: SupervisedState;
  /** When the loop entered `state` (ms since the epoch). */
  since: number;
  /**
   * When the current streak of restarts began: the end of the last run that had consumed for at
   * least `stableRunMs`. Undefined while the loop has not ended since such a run.
   */
  downSince?: number;
  /** Restarts since the process started. */
  restarts: number;
  /** When a run last began consuming; undefined while none has. */
  consumingSince?: number;
  /** Why the last run ended, when it failed. */
  lastError?: string;
};

export type SupervisedLoop = {
  /** The loop's name in logs, health and the `durable` label (a durable's name: a fixed set). */
  name: string;
  /**
   * Runs the loop once: resolves when it ends, rejects when it fails. Calls `running()` once it
   * consumes. The supervisor runs it again (after a backoff) unless it is stopping.
   */
  run(running: () => void): Promise<void>;
  /**
   * Called before each restart with the reason of the last end (undefined: it ended without an
   * error), e.g. to provision a consumer found deleted. A failure is logged and the loop is
   * started anyway; a run that fails again backs off longer.
   */
  beforeRestart?(cause: Error | undefined): Promise<void>;
};

export type Supervisor = {
  start(): void;
  /** Ends the backoff at once and waits for the current run to end (the caller stops the run itself). */
  stop(): Promise<void>;
  health(): SupervisedHealth;
};

/** First restart delay, doubled per consecutive failed run up to `maxBackoffMs`. */
const initialBackoffMs = 100;
const maxBackoffMs = 5_000;
/** A run that consumed this long was healthy: its end starts a new streak (and the backoff afresh). */
export const stableRunMs = 5_000;

/**
 * The consumers of one process under supervision (issue 10, finding 2): built once in `main.ts`,
 * it owns the `abide_consumer_restarts_total{durable}` counter and answers the readiness check
 * `consumers`. Every consume loop of every service runs under `supervise` (through
 * `createConsumerRunner`), so a loop that ends is restarted, counted and, while it stays down,
 * reported not-ready: never a process that stopped consuming and still says ready.
 */
export function createConsumerSupervision(deps: {
  metrics: Metrics;
  logger: Logger;
  /** A loop restarting for longer than this makes `/readyz` answer 503. @default 10000 */
  restartGraceMs?: number;
  now?: () => number;
}) {
  const { metrics, logger } = deps;
  const now = deps.now ?? Date.now;
  const restartGraceMs = deps.restartGraceMs ?? 10_000;
  const restartsTotal = metrics.counter('consumer_restarts_total', 'Consume loops restarted after they ended or failed, by durable', ['durable']);
  const latency = metrics.histogram(
    'message_latency_seconds',
    "From a message's envelope time (when its sender built it) to its ack, by durable: queueing plus handling. A model step's latency on llm-worker, a tool call's on tool-worker, an input's on orchestrator",
    ['durable'],
  );
  const supervisors = new Map<string, Supervisor>();

  /**
   * Up: consuming, or restarting for less than `restartGraceMs` (a pull replaced after a missed
   * heartbeat, a leader election, a deleted consumer provisioned again). A loop that keeps ending
   * soon after it starts is down once its streak outlasts the grace, and up again once a run has
   * consumed for `stableRunMs`.
   */
  function isUp(health: SupervisedHealth): boolean {
    const withinGrace = health.downSince === undefined || now() - health.downSince < restartGraceMs;
    if (health.state === 'running') return withinGrace || now() - health.since >= stableRunMs;
    // A loop that never consumed (its consumer missing at start-up) is not ready, grace or not.
    return health.state === 'restarting' && health.consumingSince !== undefined && withinGrace;
  }

  return {
    /** Puts a loop under supervision; `start()` begins it. */
    supervise(loop: SupervisedLoop): Supervisor {
      const supervisor = createSupervisor(loop, { logger, now, onRestart: () => restartsTotal.inc({ durable: loop.name }) });
      supervisors.set(loop.name, supervisor);
      return supervisor;
    },
    health(): SupervisedHealth[] {
      return [...supervisors.values()].map((supervisor) => supervisor.health());
    },
    /** A message of `durable` acked `seconds` after its envelope was built (clocks of two hosts: a skew shows here). */
    observeLatency(durable: string, seconds: number): void {
      if (Number.isFinite(seconds)) latency.observe({ durable }, Math.max(0, seconds));
    },
    /**
     * Readiness check `consumers`: every durable in `expected` is supervised and up. A durable
     * not supervised yet (the process is still connecting) is not ready.
     */
    check(expected: readonly string[]): ReadinessCheck {
      return {
        name: 'consumers',
        async check() {
          return expected.every((name) => {
            const supervisor = supervisors.get(name);
            return supervisor !== undefined && isUp(supervisor.health());
          });
        },
      };
    },
  };
}
export type ConsumerSupervision = ReturnType<typeof createConsumerSupervision>;

/** One loop's supervisor (see `createConsumerSupervision`). */
export function createSupervisor(loop: SupervisedLoop, deps: { logger: Logger; now?: () => number; onRestart?: () => void }): Supervisor {
  const now = deps.now ?? Date.now;
  const log = deps.logger.child({ consumer: loop.name });
  const stopping = new AbortController();
  let current: Promise<void> | undefined;
  const health: SupervisedHealth = { name: loop.name, state: 'starting', since: now(), restarts: 0 };

  function enter(state: SupervisedState): void {
    if (health.state === state) return;
    health.state = state;
    health.since = now();
  }

  async function supervise(): Promise<void> {
    for (let failures = 0; !stopping.signal.aborted; ) {
      let cause: Error | undefined;
      let startedAt: number | undefined;
      try {
        await loop.run(() => {
          startedAt = now();
          health.consumingSince = startedAt;
          enter('running');
        });
        if (stopping.signal.aborted) break;
        log.warn('consume loop ended; restarting it');
      } catch (error) {
        if (stopping.signal.aborted) break;
        cause = ensureError(error);
        log.warn({ err: cause }, 'consume loop failed; restarting it');
      }
      // A run that consumed for a while was healthy: its end starts a new streak and the backoff afresh.
      const stable = startedAt !== undefined && now() - startedAt >= stableRunMs;
      failures = stable ? 1 : failures + 1;
      if (stable || health.downSince === undefined) health.downSince = now();
      enter('restarting');
      health.restarts += 1;
      health.lastError = cause?.message;
      deps.onRestart?.();
      const delayMs = Math.min(maxBackoffMs, initialBackoffMs * 2 ** (failures - 1));
      try {
        await sleep(delayMs, stopping.signal);
      } catch {
        // Aborted by stop(): the loop ends below.
        break;
      }
      if (loop.beforeRestart) {
        try {
          await loop.beforeRestart(cause);
        } catch (error) {
          // The run below fails again if this was needed, and backs off longer.
          log.warn({ err: ensureError(error) }, 'preparing the consume loop restart failed');
        }
      }
    }
    enter('stopped');
  }

  return {
    start() {
      current ??= supervise();
    },
    async stop() {
      stopping.abort(new Error('stopping'));
      await current;
      enter('stopped');
    },
    health: () => ({ ...health }),
  };
}
