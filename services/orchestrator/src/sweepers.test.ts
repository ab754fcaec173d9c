import { describe, expect, it } from 'vitest';
import { Writable } from 'node:stream';
import { createLogger, createMetrics, createRunStore, timelineSlotMs, timelineSlotOf, type SweepCursor, type WorkItem } from '@abide/shared';
import { memoryCollection, type MemoryCollection } from '@abide/shared/testing';
import { createWriteBatcher } from '@abide/shared/mongo';
import {
  createDeadlineSweep,
  createOutboxSweep,
  createRetentionSweep,
  itemRetryDelayMs,
  maxSweepIntervalMs,
  nextSweepDelay,
  outboxSweepPageSize,
  sweepDutyFactor,
} from './sweepers.ts';

describe('sweep pacing', () => {
  it('sweeps every interval while sweeps are fast', () => {
    expect(nextSweepDelay(2_000, 0)).toBe(2_000);
    expect(nextSweepDelay(2_000, 50)).toBe(2_000);
  });

  it('stretches the pause after a slow sweep (a collection scan on FerretDB), up to a cap', () => {
    expect(nextSweepDelay(2_000, 500)).toBe(500 * sweepDutyFactor);
    expect(nextSweepDelay(1_000, 30_000)).toBe(maxSweepIntervalMs);
  });

  it('never sweeps less often than a configured interval longer than the cap', () => {
    expect(nextSweepDelay(120_000, 10_000)).toBe(120_000);
  });

  it('paces by the time the queries took, not by a slow publish (a NATS election must not hold the next sweep back)', async () => {
    let clock = 1_000_000;
    const store = fakeWorkStore(unpublished(3));
    const sweep = createOutboxSweep({
      store: {
        async findDueWork(...args: Parameters<typeof store.findDueWork>) {
          clock += 40; // the query
          return store.findDueWork(...args);
        },
      },
      processor: {
        async republish(item) {
          clock += 8_000; // a publish waiting out an election
          store.pending.delete(item._id);
        },
      },
      logger: capturingLogger().logger,
      now: () => clock,
    });
    const queryMs = await sweep();
    expect(store.pending.size).toBe(0);
    expect(queryMs).toBe(40);
    expect(nextSweepDelay(2_000, queryMs)).toBe(2_000);
  });

  it('retries a failed item within 30 s at most, however often it failed', () => {
    expect(itemRetryDelayMs(1)).toBe(2_000);
    expect(itemRetryDelayMs(3)).toBe(8_000);
    expect(itemRetryDelayMs(20)).toBe(30_000);
  });
});

/* ---------- failure isolation and paging (issue 8, finding 5) ---------- */


function capturingLogger() {
  const lines: Record<string, unknown>[] = [];
  const destination = new Writable({
    write(chunk, _encoding, done) {
      lines.push(JSON.parse(String(chunk)));
      done();
    },
  });
  return { lines, logger: createLogger('orchestrator', 'info', destination) };
}

function unpublished(count: number): WorkItem[] {
  return Array.from({ length: count }, (_, index) => {
    const runId = `run_${String(index).padStart(4, '0')}`;
    return { _id: `outbox:${runId}`, kind: 'outbox', runId, tenantId: index < 3 ? 'tenant-evil' : 'tenant-ok', dueAt: new Date(1_000 + index).toISOString() };
  });
}

