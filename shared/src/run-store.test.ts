import { describe, expect, it } from 'vitest';
import type { Collection } from 'mongodb';
import { memoryCollection } from './testing/memory-collection.ts';
import type { Collections } from './mongo.ts';
import { testRunState } from './testing/run-state.ts';
import { createWriteBatcher } from './write-batcher.ts';
import type { RunState } from './run-state.ts';
import { timelineSlotOf } from './work-timeline.ts';
import { createRunStore, readModelSummary, TransitionConflictError, transitionId, type RunDocument, type TransitionDocument } from './run-store.ts';

const at = '2026-11-30T00:00:00.000Z';

/** The run store's collections over memory, with the write batchers `getCollections` would build. */
function memoryCollections(parts: { runs: ReturnType<typeof memoryCollection>; runTransitions: ReturnType<typeof memoryCollection>; runWork: ReturnType<typeof memoryCollection>; runDeadlines: ReturnType<typeof memoryCollection>; workTimeline: ReturnType<typeof memoryCollection> }): Collections {
  const batcher = (collection: ReturnType<typeof memoryCollection>) => createWriteBatcher(collection as unknown as Collection<{ _id: string }>);
  return { ...parts, writes: { runs: batcher(parts.runs), runTransitions: batcher(parts.runTransitions), runWork: batcher(parts.runWork), runDeadlines: batcher(parts.runDeadlines), workTimeline: batcher(parts.workTimeline) } } as unknown as Collections;
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
  const workTimeline = memoryCollection();
  const store = createRunStore(memoryCollections({ runs, runTransitions, runWork: memoryCollection(), runDeadlines, workTimeline }), { now: () => Date.parse(at) });
  return { runs, runTransitions, runDeadlines, workTimeline, store };
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

  it('loads a new run\'s version 1 with one read and the probe of version 2, never the read model; null once version 2 exists or without version 1', async () => {
    const { runs, runTransitions, store } = harness();
    expect(await store.loadFirstIfLatest('run_1')).toBeNull();
    await store.insertTransition(transitionOf(stateAt(1), 1));
    runTransitions.reads.length = 0;
    const first = await store.loadFirstIfLatest('run_1');
    expect(first).toMatchObject({ _id: 'run_1:1', version: 1, published: false });
    expect(first!.state).toEqual(stateAt(1));
    expect([...runTransitions.reads].sort()).toEqual(['run_1:1', 'run_1:2']);
    expect(runs.reads).toEqual([]);
    await store.commit(transitionOf(stateAt(2), 2), stateAt(1));
    expect(await store.loadFirstIfLatest('run_1')).toBeNull();
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

describe('run store: deadline items', () => {
  it('lowers an item, never moving it later, and sets it either way on request, each write after a timeline entry for its time', async () => {
    const { runDeadlines, workTimeline, store } = harness();
    const item = () => runDeadlines.documents.get('deadline:run_1');
    await store.lowerDeadline('run_1', 't1', '2026-11-30T10:10:00.000Z');
    expect(item()).toEqual({ _id: 'deadline:run_1', kind: 'deadline', runId: 'run_1', tenantId: 't1', dueAt: '2026-11-30T10:10:00.000Z' });
    // A later deadline (a model step after a tool call, or an older version's write landing late) leaves the earlier one.
    await store.lowerDeadline('run_1', 't1', '2026-11-30T11:00:00.000Z');
    expect(item()?.dueAt).toBe('2026-11-30T10:10:00.000Z');
    await store.lowerDeadline('run_1', 't1', '2026-11-30T10:05:00.000Z');
    expect(item()?.dueAt).toBe('2026-11-30T10:05:00.000Z');
    // The stale-timer path moves it to the run's deadline, later.
    await store.writeDeadline('run_1', 't1', '2026-11-30T11:00:00.000Z');
    expect(item()?.dueAt).toBe('2026-11-30T11:00:00.000Z');
    await store.writeDeadline('run_1', 't1', null);
    expect(item()).toBeUndefined();
    // One entry per write with a time, numbered within its slot (two writes for 11:00 share one).
    const slot = (iso: string) => timelineSlotOf(Date.parse(iso));
    expect([...workTimeline.documents.values()].map((entry) => [entry._id, entry.dueAt])).toEqual([
      [`deadline/${slot('2026-11-30T10:10:00.000Z')}/0`, '2026-11-30T10:10:00.000Z'],
      [`deadline/${slot('2026-11-30T11:00:00.000Z')}/0`, '2026-11-30T11:00:00.000Z'],
      [`deadline/${slot('2026-11-30T10:05:00.000Z')}/0`, '2026-11-30T10:05:00.000Z'],
      [`deadline/${slot('2026-11-30T11:00:00.000Z')}/1`, '2026-11-30T11:00:00.000Z'],
    ]);
  });
});
