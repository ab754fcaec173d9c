import { describe, expect, it } from 'vitest';
import { Writable } from 'node:stream';
import { createLogger, createMetrics, createRunStore, type SweepCursor, type WorkItem } from '@abide/shared';
import { createWriteBatcher } from '@abide/shared/mongo';
import {
  createDeadlineSweep,
  createWorkWatermark,
  fullDeadlineSweepMs,
  createOutboxSweep,
  createRetentionSweep,
  deadlineSweepPageSize,
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

describe('deadline sweeper: a full page of due runs does not starve the rest', () => {
  it('sends a timer to every due run, past 500 runs whose deadlines stay due', async () => {
    const nowMs = Date.parse('2026-11-29T12:00:00.000Z');
    // 500 runs of one tenant with tiny deadlines that stay due (their runs are slow or stuck), then 20 others.
    const item = (runId: string, tenantId: string, dueAt: string): WorkItem => ({ _id: `deadline:${runId}`, kind: 'deadline', runId, tenantId, dueAt });
    const store = fakeWorkStore([
      ...Array.from({ length: deadlineSweepPageSize }, (_, index) => item(`run_a${String(index).padStart(4, '0')}`, 'tenant-evil', new Date(nowMs - 60_000).toISOString())),
      ...Array.from({ length: 20 }, (_, index) => item(`run_b${String(index).padStart(4, '0')}`, 'tenant-ok', new Date(nowMs - 1_000 + index).toISOString())),
      // Not due yet, and another kind of work: never timed.
      item('run_future', 'tenant-ok', new Date(nowMs + 60_000).toISOString()),
      { ...item('run_outbox', 'tenant-ok', new Date(nowMs - 60_000).toISOString()), _id: 'outbox:run_outbox', kind: 'outbox' },
    ]);
    const published: string[] = [];
    const { logger } = capturingLogger();
    const sweep = createDeadlineSweep({
      store,
      watermark: createWorkWatermark({ now: () => nowMs }),
      logger,
      now: () => nowMs,
      js: {
        async publish(subject: string) {
          if (subject.includes('run_a0007')) throw new Error('nats: timeout');
          published.push(subject);
          return { stream: 'RUN_INBOX', seq: published.length, duplicate: false, domain: '' };
        },
      } as never,
    });
    await sweep();
    expect(published).toHaveLength(deadlineSweepPageSize + 20 - 1);
    expect(published.filter((subject) => subject.includes('run_future') || subject.includes('run_outbox'))).toEqual([]);
    for (let index = 0; index < 20; index += 1) expect(published).toContain(`run.in.run_b${String(index).padStart(4, '0')}.timer`);
  });
});

describe('deadline sweeper: idle with many suspended runs, it does not read the database (issue 9, item 5)', () => {
  const t0 = Date.parse('2026-11-29T12:00:00.000Z');
  const item = (runId: string, dueAt: number): WorkItem => ({ _id: `deadline:${runId}`, kind: 'deadline', runId, tenantId: 't1', dueAt: new Date(dueAt).toISOString() });

  function setup(items: WorkItem[]) {
    let clock = t0;
    const store = fakeWorkStore(items);
    const watermark = createWorkWatermark({ now: () => clock });
    const timers: string[] = [];
    const sweep = createDeadlineSweep({
      store,
      watermark,
      logger: capturingLogger().logger,
      now: () => clock,
      js: {
        async publish(subject: string) {
          timers.push(subject);
          return { stream: 'RUN_INBOX', seq: timers.length, duplicate: false, domain: '' };
        },
      } as never,
    });
    return { store, watermark, timers, sweep, advance: (ms: number) => (clock += ms), now: () => clock };
  }

  it('skips every tick until the earliest deadline, then fires it on time', async () => {
    // 1,000 suspended runs whose approvals expire in an hour, one step deadline in 5 s.
    const { store, timers, sweep, advance } = setup([...Array.from({ length: 1_000 }, (_, index) => item(`run_${index}`, t0 + 3_600_000)), item('run_soon', t0 + 5_000)]);
    await sweep();
    expect(store.reads.due).toBe(1);
    for (let second = 1; second < 5; second += 1) {
      advance(1_000);
      await sweep();
    }
    expect(store.reads.due).toBe(1);
    expect(timers).toEqual([]);
    advance(1_000);
    await sweep();
    expect(timers).toEqual(['run.in.run_soon.timer']);
    expect(store.reads.due).toBe(2);
  });

  it('sweeps at once for a deadline this process writes earlier than the watermark, even one written during a sweep', async () => {
    const { store, watermark, timers, sweep, advance, now } = setup([item('run_late', t0 + 3_600_000)]);
    await sweep();
    advance(1_000);
    await sweep();
    expect(store.reads.due).toBe(1);
    // Written while a sweep is in flight (after its read): the sweep's end must keep it.
    const begun = watermark.begin();
    store.pending.set('deadline:run_new', item('run_new', now() + 2_000));
    watermark.written(new Date(now() + 2_000).toISOString());
    watermark.end(begun, false, new Date(t0 + 3_600_000).toISOString(), false);
    advance(2_000);
    await sweep();
    expect(timers).toEqual(['run.in.run_new.timer']);
  });

  it('still reads the whole list every minute, for deadlines other replicas wrote (and moves legacy items)', async () => {
    const { store, timers, sweep, advance, now } = setup([]);
    await sweep();
    expect(store.reads.legacy).toBe(1);
    // Another replica writes a deadline due in 10 s: this one does not know.
    store.pending.set('deadline:run_other', item('run_other', now() + 10_000));
    for (let elapsed = 1_000; elapsed < fullDeadlineSweepMs; elapsed += 1_000) {
      advance(1_000);
      await sweep();
    }
    expect(timers).toEqual([]);
    advance(1_000);
    await sweep();
    expect(timers).toEqual(['run.in.run_other.timer']);
    expect(store.reads.legacy).toBe(2);
  });

  it('sweeps again at the next tick while a timer waits for its retry', async () => {
    let failing = true;
    let clock = t0;
    const store = fakeWorkStore([item('run_a', t0 - 1)]);
    const sweep = createDeadlineSweep({
      store,
      watermark: createWorkWatermark({ now: () => clock }),
      logger: capturingLogger().logger,
      now: () => clock,
      js: {
        async publish() {
          if (failing) throw new Error('nats: timeout');
          return { stream: 'RUN_INBOX', seq: 1, duplicate: false, domain: '' };
        },
      } as never,
    });
    await sweep();
    failing = false;
    clock += itemRetryDelayMs(1) + 1;
    const before = store.reads.due;
    await sweep();
    expect(store.reads.due).toBe(before + 1);
  });
});

/* ---------- retention (issue 9, item 8) ---------- */

/** An in-memory collection with just what the run store's retention path uses (exact-`_id` reads and writes). */
function memoryCollection(documents: Record<string, unknown>[] = []) {
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
  const state = { runId, tenantId: 'tenant-a', status: 'completed', output: `output of ${runId}`, step: versions };
  const transitions = Array.from({ length: versions }, (_, index) => ({ _id: `${runId}:${index + 1}`, runId, tenantId: 'tenant-a', version: index + 1, state: { ...state, status: index + 1 === versions ? 'completed' : 'running' } }));
  return { readModel: { _id: runId, ...state, version: versions, lastSeq: 40, publishedVersion: versions, ...readModel }, transitions };
}

function retentionFixture(runs: ReturnType<typeof endedRun>[], items: WorkItem[]) {
  const runsCollection = memoryCollection(runs.map((run) => run.readModel));
  const transitions = memoryCollection(runs.flatMap((run) => run.transitions));
  const runStore = createRunStore({ runs: runsCollection, runTransitions: transitions, writes: { runs: createWriteBatcher(runsCollection as never), runTransitions: createWriteBatcher(transitions as never) } } as never);
  const work = fakeWorkStore(items);
  const store = {
    findDueWork: work.findDueWork,
    earliestDueAfter: work.earliestDueAfter,
    pruneRunHistory: runStore.pruneRunHistory,
    async deleteWork(id: string) {
      work.pending.delete(id);
    },
  };
  return { runsCollection, transitions, runStore, work, store };
}

const retentionItem = (runId: string, dueAt: string): WorkItem => ({ _id: `retention:${runId}`, kind: 'retention', runId, tenantId: 'tenant-a', dueAt });

describe('retention sweeper: an ended run keeps its summary, loses its history', () => {
  const nowMs = Date.parse('2026-11-30T12:00:00.000Z');
  const past = new Date(nowMs - 1_000).toISOString();

  it('deletes every transition of a due run by exact _id, marks the read model pruned and keeps its state, and deletes the item', async () => {
    const fixture = retentionFixture([endedRun('run_old', 7), endedRun('run_recent', 3)], [retentionItem('run_old', past), retentionItem('run_recent', new Date(nowMs + 60_000).toISOString())]);
    const metrics = createMetrics();
    const { logger } = capturingLogger();
    await createRetentionSweep({ store: fixture.store, watermark: createWorkWatermark({ now: () => nowMs }), logger, metrics, now: () => nowMs })();

    expect(fixture.transitions.deletesById).toEqual(Array.from({ length: 7 }, (_, index) => `run_old:${index + 1}`));
    expect([...fixture.transitions.byId.keys()]).toEqual(['run_recent:1', 'run_recent:2', 'run_recent:3']);
    expect(fixture.runsCollection.byId.get('run_old')).toMatchObject({ status: 'completed', output: 'output of run_old', version: 7, prunedAt: new Date(nowMs).toISOString() });
    expect(fixture.runsCollection.byId.get('run_recent')!.prunedAt).toBeUndefined();
    expect([...fixture.work.pending.keys()]).toEqual(['retention:run_recent']);
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
    await createRetentionSweep({ store: fixture.store, watermark: createWorkWatermark({ now: () => nowMs }), logger, now: () => nowMs })();
    expect(fixture.transitions.byId.size).toBe(0);
    // The first mark stands; nothing else about the summary changes.
    expect(fixture.runsCollection.byId.get('run_half')!.prunedAt).toBe(new Date(nowMs - 60_000).toISOString());
    expect(fixture.work.pending.size).toBe(0);
  });

  it('touches nothing while the read model does not record the end as published, and prunes on a later sweep once it does', async () => {
    const lagging = endedRun('run_lagging', 4, { status: 'running', version: 3, publishedVersion: 3 });
    const fixture = retentionFixture([lagging], [retentionItem('run_lagging', past)]);
    let clock = nowMs;
    const { lines, logger } = capturingLogger();
    const sweep = createRetentionSweep({ store: fixture.store, watermark: createWorkWatermark({ now: () => clock }), logger, now: () => clock });
    await sweep();
    expect(fixture.transitions.byId.size).toBe(4);
    expect(fixture.runsCollection.byId.get('run_lagging')!.prunedAt).toBeUndefined();
    expect(fixture.work.pending.has('retention:run_lagging')).toBe(true);
    expect(lines.some((line) => line.runId === 'run_lagging' && line.msg === 'could not prune an ended run; will retry')).toBe(true);

    // The terminal transition's read model lands (its settle wrote the item just before it).
    Object.assign(fixture.runsCollection.byId.get('run_lagging')!, { status: 'completed', version: 4, publishedVersion: 4 });
    clock += itemRetryDelayMs(1);
    await sweep();
    expect(fixture.transitions.byId.size).toBe(0);
    expect(fixture.work.pending.size).toBe(0);
  });

  it('drops the item of a run that left nothing behind', async () => {
    const fixture = retentionFixture([], [retentionItem('run_gone', past)]);
    const { logger } = capturingLogger();
    await createRetentionSweep({ store: fixture.store, watermark: createWorkWatermark({ now: () => nowMs }), logger, now: () => nowMs })();
    expect(fixture.work.pending.size).toBe(0);
  });
});
