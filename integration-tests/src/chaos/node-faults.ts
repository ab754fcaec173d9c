import { setTimeout as sleep } from 'node:timers/promises';
import { jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { streams } from '@abide/shared';
import type { NatsCluster, NatsClusterNode } from '../../../scripts/lib/servers.ts';
import type { Random } from './random.ts';

/** One fault of a NATS node: what was hit, how, when, and when it was back. */
export type NodeFault = {
  node: string;
  /** Why this node: the meta leader, the leader of `RUN_INBOX`, or chance. */
  target: 'meta leader' | 'RUN_INBOX leader' | 'random';
  signal: 'SIGKILL' | 'SIGSTOP';
  at: number;
  /** Restarted (SIGKILL) or resumed (SIGCONT), and healthy again. */
  restoredAt?: number;
};

export type NodeFaultOptions = {
  cluster: NatsCluster;
  random: Random;
  /** Pause between one node being healthy again and the next fault, ms. */
  intervalMs: [number, number];
  /** How long a killed node stays down, ms. */
  downMs: [number, number];
  /** How long the one stopped node stays frozen: longer than the election timeout (up to 9 s in nats-server). */
  stopMs: number;
  /** Which fault is the SIGSTOP (0-based; 0 and 1 are the leader kills). @default 3 */
  stopAt?: number;
  log?(line: string): void;
};

export type NodeFaults = { readonly faults: NodeFault[]; stop(): Promise<void> };

/** The node that leads `RUN_INBOX` now, asked through `$JS.API.STREAM.INFO` on any live node. */
export async function streamLeader(cluster: NatsCluster, stream: string): Promise<string | undefined> {
  const connection = await connect({ servers: cluster.url.split(','), timeout: 5_000 });
  try {
    const jsm = await jetstreamManager(connection, { timeout: 5_000 });
    return (await jsm.streams.info(stream)).cluster?.leader;
  } finally {
    await connection.close();
  }
}

/**
 * The stream's leader, asked again until one answers: right after the meta leader's restart the
 * request can time out and an election leaves the stream without a leader for a few seconds.
 */
async function waitForStreamLeader(cluster: NatsCluster, stream: string, timeoutMs: number): Promise<string> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const leader = await streamLeader(cluster, stream).catch(() => undefined); // no answer yet: ask again
    if (leader) return leader;
    if (Date.now() > deadline) throw new Error(`no leader of ${stream} after ${timeoutMs} ms`);
    await sleep(200);
  }
}

/** Waits until the node's full `/healthz` answers 200: JetStream is up and its streams have caught up. */
async function waitHealthy(node: NatsClusterNode, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const status = await fetch(`${node.monitorUrl}/healthz`, { signal: AbortSignal.timeout(2_000) })
      .then((response) => response.status)
      .catch(() => 0); // not listening yet
    if (status === 200) return;
    await sleep(200);
  }
  throw new Error(`NATS ${node.name} was not healthy ${timeoutMs} ms after its fault`);
}

/**
 * Faults NATS nodes one at a time (issue 14): first a SIGKILL of the meta leader, then of the
 * leader of `RUN_INBOX`, then of a random node every few seconds, each restarted after a while;
 * one fault (`stopAt`) is a SIGSTOP longer than the election timeout, then SIGCONT. The next
 * fault waits until the node is healthy again, so a majority of every stream stays up.
 */
export function startNodeFaults(options: NodeFaultOptions): NodeFaults {
  const { cluster, random } = options;
  const faults: NodeFault[] = [];
  const stopAt = options.stopAt ?? 3;
  let stopped = false;
  let wake: () => void = () => {};
  const pause = (ms: number) =>
    new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, ms);
      wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  const byName = (name: string | undefined) => cluster.nodes.find((node) => node.name === name);

  async function pickTarget(index: number): Promise<{ node: NatsClusterNode; target: NodeFault['target'] }> {
    if (index === 0) {
      const node = byName(await cluster.waitForMetaLeader(30_000));
      if (node) return { node, target: 'meta leader' };
    }
    if (index === 1) {
      const node = byName(await waitForStreamLeader(cluster, streams.runInbox, 60_000));
      if (node) return { node, target: 'RUN_INBOX leader' };
    }
    return { node: random.pick(cluster.nodes), target: 'random' };
  }

  const loop = (async () => {
    for (let index = 0; !stopped; index += 1) {
      await pause(random.int(...options.intervalMs));
      if (stopped) break;
      const { node, target } = await pickTarget(index);
      const signal = index === stopAt ? 'SIGSTOP' : 'SIGKILL';
      const fault: NodeFault = { node: node.name, target, signal, at: Date.now() };
      faults.push(fault);
      node.server.kill(signal);
      options.log?.(`chaos: ${signal} NATS ${node.name} (${target}, pid ${node.server.pid})`);
      if (signal === 'SIGSTOP') {
        await sleep(options.stopMs);
        node.server.kill('SIGCONT');
      } else {
        await sleep(random.int(...options.downMs));
        await node.server.restart();
      }
      await waitHealthy(node, 120_000);
      fault.restoredAt = Date.now();
      options.log?.(`chaos: NATS ${node.name} back after ${((fault.restoredAt - fault.at) / 1_000).toFixed(1)} s`);
    }
  })();

  return {
    faults,
    async stop() {
      stopped = true;
      wake();
      await loop;
    },
  };
}

/** One line per fault: `+12.3 s SIGKILL n2 (meta leader), back after 4.1 s`. */
export function describeFaults(faults: readonly NodeFault[], since: number): string[] {
  return faults.map(
    (fault) =>
      `+${((fault.at - since) / 1_000).toFixed(1)} s ${fault.signal} ${fault.node} (${fault.target})` +
      (fault.restoredAt ? `, back after ${((fault.restoredAt - fault.at) / 1_000).toFixed(1)} s` : ', not back'),
  );
}
