import { describe, expect, it } from 'vitest';
import { MongoBulkWriteError, type Collection } from 'mongodb';
import type { Collections } from './mongo.ts';
import { memoryCollection, type MemoryCollection } from './testing/memory-collection.ts';
import { createWorkTimeline, timelineLateMs, timelineSlotOf, timelineSlotStart } from './work-timeline.ts';
import { createWriteBatcher } from './write-batcher.ts';
import type { WorkItem } from './run-store.ts';

const t0 = Date.parse('2026-11-30T12:00:00.000Z');

function timelineOver(collection: MemoryCollection, now: () => number) {
  const writes = { workTimeline: createWriteBatcher(collection as unknown as Collection<{ _id: string }>) };
  return createWorkTimeline({ workTimeline: collection, writes } as unknown as Pick<Collections, 'workTimeline' | 'writes'>, { now });
}

const item = (runId: string, dueAt: number): WorkItem & { kind: 'deadline' } => ({ _id: `deadline:${runId}`, kind: 'deadline', runId, tenantId: 't1', dueAt: new Date(dueAt).toISOString() });

describe('work timeline', () => {
  it('numbers a slot contiguously across two writers, and a reader reads the slot by _id until the first gap', async () => {
    const collection = memoryCollection();
    const first = timelineOver(collection, () => t0);
    const second = timelineOver(collection, () => t0);
    const dueAt = t0 + 60_000;
    // Interleaved and concurrent: the second writer's numbers collide with the first's and move on.
    await Promise.all([
      ...Array.from({ length: 20 }, (_, index) => first.schedule(item(`run_a${index}`, dueAt))),
      ...Array.from({ length: 20 }, (_, index) => second.schedule(item(`run_b${index}`, dueAt))),
    ]);
    const slot = timelineSlotOf(dueAt);
    expect([...collection.documents.keys()].sort()).toEqual(Array.from({ length: 40 }, (_, index) => `deadline/${slot}/${index}`).sort());
    const entries = await first.read('deadline', slot);
    expect(entries.map((entry) => entry.runId).sort()).toEqual([...Array.from({ length: 20 }, (_, index) => `run_a${index}`), ...Array.from({ length: 20 }, (_, index) => `run_b${index}`)].sort());
    // An empty slot costs one read.
    collection.reads.length = 0;
    expect(await first.read('deadline', slot + 1)).toEqual([]);
    expect(collection.reads).toEqual([`deadline/${slot + 1}/0`]);
  });

  it('an item already due goes into the current slot; an entry that lands after its slot was over is written again into the current one', async () => {
    const collection = memoryCollection();
    let clock = t0;
    const timeline = timelineOver(collection, () => clock);
    await timeline.schedule(item('run_overdue', t0 - 600_000));
    expect(collection.documents.has(`deadline/${timelineSlotOf(t0)}/0`)).toBe(true);

    // A write whose insert completes late (a stalled process): the slot it aimed at may have been read.
    const aimed = timelineSlotOf(clock);
    const bulkWrite = collection.bulkWrite.bind(collection);
    collection.bulkWrite = async (operations) => {
      const result = await bulkWrite(operations);
      clock = timelineSlotStart(aimed + 1) + timelineLateMs + 500;
      collection.bulkWrite = bulkWrite;
      return result;
    };
    await timeline.schedule(item('run_slow', clock));
    expect((await timeline.read('deadline', aimed)).map((entry) => entry.runId)).toEqual(['run_overdue', 'run_slow']);
    expect((await timeline.read('deadline', timelineSlotOf(clock))).map((entry) => entry.runId)).toEqual(['run_slow']);
  });

  it('reports the entries above a failed insert failed, and the next write fills the gap, so every entry reported written is reachable', async () => {
    const collection = memoryCollection();
    const timeline = timelineOver(collection, () => t0);
    const dueAt = t0 + 60_000;
    const slot = timelineSlotOf(dueAt);
    const bulkWrite = collection.bulkWrite.bind(collection);
    // Number 1's insert fails (not a duplicate), once; the others of its command land.
    let failed = false;
    collection.bulkWrite = async (operations) => {
      const failing = failed ? -1 : operations.findIndex((operation) => 'insertOne' in operation && operation.insertOne.document._id === `deadline/${slot}/1`);
      if (failing === -1) return bulkWrite(operations);
      failed = true;
      await bulkWrite(operations.filter((_, index) => index !== failing));
      throw Object.assign(Object.create(MongoBulkWriteError.prototype) as MongoBulkWriteError, { writeErrors: [{ index: failing, code: 91, errmsg: 'shutting down' }] });
    };
    const outcomes = await Promise.allSettled([0, 1, 2].map((index) => timeline.schedule(item(`run_${index}`, dueAt))));
    expect(outcomes.map((outcome) => outcome.status)).toEqual(['fulfilled', 'rejected', 'rejected']);
    // The caller of run_1 writes again: it takes the gap's number, and the stale run_2 entry becomes reachable.
    await timeline.schedule(item('run_1', dueAt));
    expect((await timeline.read('deadline', slot)).map((entry) => entry.runId)).toEqual(['run_0', 'run_1', 'run_2']);
  });

  it('clears a slot highest first, so a reader racing it (or a crash during it) sees a prefix', async () => {
    const collection = memoryCollection();
    const timeline = timelineOver(collection, () => t0);
    await Promise.all([0, 1, 2].map((index) => timeline.schedule(item(`run_${index}`, t0 + 60_000))));
    const slot = timelineSlotOf(t0 + 60_000);
    const deletes: string[] = [];
    const bulkWrite = collection.bulkWrite.bind(collection);
    collection.bulkWrite = async (operations) => {
      for (const operation of operations) if ('deleteOne' in operation) deletes.push(String(operation.deleteOne.filter._id));
      return bulkWrite(operations);
    };
    await timeline.clear('deadline', slot, 3);
    expect(deletes).toEqual([`deadline/${slot}/2`, `deadline/${slot}/1`, `deadline/${slot}/0`]);
    expect(collection.documents.size).toBe(0);
  });
});