/** An in-memory `findDueWork` with the store's order and cursor semantics; finished items leave. */
function fakeWorkStore(items: WorkItem[]) {
  const pending = new Map(items.map((item) => [item._id, item]));
  const reads = { due: 0, earliest: 0, legacy: 0 };
  return {
    pending,
    reads,
    async earliestDueAfter(kind: WorkItem['kind'], afterIso: string) {
      reads.earliest += 1;
      const later = [...pending.values()].filter((item) => item.kind === kind && item.dueAt > afterIso).map((item) => item.dueAt);
      return later.length > 0 ? later.sort()[0]! : null;
    },
    async moveLegacyDeadlines() {
      reads.legacy += 1;
      return 0;
    },
    async findDueWork(kind: WorkItem['kind'], nowIso: string, limit: number, after?: SweepCursor) {
      reads.due += 1;
      return [...pending.values()]
        .filter((item) => item.kind === kind && item.dueAt <= nowIso)
        .sort((a, b) => a.dueAt.localeCompare(b.dueAt) || a._id.localeCompare(b._id))
        .filter((item) => !after || item.dueAt > after.key || (item.dueAt === after.key && item._id > after.id))
        .slice(0, limit);
    },
  };
}

describe('outbox sweeper: one failing transition never blocks the others', () => {
  it('publishes every other transition, logs and counts the failures with their runId, and retries them after a backoff', async () => {
    // The three oldest can never publish (e.g. committed before the size check existed); 450 others wait behind them (3 pages).
    const transitions = unpublished(453);
    const store = fakeWorkStore(transitions);
    const attempts = new Map<string, number>();
    let clock = 1_000_000;
    const { lines, logger } = capturingLogger();
    const metrics = createMetrics();
    const sweep = createOutboxSweep({
      store,
      logger,
      metrics,
      now: () => clock,
      processor: {
        async republish(transition) {
          attempts.set(transition._id, (attempts.get(transition._id) ?? 0) + 1);
          if (transition.tenantId === 'tenant-evil') throw new Error('maximum payload exceeded');
          store.pending.delete(transition._id);
        },
      },
    });
    await sweep();
    expect([...store.pending.keys()]).toEqual(['outbox:run_0000', 'outbox:run_0001', 'outbox:run_0002']);
    expect(attempts.size).toBe(453);
    const failures = lines.filter((line) => line.msg === 'could not publish an unpublished outbox; will retry');
    expect(failures.map((line) => line.runId)).toEqual(['run_0000', 'run_0001', 'run_0002']);
    expect(await metrics.render()).toContain('abide_outbox_republish_failures_total 3');

    // Within the backoff the failing ones are not tried again; after it, they are.
    await sweep();
    expect(attempts.get('outbox:run_0000')).toBe(1);
    clock += itemRetryDelayMs(1) + 1;
    await sweep();
    expect(attempts.get('outbox:run_0000')).toBe(2);
    expect(await metrics.render()).toContain('abide_outbox_republish_failures_total 6');
  });

  it('pages past a full page of failing transitions', async () => {
    const transitions = unpublished(outboxSweepPageSize + 10).map((transition) => ({ ...transition, tenantId: 'tenant-evil' }));
    transitions.at(-1)!.tenantId = 'tenant-ok';
    const store = fakeWorkStore(transitions);
    const { logger } = capturingLogger();
    const sweep = createOutboxSweep({
      store,
      logger,
      now: () => 1_000_000,
      processor: {
        async republish(transition) {
          if (transition.tenantId === 'tenant-evil') throw new Error('cannot publish');
          store.pending.delete(transition._id);
        },
      },
    });
    await sweep();
    expect(store.pending.has(transitions.at(-1)!._id)).toBe(false);
  });
});

/* ---------- the work timeline (issue 9, item 5) ---------- */

/** A run store's work lists and timeline over memory: the real store code (`createRunStore`) on fake collections. */
function timelineFixture(clock: () => number) {
  const collections = { runDeadlines: memoryCollection(), runRetention: memoryCollection(), runWork: memoryCollection(), workTimeline: memoryCollection() };
  const batcher = (collection: MemoryCollection) => createWriteBatcher(collection as never);
  const writes = { runDeadlines: batcher(collections.runDeadlines), runRetention: batcher(collections.runRetention), runWork: batcher(collections.runWork), workTimeline: batcher(collections.workTimeline) };
  const store = createRunStore({ ...collections, writes } as never, { now: clock });
  /** Reads of the item lists (what used to be scanned). */
  const itemReads = () => collections.runDeadlines.reads.length + collections.runRetention.reads.length;
  return { collections, store, itemReads };
}

