import type { JetStreamClient } from '@nats-io/jetstream';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { createConsumerRunner } from './consumer.ts';
import { consumerPolicies, encodeJson } from './jetstream.ts';
import { createLogger } from './logger.ts';

/**
 * A JetStream client whose consumer hands out one scripted pull per `consume()`: `end` stops at
 * once without an error (a pull whose node died and whose iterator the library ended), `throw`
 * fails, a list of values delivers them and then waits for `stop()`. `get` itself may fail.
 */
function fakeJs(script: ({ get: 'fail' } | { pull: 'end' | 'throw' | unknown[] })[]) {
  let gets = 0;
  const acked: unknown[] = [];
  const js = {
    consumers: {
      async get() {
        gets += 1;
        const step = script.shift() ?? { pull: [] };
        if ('get' in step) throw new Error('timeout (election)');
        const { pull } = step;
        return {
          async consume() {
            let stop: () => void = () => {};
            const stopped = new Promise<void>((resolve) => (stop = resolve));
            async function* iterate() {
              if (pull === 'end') return;
              if (pull === 'throw') throw new Error('consumer deleted');
              for (const [index, value] of pull.entries()) {
                yield {
                  data: encodeJson(value),
                  subject: 'tool.req.echo',
                  seq: index + 1,
                  info: { deliveryCount: 1 },
                  ackAck: async () => void acked.push(value),
                  working: () => {},
                  term: () => {},
                  nak: () => {},
                };
              }
              await stopped;
            }
            const iterator = iterate();
            return Object.assign(iterator, {
              stop: () => stop(),
              status: () => (async function* () {})(),
            });
          },
        };
      },
    },
  } as unknown as JetStreamClient;
  return {
    js,
    acked,
    get gets() {
      return gets;
    },
  };
}

async function until(check: () => boolean): Promise<void> {
  while (!check()) await new Promise((resolve) => setTimeout(resolve, 5));
}

describe('consumer runner', () => {
  it('fetches its consumer again whenever a pull ends, fails or cannot be fetched, and goes on handling messages', async () => {
    const fake = fakeJs([{ pull: [{ n: 1 }] }]);
    const handled: unknown[] = [];
    const runner = createConsumerRunner({
      js: fake.js,
      policy: consumerPolicies['tool-worker'],
      schema: z.object({ n: z.number() }),
      concurrency: 4,
      logger: createLogger('test', 'silent'),
      async handle(delivery) {
        handled.push(delivery.message);
      },
    });
    await runner.start();
    await until(() => fake.acked.length === 1);
    // A pull that goes on waiting is not replaced.
    expect(fake.gets).toBe(1);
    const closed = runner.closed.then((error) => ({ error }));
    await runner.stop(1_000);
    expect(await closed).toEqual({ error: undefined });

    const resumed = fakeJs([{ pull: 'end' }, { get: 'fail' }, { pull: 'throw' }, { pull: [{ n: 2 }, { n: 3 }] }]);
    const again = createConsumerRunner({
      js: resumed.js,
      policy: consumerPolicies['tool-worker'],
      schema: z.object({ n: z.number() }),
      concurrency: 4,
      logger: createLogger('test', 'silent'),
      async handle(delivery) {
        handled.push(delivery.message);
      },
    });
    await again.start();
    await until(() => resumed.acked.length === 2);
    expect(resumed.gets).toBe(4);
    expect(handled).toEqual([{ n: 1 }, { n: 2 }, { n: 3 }]);
    await again.stop(1_000);
  });
});
