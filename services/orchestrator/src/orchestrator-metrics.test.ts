import { createLogger, createMetrics, type RunStatus, type WorkItem } from '@abide/shared';
import { describe, expect, it } from 'vitest';
import { createOrchestratorMetrics } from './orchestrator-metrics.ts';

const silentLogger = createLogger('orchestrator-metrics-test', 'silent');
const t0 = Date.parse('2026-11-29T12:00:00.000Z');

describe('orchestrator metrics', () => {
  it('reports how long the oldest due run is past its deadline, read at most once per refresh', async () => {
    const metrics = createMetrics({ processMetrics: false });
    let clock = t0;
    const queries: string[] = [];
    let due: WorkItem[] = [{ _id: 'deadline:run_1', kind: 'deadline', runId: 'run_1', tenantId: 't1', dueAt: new Date(t0 - 300_000).toISOString() }];
    const store = {
      async findDueWork(_kind: WorkItem['kind'], nowIso: string, limit: number) {
        queries.push(`${nowIso} ${limit}`);
        return due.slice(0, limit);
      },
      countRunsByStatus: async () => ({}),
    };
    createOrchestratorMetrics({ metrics, store, logger: silentLogger, now: () => clock });
    expect(await metrics.render()).toMatch(/^abide_oldest_overdue_deadline_seconds 300$/m);
    // Only deadlines more than a minute late count, and only one row is read.
    expect(queries).toEqual([`${new Date(t0 - 60_000).toISOString()} 1`]);
    due = [];
    clock += 10_000;
    expect(await metrics.render()).toMatch(/^abide_oldest_overdue_deadline_seconds 300$/m);
    expect(queries).toHaveLength(1);
    clock += 30_000;
    expect(await metrics.render()).toMatch(/^abide_oldest_overdue_deadline_seconds 0$/m);
    expect(queries).toHaveLength(2);
  });

  it('exports the commit-latency histogram for the commit path', async () => {
    const metrics = createMetrics({ processMetrics: false });
    const { commitLatency } = createOrchestratorMetrics({ metrics, store: { findDueWork: async () => [], countRunsByStatus: async () => ({}) }, logger: silentLogger });
    commitLatency.observe({ result: 'committed' }, 0.012);
    expect(await metrics.render()).toMatch(/^abide_commit_duration_seconds_count\{result="committed"\} 1$/m);
  });

  it('counts runs by live status at most once per refresh, 0 for a status without runs, and keeps the last counts when the count fails', async () => {
    const metrics = createMetrics({ processMetrics: false });
    let clock = t0;
    const asked: (readonly RunStatus[])[] = [];
    let answer: () => Promise<Partial<Record<RunStatus, number>>> = async () => ({ running: 3, suspended: 2 });
    const store = {
      findDueWork: async () => [],
      async countRunsByStatus(statuses: readonly RunStatus[]) {
        asked.push(statuses);
        return answer();
      },
    };
    createOrchestratorMetrics({ metrics, store, logger: silentLogger, now: () => clock });
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
