import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { createConsumerSupervision } from './consumer-supervisor.ts';
import { createLogger } from './logger.ts';
import { createMetrics } from './metrics.ts';

const logger = createLogger('supervisor-test', 'silent');

async function until(check: () => boolean): Promise<void> {
  while (!check()) await sleep(5);
}

/** A loop whose runs the test ends one by one: `end()` resolves the current run, `fail()` rejects it. */
function controlledLoop() {
  const runs: { end(): void; fail(error: Error): void }[] = [];
  return {
    runs,
    async run(consuming: () => void): Promise<void> {
      await new Promise<void>((resolve, reject) => {
        runs.push({ end: resolve, fail: reject });
        consuming();
      });
    },
  };
}

describe('consumer supervision', () => {
  it('restarts a loop that ends or throws, counts each restart and says why; stop ends it', async () => {
    const metrics = createMetrics({ processMetrics: false });
    const supervision = createConsumerSupervision({ metrics, logger });
    const loop = controlledLoop();
    const causes: (string | undefined)[] = [];
    const supervisor = supervision.supervise({ name: 'orchestrator', run: loop.run, beforeRestart: async (cause) => void causes.push(cause?.message) });
    supervisor.start();
    await until(() => loop.runs.length === 1);
    expect(supervisor.health()).toMatchObject({ name: 'orchestrator', state: 'running', restarts: 0 });

    loop.runs[0]!.end();
    await until(() => loop.runs.length === 2);
    loop.runs[1]!.fail(new Error('stream leader lost'));
    await until(() => loop.runs.length === 3);
    expect(causes).toEqual([undefined, 'stream leader lost']);
    expect(supervisor.health()).toMatchObject({ state: 'running', restarts: 2, lastError: 'stream leader lost' });
    expect(await metrics.render()).toMatch(/^abide_consumer_restarts_total\{durable="orchestrator"\} 2$/m);

    const stopped = supervisor.stop();
    loop.runs[2]!.end();
    await stopped;
    expect(supervisor.health().state).toBe('stopped');
    expect(loop.runs).toHaveLength(3);
  });

  it('stop ends a backoff at once', async () => {
    const supervision = createConsumerSupervision({ metrics: createMetrics({ processMetrics: false }), logger });
    let runs = 0;
    const supervisor = supervision.supervise({
      name: 'tool-worker',
      async run() {
        runs += 1;
        throw new Error('consumer not found');
      },
    });
    supervisor.start();
    // The backoff doubles: the fifth run comes after 0.1 + 0.2 + 0.4 + 0.8 s.
    await until(() => runs === 5);
    const started = Date.now();
    await supervisor.stop();
    expect(Date.now() - started).toBeLessThan(500);
    expect(supervisor.health()).toMatchObject({ state: 'stopped', restarts: 5 });
  });

  it('is ready while every expected loop runs or restarts within the grace; not ready before it supervises them, once one stays down past the grace, or until a run after that lasts', async () => {
    let clock = 1_000;
    const supervision = createConsumerSupervision({ metrics: createMetrics({ processMetrics: false }), logger, restartGraceMs: 10_000, now: () => clock });
    const check = supervision.check(['llm-worker']);
    expect(await check.check()).toBe(false);

    const loop = controlledLoop();
    const failing = { fail: true };
    const supervisor = supervision.supervise({
      name: 'llm-worker',
      async run(consuming) {
        if (failing.fail && loop.runs.length > 0) throw new Error('consumer deleted');
        await loop.run(consuming);
      },
    });
    expect(await check.check()).toBe(false);
    supervisor.start();
    await until(() => loop.runs.length === 1);
    expect(await check.check()).toBe(true);

    // The run ends; the next ones fail: restarting, still ready within the grace.
    loop.runs[0]!.end();
    await until(() => supervisor.health().state === 'restarting');
    expect(await check.check()).toBe(true);
    clock += 10_001;
    expect(await check.check()).toBe(false);
    expect(supervision.health()).toEqual([expect.objectContaining({ name: 'llm-worker', state: 'restarting' })]);

    // Consuming again after a streak longer than the grace: up once the run has lasted `stableRunMs`.
    failing.fail = false;
    await until(() => loop.runs.length === 2);
    expect(supervisor.health().state).toBe('running');
    expect(await check.check()).toBe(false);
    clock += 5_000;
    expect(await check.check()).toBe(true);
    const stopped = supervisor.stop();
    loop.runs[1]!.end();
    await stopped;
    expect(await check.check()).toBe(false);
  });

  it('is not ready while a loop that never consumed restarts, even within the grace', async () => {
    const supervision = createConsumerSupervision({ metrics: createMetrics({ processMetrics: false }), logger, restartGraceMs: 60_000 });
    let runs = 0;
    const supervisor = supervision.supervise({
      name: 'orchestrator-approvals',
      async run() {
        runs += 1;
        throw new Error('consumer not found');
      },
    });
    supervisor.start();
    await until(() => runs === 2);
    expect(supervisor.health().state).toBe('restarting');
    expect(supervisor.health().consumingSince).toBeUndefined();
    expect(await supervision.check(['orchestrator-approvals']).check()).toBe(false);
    await supervisor.stop();
  });
});
