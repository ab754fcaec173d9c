import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AckPolicy, DeliverPolicy, jetstream, jetstreamManager, RetentionPolicy, StorageType, type JetStreamClient } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startNatsServer, type ManagedServer } from '../../scripts/lib/servers.ts';

/**
 * The local nats-server build's group sync (issue 9, `patchGroupSync` in
 * scripts/lib/server-binaries.ts): appends a stream takes at once are stored with one sync at the
 * end of the batch, and a removal's tombstone is written at once but synced with the block's next
 * sync. No test short of cutting the power shows an fsync; this one checks what a process crash
 * must keep: messages published from many clients at once are each stored once, in PubAck order,
 * and still there after a SIGKILL; an acked work-queue message stays removed after it.
 */
describe('the local nats-server build under concurrent appends and a SIGKILL', () => {
  let dataDir: string;
  let server: ManagedServer;
  const connections: NatsConnection[] = [];

  async function client(): Promise<{ nc: NatsConnection; js: JetStreamClient }> {
    const nc = await connect({ servers: server.url, reconnect: false });
    connections.push(nc);
    return { nc, js: jetstream(nc) };
  }

  beforeAll(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'abide-nats-group-'));
    server = await startNatsServer({ dataDir, log: () => {} });
  });
  afterAll(async () => {
    await Promise.all(connections.map((nc) => nc.close().catch(() => {})));
    await server?.stop();
    if (dataDir) await rm(dataDir, { recursive: true, force: true });
  });

  it('stores every PubAck-ed append once and keeps acked removals across a SIGKILL', async () => {
    const admin = await client();
    const jsm = await jetstreamManager(admin.nc);
    await jsm.streams.add({ name: 'GROUPED', subjects: ['grouped.>'], storage: StorageType.File, num_replicas: 1 });
    await jsm.streams.add({ name: 'QUEUE', subjects: ['queue.>'], storage: StorageType.File, num_replicas: 1, retention: RetentionPolicy.Workqueue });
    await jsm.consumers.add('QUEUE', { durable_name: 'worker', ack_policy: AckPolicy.Explicit, deliver_policy: DeliverPolicy.All });

    // Eight connections publishing 250 messages each, all at once: the stream takes them in batches.
    const publishers = await Promise.all(Array.from({ length: 8 }, () => client()));
    const acks = await Promise.all(
      publishers.flatMap(({ js }, p) =>
        Array.from({ length: 250 }, (_, i) => js.publish(`grouped.${p}`, JSON.stringify({ p, i }), { msgID: `m-${p}-${i}` }).then((ack) => ({ p, i, seq: ack.seq, duplicate: ack.duplicate }))),
      ),
    );
    expect(acks.every((ack) => !ack.duplicate)).toBe(true);
    const sequences = acks.map((ack) => ack.seq).sort((a, b) => a - b);
    expect(sequences).toEqual(Array.from({ length: 2_000 }, (_, i) => i + 1));

    // 300 work-queue messages, the first 200 acked (acknowledged by the server: `ackAck`).
    await Promise.all(Array.from({ length: 300 }, (_, i) => admin.js.publish(`queue.${i}`, String(i))));
    const consumer = await admin.js.consumers.get('QUEUE', 'worker');
    const fetched = await consumer.fetch({ max_messages: 300, expires: 5_000 });
    const received: number[] = [];
    for await (const message of fetched) {
      const i = Number(message.string());
      received.push(i);
      if (i < 200) await message.ackAck();
      if (received.length === 300) break;
    }
    expect(received).toHaveLength(300);
    expect((await jsm.streams.info('QUEUE')).state.messages).toBe(100);

    await Promise.all(connections.splice(0).map((nc) => nc.close()));
    server.kill('SIGKILL');
    await server.restart();

    const after = await client();
    const jsmAfter = await jetstreamManager(after.nc);
    expect((await jsmAfter.streams.info('GROUPED')).state).toMatchObject({ messages: 2_000, first_seq: 1, last_seq: 2_000 });
    // Each PubAck's sequence holds the message it acknowledged.
    for (const ack of acks.filter((_, index) => index % 97 === 0)) {
      const stored = await jsmAfter.streams.getMessage('GROUPED', { seq: ack.seq });
      expect(stored?.json()).toEqual({ p: ack.p, i: ack.i });
    }
    const queue = await jsmAfter.streams.info('QUEUE');
    expect(queue.state.messages).toBe(100);
    const left: number[] = [];
    for (let seq = queue.state.first_seq; seq <= queue.state.last_seq; seq++) {
      const stored = await jsmAfter.streams.getMessage('QUEUE', { seq }).catch(() => null);
      if (stored) left.push(Number(stored.string()));
    }
    expect(left.sort((a, b) => a - b)).toEqual(Array.from({ length: 100 }, (_, i) => i + 200));
  });
});
