import { closeSync, fsyncSync, openSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { jetstream, jetstreamManager, StorageType } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import type { Db } from 'mongodb';
import { createRunStore } from '@abide/shared';
import { getCollections } from '@abide/shared/mongo';
import { summarize, type LatencySummary } from './stats.ts';

/**
 * The floor under a durable step on this machine (WORKLOAD.md quotes ~0.38 ms fsync, ~0.25 ms
 * JetStream publish + PubAck on the reference machine), measured against the same disk and the
 * same servers the stack uses, plus a raw FerretDB/MongoDB insert round trip, alone and with
 * `concurrentWriters` writers at once (what the services' writes meet under load: on FerretDB/SQLite
 * one writer at a time, so this shows how the server queues them).
 */
export type FloorProbes = {
  fsync: LatencySummary;
  jsPublish: LatencySummary;
  mongoInsert: LatencySummary;
  mongoInsertConcurrent: LatencySummary;
  mongoFindById: LatencySummary;
};

/** The writers of the concurrent insert probe. */
export const concurrentWriters = 8;

async function timeEach(count: number, operation: (index: number) => Promise<void> | void): Promise<LatencySummary> {
  const latencies: number[] = [];
  for (let index = 0; index < count; index += 1) {
    const started = performance.now();
    await operation(index);
    latencies.push(performance.now() - started);
  }
  return summarize(latencies);
}

export async function measureFloor(options: { dir: string; natsUrl: string; db: Db; count?: number }): Promise<FloorProbes> {
  const count = options.count ?? 300;
  const payload = Buffer.alloc(1024, 'x');

  // 1 KiB write + fsync of a file on the disk the servers use.
  const path = join(options.dir, 'fsync-probe.bin');
  const fd = openSync(path, 'w');
  await timeEach(20, () => (writeSync(fd, payload), fsyncSync(fd)));
  const fsync = await timeEach(count, () => (writeSync(fd, payload), fsyncSync(fd)));
  closeSync(fd);
  rmSync(path, { force: true });

  // JetStream publish of 1 KiB to a file-storage stream, awaiting the PubAck.
  const connection = await connect({ servers: options.natsUrl });
  let jsPublish: LatencySummary;
  try {
    const manager = await jetstreamManager(connection);
    await manager.streams.add({ name: 'BENCH_FLOOR_PROBE', subjects: ['bench.floor.probe'], storage: StorageType.File, num_replicas: 1 });
    const js = jetstream(connection);
    await timeEach(20, async (index) => void (await js.publish('bench.floor.probe', payload, { msgID: `warm-${index}` })));
    jsPublish = await timeEach(count, async (index) => void (await js.publish('bench.floor.probe', payload, { msgID: `m-${index}` })));
    await manager.streams.delete('BENCH_FLOOR_PROBE');
  } finally {
    await connection.close();
  }

  // A 1 KiB document inserted by _id, then read back by _id.
  const collection = options.db.collection<{ _id: string; body: string }>('bench_floor_probe');
  const body = payload.toString('utf8');
  await timeEach(20, async (index) => void (await collection.insertOne({ _id: `warm-${index}`, body })));
  const mongoInsert = await timeEach(count, async (index) => void (await collection.insertOne({ _id: `d-${index}`, body })));
  const mongoFindById = await timeEach(count, async (index) => void (await collection.findOne({ _id: `d-${index}` })));
  // The same insert from `concurrentWriters` writers at once, each on its own pooled connection.
  const perWriter = Math.ceil(count / concurrentWriters);
  const latencies: number[] = [];
  await Promise.all(
    Array.from({ length: concurrentWriters }, async (_, writer) => {
      for (let index = 0; index < perWriter; index += 1) {
        const started = performance.now();
        await collection.insertOne({ _id: `c-${writer}-${index}`, body });
        latencies.push(performance.now() - started);
      }
    }),
  );
  const mongoInsertConcurrent = summarize(latencies);
  await collection.drop().catch(() => undefined); // best effort
  return { fsync, jsPublish, mongoInsert, mongoInsertConcurrent, mongoFindById };
}

export type DocumentOps = {
  transitionBytes: number;
  runBytes: number;
  runCount: number;
  transitionCount: number;
  /** name → p50 ms */
  ops: Record<string, number | null>;
};

/**
 * The MongoDB operations of a step, with the real documents of a finished workload run (copied
 * into a scratch collection of the same database): what one commit costs on this server.
 * Also a page of each sweeper's query as it runs against the real work lists (read only).
 */
export async function measureDocumentOps(db: Db, runId: string, afterCreate: () => void = () => {}, count = 20): Promise<DocumentOps | undefined> {
  const transitions = db.collection<{ _id: string; [field: string]: any }>('run_transitions');
  const runs = db.collection<{ _id: string; [field: string]: any }>('runs');
  const run = await runs.findOne({ _id: runId });
  const transition = run ? await transitions.findOne({ _id: `${run._id}:${run.version}` }) : null;
  if (!run || !transition) return undefined;
  const scratchTransitions = db.collection<{ _id: string; [field: string]: any }>('bench_scratch_transitions');
  const scratchRuns = db.collection<{ _id: string; [field: string]: any }>('bench_scratch_runs');
  const { _id: _runId, ...runBody } = run;
  const { _id: _transitionId, ...transitionBody } = transition;
  const ops: Record<string, number | null> = {};
  await db.createCollection(scratchTransitions.collectionName).catch(() => undefined); // exists already: fine
  await db.createCollection(scratchRuns.collectionName).catch(() => undefined);
  afterCreate();
  try {
    ops['insertOne transition'] = (await timeEach(count, async (index) => void (await scratchTransitions.insertOne({ ...transitionBody, _id: `t-${index}` })))).p50;
    ops['findOne transition by _id'] = (await timeEach(count, async (index) => void (await scratchTransitions.findOne({ _id: `t-${index}` })))).p50;
    ops['findOne missing _id'] = (await timeEach(count, async (index) => void (await scratchTransitions.findOne({ _id: `none-${index}` })))).p50;
    ops['insertOne run'] = (await timeEach(count, async (index) => void (await scratchRuns.insertOne({ ...runBody, _id: `r-${index}` })))).p50;
    ops['replaceOne run {_id} (read model)'] = (await timeEach(count, async (index) => void (await scratchRuns.replaceOne({ _id: `r-${index}` }, runBody)))).p50;
    ops['updateOne deadline item {_id} $min, upsert'] = (await timeEach(count, async (index) => void (await scratchRuns.updateOne({ _id: `d-${index}` }, { $min: { dueAt: new Date().toISOString() }, $set: { kind: 'deadline', runId: `r-${index}`, tenantId: 't' } }, { upsert: true })))).p50;
    // The sweepers' own queries (read only) against the real work lists.
    const store = createRunStore(getCollections(db));
    ops['outbox sweep page (run_work)'] = (await timeEach(3, async () => void (await store.findDueWork('outbox', new Date().toISOString(), 200)))).p50;
    ops['deadline sweep page (run_deadlines)'] = (await timeEach(3, async () => void (await store.findDueWork('deadline', new Date().toISOString(), 200)))).p50;
  } finally {
    await scratchTransitions.drop().catch(() => undefined); // best effort
    await scratchRuns.drop().catch(() => undefined);
  }
  return {
    transitionBytes: JSON.stringify(transition).length,
    runBytes: JSON.stringify(run).length,
    runCount: await runs.countDocuments(),
    transitionCount: await transitions.countDocuments(),
    ops,
  };
}
