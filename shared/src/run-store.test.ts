import { describe, expect, it } from 'vitest';
import type { Collection } from 'mongodb';
import { memoryCollection } from './testing/memory-collection.ts';
import type { Collections } from './mongo.ts';
import { testRunState } from './testing/run-state.ts';
import { createWriteBatcher } from './write-batcher.ts';
import { encodeDelta } from './run-delta.ts';
import { encodeStoredKeys } from './stored-keys.ts';
import type { RunState } from './run-state.ts';
import { timelineSlotOf } from './work-timeline.ts';
import { agentIds } from './names.ts';
import { createRunStore, packTransition, resolveTransitionAgent, readModelSummary, TransitionConflictError, transitionId, unpackTransition, type RunDocument, type TransitionDocument } from './run-store.ts';

const at = '2026-11-30T00:00:00.000Z';

/** The run store's collections over memory, with the write batchers `getCollections` would build. */
function memoryCollections(parts: Record<'runs' | 'runTransitions' | 'runWork' | 'runDeadlines' | 'workTimeline' | 'runsRunning' | 'runsSuspended' | 'agentVersions', ReturnType<typeof memoryCollection>>): Collections {
  const batcher = (collection: ReturnType<typeof memoryCollection>) => createWriteBatcher(collection as unknown as Collection<{ _id: string }>);
  const writes = Object.fromEntries(Object.entries(parts).filter(([name]) => name !== 'agentVersions').map(([name, collection]) => [name, batcher(collection)]));
  return { ...parts, writes } as unknown as Collections;
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
  const runsRunning = memoryCollection();
  const runsSuspended = memoryCollection();
  // The agent version the test states run on, as a PUT stores it (`_id` and the agent).
  const agentVersions = memoryCollection();
  const agent = initialState().agentSnapshot;
  agentVersions.documents.set(agentIds.version(agent.tenantId, agent.agentId, agent.version), { _id: agentIds.version(agent.tenantId, agent.agentId, agent.version), ...structuredClone(agent) });
  const store = createRunStore(memoryCollections({ runs, runTransitions, runWork: memoryCollection(), runDeadlines, workTimeline, runsRunning, runsSuspended, agentVersions }), { now: () => Date.parse(at) });
  return { runs, runTransitions, runDeadlines, workTimeline, runsRunning, runsSuspended, agentVersions, store };
}