function deadlineSetup(options: { failPublish?: (subject: string) => boolean } = {}) {
  let clock = Date.parse('2026-11-29T12:00:00.000Z');
  const fixture = timelineFixture(() => clock);
  const timers: string[] = [];
  const { lines, logger } = capturingLogger();
  const metrics = createMetrics({ processMetrics: false });
  const sweep = createDeadlineSweep({
    store: fixture.store,
    logger,
    metrics,
    now: () => clock,
    js: {
      async publish(subject: string) {
        if (options.failPublish?.(subject)) throw new Error('nats: timeout');
        timers.push(subject);
        return { stream: 'RUN_INBOX', seq: timers.length, duplicate: false, domain: '' };
      },
    } as never,
  });
  /** Ticks once a second for `seconds`, like `every`. */
  const run = async (seconds: number) => {
    for (let tick = 0; tick < seconds; tick += 1) {
      clock += 1_000;
      await sweep();
    }
  };
  return { ...fixture, timers, lines, metrics, sweep, run, now: () => clock, at: (offsetMs: number) => new Date(clock + offsetMs).toISOString() };
}

describe('deadline sweeper: the work timeline (issue 9, item 5)', () => {
  it('idle with 1,000 suspended runs, reads one timeline _id per slot and never the deadline list', async () => {
    const setup = deadlineSetup();
    await setup.sweep(); // the first tick indexes the (empty) list and records the cursor
    for (let index = 0; index < 1_000; index += 1) await setup.store.lowerDeadline(`run_${index}`, 't1', setup.at(3_600_000));
    setup.collections.workTimeline.reads.length = 0;
    const listReads = setup.itemReads();
    await setup.run(60);
    expect(setup.timers).toEqual([]);
    expect(setup.itemReads()).toBe(listReads);
    // 30 slots of 2 s went by: at most one read (a miss) each; the cursor's record is a write.
    expect(setup.collections.workTimeline.reads.length).toBeGreaterThan(0);
    expect(setup.collections.workTimeline.reads.length).toBeLessThanOrEqual(60_000 / timelineSlotMs);
  });

  it('fires a deadline whatever replica wrote it, within a few seconds, and once', async () => {
    const setup = deadlineSetup();
    await setup.sweep();
    // Another replica's store writes into the same collections (the timeline numbers continue).
    const other = createRunStore({ ...setup.collections, writes: { runDeadlines: createWriteBatcher(setup.collections.runDeadlines as never), workTimeline: createWriteBatcher(setup.collections.workTimeline as never) } } as never, { now: setup.now });
    await other.lowerDeadline('run_other', 't1', setup.at(10_000));
    await setup.store.lowerDeadline('run_mine', 't1', setup.at(10_500));
    await setup.run(9);
    expect(setup.timers).toEqual([]);
    await setup.run(7);
    expect(setup.timers.sort()).toEqual(['run.in.run_mine.timer', 'run.in.run_other.timer']);
    // The slot's entries are gone once handled; nothing fires twice.
    await setup.run(10);
    expect(setup.timers).toHaveLength(2);
    expect([...setup.collections.workTimeline.documents.keys()]).toEqual(['deadline/cursor']);
  });

  it('skips an entry whose item moved later or went away, and fires the moved one at its new time', async () => {
    const setup = deadlineSetup();
    await setup.sweep();
    await setup.store.lowerDeadline('run_moved', 't1', setup.at(5_000));
    await setup.store.lowerDeadline('run_ended', 't1', setup.at(5_000));
    await setup.store.writeDeadline('run_moved', 't1', setup.at(60_000)); // the stale-timer path
    await setup.store.writeDeadline('run_ended', 't1', null);
    await setup.run(30);
    expect(setup.timers).toEqual([]);
    await setup.run(40);
    expect(setup.timers).toEqual(['run.in.run_moved.timer']);
  });

  it('indexes the stored items once when no cursor is recorded (a new database, or items an older version wrote), and fires the due ones', async () => {
    const setup = deadlineSetup();
    const item = (runId: string, dueAt: string): WorkItem => ({ _id: `deadline:${runId}`, kind: 'deadline', runId, tenantId: 't1', dueAt });
    await setup.collections.runDeadlines.insertOne(item('run_overdue', setup.at(-600_000)));
    await setup.collections.runDeadlines.insertOne(item('run_later', setup.at(20_000)));
    await setup.run(6);
    expect(setup.timers).toEqual(['run.in.run_overdue.timer']);
    await setup.run(20);
    expect(setup.timers).toEqual(['run.in.run_overdue.timer', 'run.in.run_later.timer']);
  });

  it('a replica that starts reads on from the recorded cursor: a deadline due while none ran still fires', async () => {
    const setup = deadlineSetup();
    await setup.sweep();
    await setup.store.lowerDeadline('run_a', 't1', setup.at(45_000));
    await setup.run(35); // the cursor is recorded (every 30 s), then the replica dies
    const cursor = setup.collections.workTimeline.documents.get('deadline/cursor')!.slot as number;
    expect(cursor).toBeGreaterThan(timelineSlotOf(setup.now()) - 10);
    // Nothing runs for ten minutes; then a new replica starts.
    let clock = setup.now() + 600_000;
    const timers: string[] = [];
    const restarted = createDeadlineSweep({
      store: setup.store,
      logger: capturingLogger().logger,
      now: () => clock,
      js: { async publish(subject: string) { timers.push(subject); return { stream: 'RUN_INBOX', seq: 1, duplicate: false, domain: '' }; } } as never,
    });
    await restarted();
    expect(timers).toEqual(['run.in.run_a.timer']);
  });

  it('keeps the slot of a timer that failed, retries it with backoff, fires the others, and reports it overdue after a minute', async () => {
    let failing = true;
    const setup = deadlineSetup({ failPublish: (subject) => failing && subject.includes('run_bad') });
    await setup.sweep();
    const dueAt = Date.parse(setup.at(2_000));
    await setup.store.lowerDeadline('run_bad', 't1', setup.at(2_000));
    await setup.store.lowerDeadline('run_good', 't1', setup.at(2_000));
    await setup.run(8);
    expect(setup.timers).toEqual(['run.in.run_good.timer']);
    expect(setup.lines.filter((line) => line.msg === 'could not send a deadline timer; will retry').map((line) => line.runId)).toEqual(['run_bad']);
    expect(await setup.metrics.render()).toContain('abide_deadline_timer_failures_total 1');
    expect(setup.sweep.oldestPendingDueAt()).toBe(dueAt);
    await setup.run(70);
    expect(setup.timers).toEqual(['run.in.run_good.timer']);
    failing = false;
    await setup.run(31);
    expect(setup.timers).toEqual(['run.in.run_good.timer', 'run.in.run_bad.timer']);
    expect(setup.sweep.oldestPendingDueAt()).toBeNull();
  });
});

