import { ensureError } from './errors.ts';
import { consumerPolicies, type JetStreamManager } from './jetstream.ts';
import type { Logger } from './logger.ts';
import type { Metrics } from './metrics.ts';
import type { ConsumerName } from './names.ts';

/** The part of `ConsumerInfo` the backlog gauges read. */
type ConsumerCounts = { num_pending: number; num_ack_pending: number; num_redelivered: number };

/** The part of nats.js `JetStreamManager` the gauges use. */
export type ConsumerInfoReader = { consumers: { info(stream: string, durable: string): Promise<ConsumerCounts> } };

/**
 * Backlog gauges per durable (the numbers KEDA scales on), read from `jsm.consumers.info` at
 * scrape time: `consumer_pending_messages` (not yet delivered), `consumer_ack_pending_messages`
 * (delivered, not acked), `consumer_redelivered_messages` (delivered more than once, not acked).
 * The label is the durable's name, a fixed set. Every replica reports the same numbers (the
 * consumer is shared): aggregate with `max by (durable)`. A durable whose info cannot be read is
 * left out of that scrape (no stale number) and the reason logged.
 */
export function watchConsumerBacklog(deps: { metrics: Metrics; jsm: () => ConsumerInfoReader | JetStreamManager | undefined; durables: readonly ConsumerName[]; logger: Logger }): void {
  const { metrics, durables, logger } = deps;
  const pending = metrics.gauge('consumer_pending_messages', 'Messages of the durable\'s stream not yet delivered (the backlog)', undefined, ['durable']);
  const ackPending = metrics.gauge('consumer_ack_pending_messages', 'Messages delivered and not yet acknowledged', undefined, ['durable']);
  const redelivered = metrics.gauge('consumer_redelivered_messages', 'Messages delivered more than once and not yet acknowledged', undefined, ['durable']);
  metrics.beforeScrape(async () => {
    const jsm = deps.jsm() as ConsumerInfoReader | undefined;
    const infos = jsm
      ? await Promise.all(
          durables.map(async (durable) => {
            const policy = consumerPolicies[durable];
            try {
              return { durable, counts: await jsm.consumers.info(policy.stream, policy.durable) };
            } catch (error) {
              // Left out of this scrape rather than reported stale; the next scrape tries again.
              logger.warn({ durable, err: ensureError(error) }, 'could not read consumer info for the backlog metrics');
              return { durable, counts: undefined };
            }
          }),
        )
      : [];
    for (const gauge of [pending, ackPending, redelivered]) gauge.reset();
    for (const { durable, counts } of infos) {
      if (!counts) continue;
      pending.set(counts.num_pending, { durable });
      ackPending.set(counts.num_ack_pending, { durable });
      redelivered.set(counts.num_redelivered, { durable });
    }
  });
}