describe('run store: transitions as deltas', () => {
  it('stores bases every 128 versions and deltas between, and a cold load reads only from the last base', async () => {
    const { runTransitions, store } = harness();
    await store.commit(transitionOf(stateAt(1), 1), null);
    for (let version = 2; version <= 300; version += 1) await store.commit(transitionOf(stateAt(version), version), stateAt(version - 1));
    const bases = [...runTransitions.documents.values()].map(unpackTransition).filter((document) => document.state !== undefined).map((document) => document.version);
    expect(bases).toEqual([1, 129, 257]);
    expect(unpackTransition(runTransitions.documents.get('run_1:200')!).delta).toBeDefined();

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

  it('names the agent of a base by its agent_versions _id instead of embedding it, reads each version once, and refuses a missing or foreign one', async () => {
    const { runTransitions, agentVersions, store } = harness();
    await store.commit(transitionOf(stateAt(1), 1), null);
    await store.commit(transitionOf(stateAt(2), 2), stateAt(1));
    const stored = runTransitions.documents.get('run_1:1')!;
    const body = JSON.parse(stored.body as string) as { state: Record<string, unknown>; agentVersionId: string };
    expect(body.state).not.toHaveProperty('agentSnapshot');
    expect(body.agentVersionId).toBe('t1:a1:2');
    expect(JSON.stringify(body)).not.toContain('"echo"');

    // A cold load puts the version back; a second load of the same version reads no agent.
    expect((await store.loadVersion('run_1', 2))!.state).toEqual(stateAt(2));
    expect((await store.loadLatest('run_1'))!.transition.state).toEqual(stateAt(2));
    expect(agentVersions.reads).toEqual(['t1:a1:2']);

    // A version that is gone or that belongs to another tenant is corrupt data, never loaded silently.
    const unpacked = unpackTransition(stored);
    await expect(resolveTransitionAgent(unpacked, async () => null)).rejects.toThrow(/t1:a1:2, which is not stored/);
    const foreign = { ...stateAt(1).agentSnapshot, tenantId: 't2' };
    await expect(resolveTransitionAgent(unpacked, async () => foreign)).rejects.toThrow(/of another tenant or agent/);
    await expect(resolveTransitionAgent({ ...unpacked, agentVersionId: 't2:a1:2' }, async () => stateAt(1).agentSnapshot)).rejects.toThrow(/not a version of its own agent/);
    expect(await resolveTransitionAgent(unpacked, async () => stateAt(1).agentSnapshot)).toMatchObject({ state: stateAt(1) });
  });

  it('stores a transition as its header fields and one JSON body that keeps any key exactly, and still loads escaped documents older code wrote', async () => {
    const { runTransitions, store } = harness();
    const first = stateAt(1);
    const second = stateAt(2);
    // Keys FerretDB refuses in a document (`$…`, dotted) and an array inside an array: stored as they are, inside the body.
    const hostile = { '$set': { 'a.b': [[1, 2], ['x']] }, '%25': 'percent' };
    second.toolCalls = [{ toolCallId: 'c', providerToolCallId: 'p', step: 2, toolName: 'echo', args: hostile, needsApproval: false, state: 'requested' }];
    await store.commit(transitionOf(first, 1), null);
    await store.commit({ ...transitionOf(second, 2), outbox: [{ kind: 'event', type: 'tool.call', payload: { args: hostile } }] as never, traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01' }, first);
    const stored = runTransitions.documents.get('run_1:2')!;
    expect(Object.keys(stored).sort()).toEqual(['_id', 'at', 'awaiting', 'body', 'cause', 'published', 'runId', 'status', 'step', 'tenantId', 'traceparent', 'version']);
    expect(stored).toMatchObject({ runId: 'run_1', version: 2, status: 'running', step: 2, awaiting: { kind: 'llm', step: 0 }, published: false });
    expect(typeof stored.body).toBe('string');
    expect(JSON.parse(stored.body as string).delta.toolCalls.changed[0].record.args).toEqual(hostile);
    const loaded = await store.loadVersion('run_1', 2);
    expect(loaded!.state).toEqual(second);
    expect(loaded!.outbox).toEqual([{ kind: 'event', type: 'tool.call', payload: { args: hostile } }]);
    expect(loaded!.traceparent).toBe('00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01');
    expect(unpackTransition(packTransition(await resolveTransitionAgent(unpackTransition(stored), async () => null)))).toEqual(unpackTransition(stored));

    // Version 3 as the previous code stored it: a delta with its keys escaped and no body.
    const third = structuredClone(second);
    third.step = 3;
    third.messages = [...third.messages, { role: 'assistant', content: [{ type: 'tool-call', toolCallId: 'p3', toolName: 'echo', input: hostile }] }];
    const { state: _state, ...header } = transitionOf(third, 3);
    await runTransitions.insertOne(encodeStoredKeys({ ...header, delta: encodeDelta(second, third) }) as never);
    expect(Object.keys(runTransitions.documents.get('run_1:3')!.delta as object)).toContain('set');
    expect((await store.loadLatest('run_1'))!.transition.state).toEqual(third);
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

describe('run store: the live-status sets abide_runs counts', () => {
  it('keeps each run in the set of its read model\'s status, out of the other, and out of both once it ended; writes only when that may change them', async () => {
    const { runsRunning, runsSuspended, store } = harness();
    const members = () => ({ running: [...runsRunning.documents.keys()], suspended: [...runsSuspended.documents.keys()] });
    let writes = 0;
    for (const collection of [runsRunning, runsSuspended]) {
      const bulkWrite = collection.bulkWrite.bind(collection);
      collection.bulkWrite = async (operations) => {
        writes += operations.length;
        return bulkWrite(operations);
      };
    }
    const at = (version: number, status: RunState['status']) => transitionOf({ ...stateAt(1), status }, version);
    // Version 1 is the gateway's (queued): in neither set.
    await store.writeReadModel(at(1, 'queued'), null);
    expect(members()).toEqual({ running: [], suspended: [] });
    await store.writeReadModel(at(2, 'running'), null);
    expect(members()).toEqual({ running: ['run_1'], suspended: [] });
    await store.writeReadModel(at(3, 'suspended'), null);
    expect(members()).toEqual({ running: [], suspended: ['run_1'] });
    // The same version again (written published), and the next version in the same status: nothing written.
    writes = 0;
    await store.writeReadModel({ ...at(3, 'suspended'), published: true }, null);
    await store.writeReadModel(at(4, 'suspended'), null);
    expect(writes).toBe(0);
    // A gap (another replica wrote version 5, or a running run's read model written once a second): written again.
    await store.writeReadModel(at(6, 'suspended'), null);
    expect(writes).toBe(2);
    await store.writeReadModel(at(7, 'running'), null);
    expect(members()).toEqual({ running: ['run_1'], suspended: [] });
    await store.writeReadModel(at(8, 'completed'), null);
    expect(members()).toEqual({ running: [], suspended: [] });
    // An ended run's last version written again once its events are out: nothing written.
    writes = 0;
    await store.writeReadModel({ ...at(8, 'completed'), published: true }, null);
    expect(writes).toBe(0);
  });
});
