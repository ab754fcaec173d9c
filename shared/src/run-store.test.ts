import { describe, expect, it } from 'vitest';
import { MongoBulkWriteError, type AnyBulkWriteOperation, type Collection } from 'mongodb';
import type { Collections } from './mongo.ts';
import { testRunState } from './testing/run-state.ts';
import { createWriteBatcher } from './write-batcher.ts';
import type { RunState } from './run-state.ts';
import { createRunStore, readModelSummary, TransitionConflictError, transitionId, type RunDocument, type TransitionDocument } from './run-store.ts';

const at = '2026-11-30T00:00:00.000Z';

/** Whether `document` passes `filter`: `_id` and the operators the run store's ordered writes use (`$not` of `$gt` / `$gte`, which a missing field passes). */
function matches(document: Record<string, unknown>, filter: Record<string, unknown>): boolean {
  return Object.entries(filter).every(([field, condition]) => {
    if (field === '_id') return document._id === condition;
    const not = (condition as { $not: { $gt?: number; $gte?: number } }).$not;
    const value = document[field];
    if (typeof value !== 'number') return true;
    if (not.$gt !== undefined) return !(value > not.$gt);
    if (not.$gte !== undefined) return !(value >= not.$gte);
    throw new Error(`unsupported filter ${JSON.stringify(condition)}`);
  });
}

/** An in-memory collection with what the run store uses: by-`_id` reads (projections ignored), inserts that refuse a duplicate `_id`. */
function memoryCollection() {
  const documents = new Map<string, Record<string, unknown>>();
  const reads: string[] = [];
  return {
    documents,
    reads,
    async findOne(filter: { _id: string }) {
      reads.push(filter._id);
      const found = documents.get(filter._id);
      return found ? structuredClone(found) : null;
    },
    async insertOne(document: { _id: string }) {
      if (documents.has(document._id)) throw Object.assign(new Error('E11000 duplicate key'), { code: 11000 });
      documents.set(document._id, structuredClone(document));
      return { acknowledged: true };
    },
    async replaceOne(filter: { _id: string }, document: Record<string, unknown>) {
      if (!documents.has(filter._id)) return { matchedCount: 0 };
      documents.set(filter._id, structuredClone(document));
      return { matchedCount: 1 };
    },
    /** What the write batcher sends: per-write duplicate errors by index, the other writes applied. */
    async bulkWrite(operations: AnyBulkWriteOperation<{ _id: string }>[]) {
      const writeErrors: { index: number; code: number; errmsg: string }[] = [];
      operations.forEach((operation, index) => {
        if ('insertOne' in operation) {
          const document = operation.insertOne.document as { _id: string };
          if (documents.has(document._id)) writeErrors.push({ index, code: 11000, errmsg: 'E11000 duplicate key' });
          else documents.set(document._id, structuredClone(document));
        } else if ('replaceOne' in operation) {
          const id = String(operation.replaceOne.filter._id);
          const stored = documents.get(id);
          // As MongoDB and FerretDB do: a stored document the filter refuses makes an upsert's insert meet its `_id`.
          if (stored && !matches(stored, operation.replaceOne.filter)) {
            if (operation.replaceOne.upsert) writeErrors.push({ index, code: 11000, errmsg: 'E11000 duplicate key' });
          } else if (stored || operation.replaceOne.upsert) documents.set(id, { ...structuredClone(operation.replaceOne.replacement), _id: id });
        } else if ('deleteOne' in operation) {
          const id = String(operation.deleteOne.filter._id);
          const stored = documents.get(id);
          if (stored && matches(stored, operation.deleteOne.filter)) documents.delete(id);
        }
      });
      if (writeErrors.length > 0) throw Object.assign(Object.create(MongoBulkWriteError.prototype) as MongoBulkWriteError, { writeErrors });
      return {};
    },
  };
}

/** The run store's collections over memory, with the write batchers `getCollections` would build. */
function memoryCollections(parts: { runs: ReturnType<typeof memoryCollection>; runTransitions: ReturnType<typeof memoryCollection>; runWork: ReturnType<typeof memoryCollection>; runDeadlines: ReturnType<typeof memoryCollection> }): Collections {
  const batcher = (collection: ReturnType<typeof memoryCollection>) => createWriteBatcher(collection as unknown as Collection<{ _id: string }>);
  return { ...parts, writes: { runs: batcher(parts.runs), runTransitions: batcher(parts.runTransitions), runWork: batcher(parts.runWork), runDeadlines: batcher(parts.runDeadlines) } } as unknown as Collections;
}

