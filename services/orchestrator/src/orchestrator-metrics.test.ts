import { createLogger, createMetrics, type RunStatus } from '@abide/shared';
import { describe, expect, it } from 'vitest';
import { createOrchestratorMetrics } from './orchestrator-metrics.ts';

const silentLogger = createLogger('orchestrator-metrics-test', 'silent');
const t0 = Date.parse('2026-11-29T12:00:00.000Z');

describe('orchestrator metrics', () => {
  it('reports how long past its deadline the oldest deadline the sweeper has not sent a timer for is, from its memory at every scrape', async () => {
    const metrics = createMetrics({ processMetrics: false });
    let clock = t0;
    let pending: number | null = t0 - 300_000;
    const store = { countRunsByStatus: async () => ({}) };
    createOrchestratorMetrics({ metrics, store, deadlines: { oldestPendingDueAt: () => pending }, logger: silentLogger, now: () => clock });
    expect(await metrics.render()).toMatch(/^abide_oldest_overdue_deadline_seconds 300$/m);
    // Less than a minute behind is the sweep's normal pace: 0.
    pending = t0 - 10_000;
    clock += 1_000;
    expect(await metrics.render()).toMatch(/^abide_oldest_overdue_deadline_seconds 0$/m);
    pending = t0 - 60_000;
    expect(await metrics.render()).toMatch(/^abide_oldest_overdue_deadline_seconds 61$/m);
    pending = null;
    expect(await metrics.render()).toMatch(/^abide_oldest_overdue_deadline_seconds 0$/m);
  });

  it('exports the commit-latency histogram for the commit path', async () => {
    const metrics = createMetrics({ processMetrics: false });
    const { commitLatency } = createOrchestratorMetrics({ metrics, store: { countRunsByStatus: async () => ({}) }, deadlines: { oldestPendingDueAt: () => null }, logger: silentLogger });
    commitLatency.observe({ result: 'committed' }, 0.012);
    expect(await metrics.render()).toMatch(/^abide_commit_duration_seconds_count\{result="committed"\} 1$/m);
  });

  it('counts runs by live status at most once per refresh, 0 for a status without runs, and keeps the last counts when the count fails', async () => {
    const metrics = createMetrics({ processMetrics: false });
    let clock = t0;
    const asked: (readonly RunStatus[])[] = [];
    let answer: () => Promise<Partial<Record<RunStatus, number>>> = async () => ({ running: 3, suspended: 2 });
    const store = {
      async countRunsByStatus(statuses: readonly ('queued' | 'running' | 'suspended')[]) {
        asked.push(statuses);
        return answer();
      },
    };
    createOrchestratorMetrics({ metrics, store, deadlines: { oldestPendingDueAt: () => null }, logger: silentLogger, now: () => clock });
    const first = await metrics.render();
    expect(first).toMatch(/^abide_runs\{status="queued"\} 0$/m);
    expect(first).toMatch(/^abide_runs\{status="running"\} 3$/m);
    expect(first).toMatch(/^abide_runs\{status="suspended"\} 2$/m);
    expect(first).not.toMatch(/status="completed"/);
    // Terminal statuses are never counted: finished runs only accumulate.
    expect(asked).toEqual([['queued', 'running', 'suspended']]);
    answer = async () => ({ running: 1 });
    clock += 10_000;
    expect(await metrics.render()).toMatch(/^abide_runs\{status="running"\} 3$/m);
    expect(asked).toHaveLength(1);
    clock += 30_000;
    const refreshed = await metrics.render();
    expect(refreshed).toMatch(/^abide_runs\{status="running"\} 1$/m);
    expect(refreshed).toMatch(/^abide_runs\{status="suspended"\} 0$/m);
    answer = () => Promise.reject(new Error('connection reset'));
    clock += 30_000;
    expect(await metrics.render()).toMatch(/^abide_runs\{status="running"\} 1$/m);
  });
});
