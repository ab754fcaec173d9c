import { setTimeout as sleep } from 'node:timers/promises';
import { describe, expect, it } from 'vitest';
import { runChaos, summarize } from './chaos/run-chaos.ts';
import { Stack } from './harness/stack.ts';

/**
 * Issue 14 on a real three-node NATS cluster (R3 streams, `sync_interval: always`), CI-sized: runs
 * with HTTP tools and approvals, each followed over a WebSocket, while NATS nodes fail one at a
 * time: a SIGKILL of the meta leader, then of the leader of `RUN_INBOX`, then of random nodes,
 * each restarted, and one node frozen with SIGSTOP for longer than the election timeout, then
 * resumed. The followers never reconnect on their own: a subscription must ride through every
 * fault (or say `subscription_interrupted`), never end silently. `CHAOS_SEED` replays a seed;
 * `npm run chaos -- --cluster 3` runs a long one.
 */
describe('a three-node NATS cluster', () => {
  it('completes every run exactly once, loses no approval and keeps every subscription while nodes fail', { timeout: 420_000 }, async () => {
    const seed = Number(process.env.CHAOS_SEED ?? 20_261_129);
    const runs = 24;
    const report = await runChaos({ runs, seed, cluster: 3, ratePerSecond: 0.5, killIntervalMs: [1_500, 3_500], downMs: [500, 3_000], nodeStopMs: 12_000, minKills: 5, followers: 4, log: (line) => console.log(line) });
    console.log(`NATS node faults:\n  ${report.nodeFaults.join('\n  ')}`);
    console.log(`longest stall a run saw: ${(report.longestStall.ms / 1_000).toFixed(1)} s (${report.longestStall.runId})`);
    console.log(`followers: ${JSON.stringify(report.followers)}`);
    console.log(summarize(report));
    if (report.violations.length > 0) console.log(JSON.stringify(report, null, 2));
    expect(report.violations).toEqual([]);
    expect(report.statuses).toEqual({ completed: runs });
    expect(report.nodeFaults[0]).toMatch(/SIGKILL n\d \(meta leader\), back/);
    expect(report.nodeFaults[1]).toMatch(/SIGKILL n\d \(RUN_INBOX leader\), back/);
    expect(report.nodeFaults.some((fault) => /SIGSTOP n\d/.test(fault))).toBe(true);
    expect(report.nodeFaults.length).toBeGreaterThanOrEqual(5);
    // No subscription ended before its run's end without an error frame.
    expect(report.followers.resubscribesAfterSilence).toBe(0);
    expect(report.followers.reconnects).toBe(0);
    // A subscribe refused during an election says `unavailable` (retry), never `internal` (a bug).
    expect(Object.keys(report.followers.errorCodes).filter((code) => !['unavailable', 'subscription_interrupted'].includes(code))).toEqual([]);
    expect(report.approvals.approved + report.approvals.denied).toBeGreaterThan(0);
  });

  it('answers not ready while the cluster has lost quorum, and ready again once it has it back', { timeout: 240_000 }, async () => {
    const stack = await Stack.start({ natsCluster: 3 });
    try {
      const probes = { gateway: `${stack.gatewayUrl}/readyz`, orchestrator: `${stack.service('orchestrator').healthUrl}/readyz`, 'tool-worker': `${stack.service('tool-worker').healthUrl}/readyz` };
      const readiness = async () =>
        Object.fromEntries(
          await Promise.all(
            Object.entries(probes).map(async ([name, url]) => {
              const response = await fetch(url, { signal: AbortSignal.timeout(10_000) }).catch(() => undefined); // a probe that hangs counts as not ready
              const body = (await response?.json().catch(() => undefined)) as { checks?: Record<string, boolean> } | undefined;
              return [name, { status: response?.status ?? 0, jetstream: body?.checks?.jetstream }] as const;
            }),
          ),
        );
      /** Polls until every probe answers `status` with its `jetstream` check `jetstream`; throws with the last answers after the timeout. */
      const until = async (status: number, jetstream: boolean, timeoutMs: number) => {
        const deadline = Date.now() + timeoutMs;
        for (;;) {
          const now = await readiness();
          if (Object.values(now).every((probe) => probe.status === status && probe.jetstream === jetstream)) return;
          if (Date.now() > deadline) throw new Error(`readiness never became ${status} with jetstream ${jetstream}: ${JSON.stringify(now)}`);
          await sleep(250);
        }
      };
      await until(200, true, 30_000);

      // Two of three nodes down: the connections stay up (to the third) but nothing can be stored.
      // Each service turns 503 first for whichever check sees it first (its connection moving to
      // the third node, a consumer restarting), and its `jetstream` check false once the third
      // node's stream has lost its leader (a leader learns of the lost quorum only at its
      // election timeout): it is the last state that is waited for, not the first 503.
      const [first, second] = stack.servers.natsCluster!.nodes;
      first!.server.kill('SIGKILL');
      second!.server.kill('SIGKILL');
      await until(503, false, 60_000);

      await Promise.all([first!.server.restart(), second!.server.restart()]);
      await until(200, true, 90_000);
    } finally {
      await stack.stop();
    }
  });
});