/* ---------- retention (issue 9, item 8) ---------- */

/** An in-memory collection with just what the run store's retention path uses (exact-`_id` reads and writes). */
function retentionCollection(documents: Record<string, unknown>[] = []) {
  const byId = new Map(documents.map((document) => [document._id as string, structuredClone(document)]));
  const deletesById: string[] = [];
  return {
    byId,
    deletesById,
    async findOne(filter: { _id: string }) {
      const found = byId.get(filter._id);
      return found ? structuredClone(found) : null;
    },
    async bulkWrite(operations: ({ deleteOne: { filter: Record<string, unknown> } } | { replaceOne: { filter: Record<string, unknown>; replacement: Record<string, unknown>; upsert: boolean } })[]) {
      for (const operation of operations) {
        // The store must write by exact `_id` only: FerretDB scans for anything else.
        if ('replaceOne' in operation) {
          expect(Object.keys(operation.replaceOne.filter)).toEqual(['_id']);
          const id = operation.replaceOne.filter._id as string;
          if (byId.has(id) || operation.replaceOne.upsert) byId.set(id, { ...structuredClone(operation.replaceOne.replacement), _id: id });
          continue;
        }
        const { deleteOne } = operation;
        expect(Object.keys(deleteOne.filter)).toEqual(['_id']);
        expect(typeof deleteOne.filter._id).toBe('string');
        deletesById.push(deleteOne.filter._id as string);
        byId.delete(deleteOne.filter._id as string);
      }
      return {};
    },
  };
}