function initialState(): RunState {
  return testRunState({ status: 'running', awaiting: { kind: 'llm', step: 0 }, metadata: { 'a.b': 1 } }, { at, agentVersion: 2 });
}

const transitionOf = (state: RunState, version: number): TransitionDocument => ({
  _id: transitionId(state.runId, version),
  runId: state.runId,
  tenantId: state.tenantId,
  version,
  at: new Date(at),
  cause: `m${version}`,
  state,
  outbox: [],
  published: false,
});

/** The state after `version`: one message appended per version, a tool call every tenth. */
function stateAt(version: number): RunState {
  const state = initialState();
  for (let index = 2; index <= version; index += 1) {
    state.step = index;
    state.messages = [...state.messages, { role: 'assistant', content: `message ${index}` }];
    if (index % 10 === 0) state.toolCalls = [...state.toolCalls, { toolCallId: `c${index}`, providerToolCallId: `p${index}`, step: index, toolName: 'echo', args: { '$x': index }, needsApproval: false, state: 'requested' }];
  }
  return state;
}

function harness() {
  const runs = memoryCollection();
  const runTransitions = memoryCollection();
  const runDeadlines = memoryCollection();
  const watermark: string[] = [];
  const store = createRunStore(memoryCollections({ runs, runTransitions, runWork: memoryCollection(), runDeadlines }), { onWorkWritten: (_kind, dueAt) => watermark.push(dueAt) });
  return { runs, runTransitions, runDeadlines, watermark, store };
}

describe('run store: transitions as deltas', () => {
  it('stores bases every 128 versions and deltas between, and a cold load reads only from the last base', async () => {
    const { runTransitions, store } = harness();
    await store.commit(transitionOf(stateAt(1), 1), null);
    for (let version = 2; version <= 300; version += 1) await store.commit(transitionOf(stateAt(version), version), stateAt(version - 1));
    const bases = [...runTransitions.documents.values()].filter((document) => document.state !== undefined).map((document) => document.version);
    expect(bases).toEqual([1, 129, 257]);
    expect(runTransitions.documents.get('run_1:200')!.delta).toBeDefined();

    runTransitions.reads.length = 0;
    const loaded = await store.loadVersion('run_1', 300);
    expect(loaded!.state).toEqual(stateAt(300));
    expect(runTransitions.reads).toHaveLength(300 - 257 + 1);
    expect(Math.min(...runTransitions.reads.map((id) => Number(id.split(':')[1])))).toBe(257);

    // Rolled forward from the read model (which lags) to the latest, folding each delta.
    const latest = await store.loadLatest('run_1');
    expect(latest!.transition.version).toBe(300);
    expect(latest!.transition.state).toEqual(stateAt(300));
  });

  it('loses a commit race without leaving anything, and loads transitions older code stored whole', async () => {
    const { runTransitions, store } = harness();
    // Versions 1..3 as older code wrote them: the whole state in each.
    for (let version = 1; version <= 3; version += 1) await runTransitions.insertOne({ ...transitionOf(stateAt(version), version) });
    await store.commit(transitionOf(stateAt(4), 4), stateAt(3));
    const before = structuredClone(runTransitions.documents.get('run_1:4'));
    await expect(store.commit(transitionOf(stateAt(5), 4), stateAt(3))).rejects.toBeInstanceOf(TransitionConflictError);
    expect(runTransitions.documents.get('run_1:4')).toEqual(before);
    expect((await store.loadLatest('run_1'))!.transition.state).toEqual(stateAt(4));
  });

  it('rolls the read model summary forward by deltas', async () => {
    const { runs, store } = harness();
    await store.commit(transitionOf(stateAt(1), 1), null);
    await store.writeReadModel({ ...transitionOf(stateAt(1), 1), published: true }, null);
    for (let version = 2; version <= 12; version += 1) await store.commit(transitionOf(stateAt(version), version), stateAt(version - 1));
    const readModel = runs.documents.get('run_1') as unknown as RunDocument;
    expect(readModel).not.toHaveProperty('messages');
    expect(readModel).not.toHaveProperty('agentSnapshot');
    const summary = await store.rollSummaryForward('run_1', readModelSummary(readModel));
    expect(summary).toMatchObject({ version: 12, published: false, state: { step: 12, agentVersion: 2, toolCalls: [], metadata: { 'a.b': 1 } } });
    expect(summary.state).not.toHaveProperty('messages');
  });
});

