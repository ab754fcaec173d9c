import { setTimeout as sleep } from 'node:timers/promises';
import { headers as natsHeaders, type MsgHdrs } from '@nats-io/transport-node';
import type { JetStreamClient, JsMsg } from '@nats-io/jetstream';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { createConsumerRunner, deferHeaders } from './consumer.ts';
import { createConsumerSupervision } from './consumer-supervisor.ts';
import { createMetrics } from './metrics.ts';
import { encodeJson, consumerPolicies } from './jetstream.ts';
import { createLogger } from './logger.ts';

const silentLogger = createLogger('consumer-test', 'silent');
const supervision = () => createConsumerSupervision({ metrics: createMetrics({ processMetrics: false }), logger: silentLogger });
const schema = z.object({ tenantId: z.string(), runId: z.string() });

/** A pulled message: records what the runner did with it. */
function fakeMessage(fields: { seq: number; deliveryCount?: number; headers?: Record<string, string> }) {
  const outcome: string[] = [];
  const headers: MsgHdrs = natsHeaders();
  for (const [key, value] of Object.entries(fields.headers ?? {})) headers.set(key, value);
  const message = {
    subject: 'tool.request.hold',
    data: encodeJson({ tenantId: 'acme', runId: 'run_1' }),
    seq: fields.seq,
    headers,
    info: { deliveryCount: fields.deliveryCount ?? 1 },
    working: () => undefined,
    // The runner acks without waiting for a confirmation after handling, and with one after deferring.
    ack: () => outcome.push('ack'),
    ackAck: async () => {
      outcome.push('ack');
      return true;
    },
    nak: () => outcome.push('nak'),
    term: () => outcome.push('term'),
  };
  return { message: message as unknown as JsMsg, outcome };
}

/**
 * A JetStream client whose consumer yields `messages` once, then waits like a live pull until
 * stopped; `drained` resolves once the runner asked for more than `messages`. Records publishes.
 */
function fakeJetStream(messages: JsMsg[]) {
  const published: { subject: string; msgID: string | undefined; headers: MsgHdrs | undefined }[] = [];
  let markDrained: () => void = () => {};
  const drained = new Promise<void>((resolve) => (markDrained = resolve));
  const js = {
    consumers: {
      get: async () => ({
        consume: async () => {
          let stop: () => void = () => {};
          const stopped = new Promise<void>((resolve) => (stop = resolve));
          return {
            stop: () => stop(),
            status: () => (async function* () {})(),
            async *[Symbol.asyncIterator]() {
              yield* messages;
              markDrained();
              await stopped;
            },
          };
        },
      }),
    },
    publish: async (subject: string, _data: Uint8Array, options: { msgID?: string; headers?: MsgHdrs }) => {
      published.push({ subject, msgID: options.msgID, headers: options.headers });
      return { seq: 100 + published.length, duplicate: false, stream: 'TOOL_REQUESTS' };
    },
  };
  return { js: js as unknown as JetStreamClient, published, drained };
}

async function runOnce(options: { messages: JsMsg[]; admit: () => Promise<(() => Promise<void>) | undefined>; handled: string[]; now?: () => number }) {
  const { js, published, drained } = fakeJetStream(options.messages);
  const runner = createConsumerRunner({
    supervision: supervision(),
    js,
    policy: consumerPolicies['tool-worker'],
    schema,
    concurrency: 1,
    logger: silentLogger,
    handle: async () => {
      options.handled.push('handled');
    },
    admit: options.admit,
    deferPauseMs: 50,
    ...(options.now ? { now: options.now } : {}),
  });
  await runner.start();
  await drained;
  await runner.stop(1_000);
  return published;
}

describe('consumer runner latency', () => {
  it("observes each acked message's latency from its envelope time, by durable", async () => {
    const clock = Date.parse('2026-11-30T10:00:00.000Z');
    const metrics = createMetrics({ processMetrics: false });
    const message = fakeMessage({ seq: 1 });
    (message.message as { data: Uint8Array }).data = encodeJson({ tenantId: 'acme', runId: 'run_1', ts: new Date(clock - 2_500).toISOString() });
    const { js, drained } = fakeJetStream([message.message]);
    const runner = createConsumerRunner({
      supervision: createConsumerSupervision({ metrics, logger: silentLogger }),
      js,
      policy: consumerPolicies['tool-worker'],
      schema: schema.extend({ ts: z.string() }),
      concurrency: 1,
      logger: silentLogger,
      handle: async () => {},
      now: () => clock,
    });
    await runner.start();
    await drained;
    await runner.stop(1_000);
    expect(message.outcome).toEqual(['ack']);
    const text = await metrics.render();
    expect(text).toContain('abide_message_latency_seconds_count{durable="tool-worker"} 1');
    expect(text).toContain('abide_message_latency_seconds_sum{durable="tool-worker"} 2.5');
  });
});

