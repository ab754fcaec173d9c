import { describe, expect, it } from 'vitest';
import { runChaos, summarize } from './chaos/run-chaos.ts';

/**
 * Issue 4's chaos test, CI-sized: two replicas of every service, a seeded workload of runs with
 * plain tools, HTTP tools and approvals, and a killer sending SIGKILL to random service processes
 * at random moments. `CHAOS_SEED` replays a seed; `npm run chaos` runs a long one.
 */
describe('chaos', () => {
  it('every run completes exactly once while random service processes are killed', { timeout: 300_000 }, async () => {
    const seed = Number(process.env.CHAOS_SEED ?? 20_261_124);
    const report = await runChaos({ runs: 30, seed, ratePerSecond: 1, killIntervalMs: [700, 2_000], followers: 4, log: (line) => console.log(line) });
    console.log(summarize(report));
    if (report.violations.length > 0) console.log(JSON.stringify(report, null, 2));
    expect(report.violations).toEqual([]);
    expect(report.statuses).toEqual({ completed: 30 });
    expect(report.kills.total).toBeGreaterThanOrEqual(8);
    expect(report.followers.reconnects).toBeGreaterThanOrEqual(report.kills.total);
    expect(report.approvals.approved + report.approvals.denied).toBeGreaterThan(0);
  });
});