function endedRun(runId: string, versions: number, readModel: Partial<Record<string, unknown>> = {}) {
  // Stored whole, as older code wrote transitions (their agent embedded).
  const state = { runId, tenantId: 'tenant-a', agentSnapshot: { tenantId: 'tenant-a', agentId: 'agent', version: 1 }, status: 'completed', output: `output of ${runId}`, step: versions };
  const transitions = Array.from({ length: versions }, (_, index) => ({ _id: `${runId}:${index + 1}`, runId, tenantId: 'tenant-a', version: index + 1, state: { ...state, status: index + 1 === versions ? 'completed' : 'running' } }));
  return { readModel: { _id: runId, ...state, version: versions, lastSeq: 40, publishedVersion: versions, ...readModel }, transitions };
}

function retentionFixture(runs: ReturnType<typeof endedRun>[], items: WorkItem[]) {
  const runsCollection = retentionCollection(runs.map((run) => run.readModel));
  const transitions = retentionCollection(runs.flatMap((run) => run.transitions));
  let clock = 0;
  const work = timelineFixture(() => clock);
  for (const item of items) work.collections.runRetention.documents.set(item._id, structuredClone(item));
  const runStore = createRunStore({ runs: runsCollection, runTransitions: transitions, writes: { runs: createWriteBatcher(runsCollection as never), runTransitions: createWriteBatcher(transitions as never) } } as never);
  const store = { timeline: work.store.timeline, loadWork: work.store.loadWork, indexWork: work.store.indexWork, deleteWork: work.store.deleteWork, pruneRunHistory: runStore.pruneRunHistory };
  /** The retention items left. */
  const pending = () => [...work.collections.runRetention.documents.keys()];
  /** One retention sweeper; `at(ms)` runs a tick at that time (its first tick indexes the items and records the cursor). */
  const sweeper = (options: { metrics?: ReturnType<typeof createMetrics>; logger?: ReturnType<typeof capturingLogger>['logger'] } = {}) => {
    const sweep = createRetentionSweep({ store, logger: options.logger ?? capturingLogger().logger, ...(options.metrics ? { metrics: options.metrics } : {}), now: () => clock });
    return {
      async at(ms: number) {
        clock = ms;
        await sweep();
      },
    };
  };
  return { runsCollection, transitions, runStore, pending, sweeper };
}

const retentionItem = (runId: string, dueAt: string): WorkItem => ({ _id: `retention:${runId}`, kind: 'retention', runId, tenantId: 'tenant-a', dueAt });