describe('consumer runner admission (per-tenant capacity)', () => {
  it('defers a message its tenant has no slot for: republished with a deterministic id, the original acked, never nakked', async () => {
    const original = fakeMessage({ seq: 7, headers: { 'Nats-Msg-Id': 'run_1:3:0', traceparent: 't-1' } });
    const handled: string[] = [];
    const published = await runOnce({ messages: [original.message], admit: async () => undefined, handled });
    expect(handled).toEqual([]);
    expect(original.outcome).toEqual(['ack']);
    expect(published).toHaveLength(1);
    expect(published[0]!.subject).toBe('tool.request.hold');
    expect(published[0]!.msgID).toBe('run_1:3:0:defer:1');
    expect(published[0]!.headers!.get(deferHeaders.origin)).toBe('run_1:3:0');
    expect(published[0]!.headers!.get(deferHeaders.count)).toBe('1');
    expect(published[0]!.headers!.get('traceparent')).toBe('t-1');

    // The same original redelivered (its ack lost in a crash) is deferred under the same id: the duplicate window drops it.
    const again = fakeMessage({ seq: 7, deliveryCount: 2, headers: { 'Nats-Msg-Id': 'run_1:3:0' } });
    const republished = await runOnce({ messages: [again.message], admit: async () => undefined, handled });
    expect(republished[0]!.msgID).toBe('run_1:3:0:defer:1');
    // A deferred copy deferred again counts on from its origin.
    const copy = fakeMessage({ seq: 9, headers: { 'Nats-Msg-Id': 'run_1:3:0:defer:1', [deferHeaders.origin]: 'run_1:3:0', [deferHeaders.count]: '1', [deferHeaders.at]: '0' } });
    const next = await runOnce({ messages: [copy.message], admit: async () => undefined, handled });
    expect(next[0]!.msgID).toBe('run_1:3:0:defer:2');
  });

  it('lets a copy deferred a moment ago wait out the pause and ask once more; admitted, it is handled and its slot released', async () => {
    const clock = 1_000_000;
    const copy = fakeMessage({ seq: 9, headers: { [deferHeaders.origin]: 'run_1:3:0', [deferHeaders.count]: '1', [deferHeaders.at]: String(clock - 10) } });
    const answers = [undefined, 'slot'];
    const steps: string[] = [];
    const handled: string[] = [];
    const published = await runOnce({
      messages: [copy.message],
      handled,
      now: () => clock,
      admit: async () => {
        const answer = answers.shift();
        steps.push(answer ? 'admitted' : 'refused');
        return answer ? async () => void steps.push('released') : undefined;
      },
    });
    expect(steps).toEqual(['refused', 'admitted', 'released']);
    expect(handled).toEqual(['handled']);
    expect(published).toHaveLength(0);
    expect(copy.outcome).toEqual(['ack']);
  });

  it('releases the slot when the handler fails, and naks as before', async () => {
    const message = fakeMessage({ seq: 3 });
    const steps: string[] = [];
    const { js, drained } = fakeJetStream([message.message]);
    const runner = createConsumerRunner({
      supervision: supervision(),
      js,
      policy: consumerPolicies['tool-worker'],
      schema,
      concurrency: 1,
      logger: silentLogger,
      handle: async () => {
        throw new Error('transient');
      },
      admit: async () => async () => void steps.push('released'),
    });
    await runner.start();
    await drained;
    await runner.stop(1_000);
    expect(steps).toEqual(['released']);
    expect(message.outcome).toEqual(['nak']);
  });
});

/**
 * A JetStream client whose consumer hands out one scripted pull per `consume()`: `end` stops at
 * once without an error (a pull whose node died and whose iterator the library ended), `throw`
 * fails, a list of values delivers them and then waits for `stop()`. `get` itself may fail.
 */
function scriptedJetStream(script: ({ get: 'fail' } | { pull: 'end' | 'throw' | 'deleted' | unknown[] })[]) {
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
            let stop: (error?: Error) => void = () => {};
            const stopped = new Promise<Error | undefined>((resolve) => (stop = resolve));
            async function* iterate() {
              if (pull === 'end') return;
              if (pull === 'throw') throw new Error('consumer deleted');
              if (pull === 'deleted') {
                // The library's `stop(error)` ends the iteration with that error.
                const error = await stopped;
                if (error) throw error;
                return;
              }
              for (const [index, value] of pull.entries()) {
                yield {
                  data: encodeJson(value),
                  subject: 'tool.req.echo',
                  seq: index + 1,
                  info: { deliveryCount: 1 },
                  ack: () => void acked.push(value),
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
              stop: (error?: Error) => stop(error),
              // A deleted consumer: the server's 409 reaches the pull as a status.
              status: () => (async function* () {
                if (pull === 'deleted') yield { type: 'consumer_deleted', code: 409, description: 'Consumer Deleted' };
              })(),
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
  while (!check()) await sleep(5);
}

describe('consumer runner', () => {
  it('fetches its consumer again whenever a pull ends, fails or cannot be fetched, and goes on handling messages', async () => {
    const fake = scriptedJetStream([{ pull: [{ n: 1 }] }]);
    const handled: unknown[] = [];
    const runner = createConsumerRunner({
      supervision: supervision(),
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

    const resumed = scriptedJetStream([{ pull: 'end' }, { get: 'fail' }, { pull: 'throw' }, { pull: [{ n: 2 }, { n: 3 }] }]);
    const again = createConsumerRunner({
      supervision: supervision(),
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

  it('provisions a consumer deleted on the server before consuming it again, and reports the restart in its health', async () => {
    const fake = scriptedJetStream([{ pull: 'deleted' }, { pull: [{ n: 7 }] }]);
    const handled: unknown[] = [];
    let provisioned = 0;
    const runner = createConsumerRunner({
      supervision: supervision(),
      js: fake.js,
      policy: consumerPolicies['tool-worker'],
      schema: z.object({ n: z.number() }),
      concurrency: 4,
      logger: createLogger('test', 'silent'),
      async provision() {
        provisioned += 1;
      },
      async handle(delivery) {
        handled.push(delivery.message);
      },
    });
    await runner.start();
    await until(() => fake.acked.length === 1);
    expect(provisioned).toBe(1);
    expect(fake.gets).toBe(2);
    expect(handled).toEqual([{ n: 7 }]);
    expect(runner.health()).toMatchObject({ name: 'tool-worker', state: 'running', restarts: 1, lastError: 'tool-worker: Consumer Deleted' });
    await runner.stop(1_000);
    expect(runner.health().state).toBe('stopped');
  });
});