describe('run store: version-ordered writes of the read model and the deadline item', () => {
  const published = (version: number) => ({ ...transitionOf(stateAt(version), version), published: true });
  const stored = (runs: ReturnType<typeof memoryCollection>) => {
    const document = runs.documents.get('run_1') as { version: number; publishedVersion: number };
    return { version: document.version, publishedVersion: document.publishedVersion };
  };

  it('writes a read model only over an older one, and says when a newer one is there', async () => {
    const { runs, store } = harness();
    expect(await store.writeReadModel(transitionOf(stateAt(3), 3), null)).toBe('written'); // none yet: inserted
    expect(stored(runs)).toEqual({ version: 3, publishedVersion: 2 });
    expect(await store.writeReadModel(published(3), null)).toBe('written'); // the same version, now published
    expect(stored(runs)).toEqual({ version: 3, publishedVersion: 3 });
    // Late writes of older ranks (another replica's, landing after this one) leave it alone.
    expect(await store.writeReadModel(published(3), null)).toBe('newer');
    expect(await store.writeReadModel(transitionOf(stateAt(3), 3), null)).toBe('newer');
    expect(await store.writeReadModel(published(2), null)).toBe('newer');
    expect(stored(runs)).toEqual({ version: 3, publishedVersion: 3 });
    expect(await store.writeReadModel(transitionOf(stateAt(4), 4), null)).toBe('written');
    expect(stored(runs)).toEqual({ version: 4, publishedVersion: 3 });
    // Version 1 is only ever inserted (the gateway's write): never over a later one.
    expect(await store.writeReadModel(published(1), null)).toBe('newer');
    expect(stored(runs)).toEqual({ version: 4, publishedVersion: 3 });
  });

  it('replaces a read model older code wrote without publishedVersion', async () => {
    const { runs, store } = harness();
    runs.documents.set('run_1', { _id: 'run_1', version: 5, status: 'running' });
    expect(await store.writeReadModel(published(5), null)).toBe('written');
    expect(stored(runs)).toEqual({ version: 5, publishedVersion: 5 });
  });

  it('writes and deletes a deadline item only over one of its version or older, and tells the watermark only what it wrote', async () => {
    const { runDeadlines, watermark, store } = harness();
    const item = () => runDeadlines.documents.get('deadline:run_1') as { dueAt: string; version?: number } | undefined;
    expect(await store.writeDeadline('run_1', 't1', '2026-11-30T01:00:00.000Z', 4)).toBe('written');
    expect(await store.writeDeadline('run_1', 't1', '2026-11-30T02:00:00.000Z', 4)).toBe('written'); // the stale-timer path: same version, moved
    expect(item()).toMatchObject({ dueAt: '2026-11-30T02:00:00.000Z', version: 4 });
    // An older version's write or delete, landing late, leaves the newer item.
    expect(await store.writeDeadline('run_1', 't1', '2026-11-30T03:00:00.000Z', 3)).toBe('newer');
    await store.writeDeadline('run_1', 't1', null, 3);
    expect(item()).toMatchObject({ dueAt: '2026-11-30T02:00:00.000Z', version: 4 });
    expect(watermark).toEqual(['2026-11-30T01:00:00.000Z', '2026-11-30T02:00:00.000Z']);
    await store.writeDeadline('run_1', 't1', null, 5);
    expect(item()).toBeUndefined();
    // An item older code wrote (no version) is replaced by any version's.
    runDeadlines.documents.set('deadline:run_1', { _id: 'deadline:run_1', kind: 'deadline', runId: 'run_1', tenantId: 't1', dueAt: '2026-11-30T00:00:00.000Z' });
    expect(await store.writeDeadline('run_1', 't1', '2026-11-30T04:00:00.000Z', 1)).toBe('written');
    expect(item()).toMatchObject({ dueAt: '2026-11-30T04:00:00.000Z', version: 1 });
  });
});