describe('retention sweeper: an ended run keeps its summary, loses its history', () => {
  const nowMs = Date.parse('2026-11-30T12:00:00.000Z');
  const past = new Date(nowMs - 10_000).toISOString();
  /** Index at `nowMs - 6 s`, then the tick at `nowMs` reads the slots the past items fall in. */
  const sweepOnce = async (fixture: ReturnType<typeof retentionFixture>, options: Parameters<ReturnType<typeof retentionFixture>['sweeper']>[0] = {}) => {
    const sweeper = fixture.sweeper(options);
    await sweeper.at(nowMs - 6_000);
    await sweeper.at(nowMs);
    return sweeper;
  };

  it('deletes every transition of a due run by exact _id, marks the read model pruned and keeps its state, and deletes the item', async () => {
    const fixture = retentionFixture([endedRun('run_old', 7), endedRun('run_recent', 3)], [retentionItem('run_old', past), retentionItem('run_recent', new Date(nowMs + 60_000).toISOString())]);
    const metrics = createMetrics();
    const { logger } = capturingLogger();
    await sweepOnce(fixture, { metrics, logger });

    expect(fixture.transitions.deletesById).toEqual(Array.from({ length: 7 }, (_, index) => `run_old:${index + 1}`));
    expect([...fixture.transitions.byId.keys()]).toEqual(['run_recent:1', 'run_recent:2', 'run_recent:3']);
    expect(fixture.runsCollection.byId.get('run_old')).toMatchObject({ status: 'completed', output: 'output of run_old', version: 7, prunedAt: new Date(nowMs).toISOString() });
    expect(fixture.runsCollection.byId.get('run_recent')!.prunedAt).toBeUndefined();
    expect(fixture.pending()).toEqual(['retention:run_recent']);
    expect(await metrics.render()).toContain('abide_runs_pruned_total 1');

    // Readers take the summary as the run's final state: no transition left to roll through.
    const latest = await fixture.runStore.loadLatest('run_old');
    expect(latest).toMatchObject({ pruned: true, lastSeq: 40, transition: { version: 7, published: true, outbox: [], state: { status: 'completed', output: 'output of run_old' } } });
  });

  it('finishes a run a crashed sweep left partly pruned (marked, some transitions gone, item still there)', async () => {
    const run = endedRun('run_half', 5, { prunedAt: new Date(nowMs - 60_000).toISOString() });
    run.transitions.splice(0, 2);
    const fixture = retentionFixture([run], [retentionItem('run_half', past)]);
    const { logger } = capturingLogger();
    await sweepOnce(fixture, { logger });
    expect(fixture.transitions.byId.size).toBe(0);
    // The first mark stands; nothing else about the summary changes.
    expect(fixture.runsCollection.byId.get('run_half')!.prunedAt).toBe(new Date(nowMs - 60_000).toISOString());
    expect(fixture.pending()).toEqual([]);
  });

  it('touches nothing while the read model does not record the end as published, and prunes on a later sweep once it does', async () => {
    const lagging = endedRun('run_lagging', 4, { status: 'running', version: 3, publishedVersion: 3 });
    const fixture = retentionFixture([lagging], [retentionItem('run_lagging', past)]);
    const { lines, logger } = capturingLogger();
    const sweeper = await sweepOnce(fixture, { logger });
    expect(fixture.transitions.byId.size).toBe(4);
    expect(fixture.runsCollection.byId.get('run_lagging')!.prunedAt).toBeUndefined();
    expect(fixture.pending()).toEqual(['retention:run_lagging']);
    expect(lines.some((line) => line.runId === 'run_lagging' && line.msg === 'could not prune an ended run; will retry')).toBe(true);

    // The terminal transition's read model lands (its settle wrote the item just before it).
    Object.assign(fixture.runsCollection.byId.get('run_lagging')!, { status: 'completed', version: 4, publishedVersion: 4 });
    await sweeper.at(nowMs + itemRetryDelayMs(1));
    expect(fixture.transitions.byId.size).toBe(0);
    expect(fixture.pending()).toEqual([]);
  });

  it('drops the item of a run that left nothing behind', async () => {
    const fixture = retentionFixture([], [retentionItem('run_gone', past)]);
    const { logger } = capturingLogger();
    await sweepOnce(fixture, { logger });
    expect(fixture.pending()).toEqual([]);
  });
});
