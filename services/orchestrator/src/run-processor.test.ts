import { describe, expect, it } from 'vitest';
import { Writable } from 'node:stream';
import { createLogger, foldStoredTransitions, fromStoredTransition, toStoredTransition, TransitionConflictError, type RunState, type RunStore, type StoredTransition, type TransitionDocument } from '@abide/shared';
import { testRunState } from '@abide/shared/testing';
import { createKeyedQueue } from './keyed-queue.ts';
import { createRunProcessor, deadlineItemDue, deadlineWriteNeeded, minDeadlineItemHorizonMs } from './run-processor.ts';
import type { RunInput } from './run-state-machine.ts';

const now = new Date('2026-11-24T10:00:00.000Z');

function queuedState(agent?: Record<string, unknown>): RunState {
  return testRunState({}, { at: now.toISOString(), ...(agent ? { agent } : {}) });
}

const finalAnswer: RunInput = {
  type: 'llm_result',
  payload: { ok: true, step: 0, attempt: 1, text: 'done', toolCalls: [], finishReason: 'stop', usage: { inputTokens: 1, outputTokens: 1, totalTokens: 2 } },
};

const toolCall: RunInput = {
  type: 'llm_result',
  payload: { ok: true, step: 0, attempt: 1, text: '', toolCalls: [{ providerToolCallId: 'c1', toolName: 'echo', args: {} }], finishReason: 'tool-calls', usage: { inputTokens: 1, outputTokens: 1, totalTokens: 2 } },
};

const toolResult = (step: number): RunInput => ({ type: 'tool_result', payload: { toolCallId: `s${step}c0`, step, outcome: { kind: 'success', value: {} } } });
const toolCallAt = (step: number): RunInput => ({ type: 'llm_result', payload: { ...(toolCall as Extract<RunInput, { type: 'llm_result' }>).payload, step } });
const finalAnswerAt = (step: number): RunInput => ({ type: 'llm_result', payload: { ...(finalAnswer as Extract<RunInput, { type: 'llm_result' }>).payload, step } });

function deferred() {
  let resolve!: () => void;
  const promise = new Promise<void>((done) => (resolve = done));
  return { promise, resolve };
}

/**
 * An in-memory run store with the semantics the processor relies on (insert decides, read model
 * by `_id`), recording every write and publish in one ordered log.
 */
function harness(options: { holdReadModel?: number; holdDeadlineSet?: boolean; retentionMs?: number; readModelDelayMs?: number; agent?: Record<string, unknown> } = {}) {
  /** The processors' clock: tests move it on. */
  const clock = { now };
  const log: string[] = [];
  /** Which cold load each `apply` used: `first` (version 1 and the probe of 2 at once) or `latest` (the read model, then roll forward). */
  const loads: string[] = [];
  // Stored as `run_transitions` stores them (a delta after version 1), folded on every load.
  const transitions = new Map<string, StoredTransition>();
  const readModel: { version: number; publishedVersion: number }[] = [];
  const deadlines = new Map<string, string>();
  const probes: number[] = [];
  const hold = deferred();
  let held = false;
  const deadlineHold = deferred();
  let deadlineHeld = false;
  const v1: TransitionDocument = { _id: 'run_1:1', runId: 'run_1', tenantId: 't1', version: 1, at: now, cause: 'create:r1', state: queuedState(options.agent), outbox: [{ kind: 'inbox', inboxKind: 'start', payload: {} }], published: false };
  transitions.set(v1._id, structuredClone(v1));
  const loadAll = (runId: string) => {
    const stored: StoredTransition[] = [];
    for (let version = 1; transitions.has(`${runId}:${version}`); version += 1) stored.push(structuredClone(transitions.get(`${runId}:${version}`)!));
    return foldStoredTransitions(stored);
  };
  const store: RunStore = {
    async loadNext(previous: TransitionDocument) {
      const found = transitions.get(`${previous.runId}:${previous.version + 1}`);
      return found ? fromStoredTransition(structuredClone(found), previous.state) : null;
    },
    async rollForward(from: TransitionDocument) {
      let latest = from;
      for (let next = await store.loadNext(latest); next; next = await store.loadNext(latest)) latest = next;
      return latest;
    },
    async exists(runId: string, version: number) {
      probes.push(version);
      return transitions.has(`${runId}:${version}`);
    },
    async loadFirstIfLatest(runId: string) {
      loads.push('first');
      const first = transitions.get(`${runId}:1`);
      if (!first || transitions.has(`${runId}:2`)) return null;
      return fromStoredTransition(structuredClone(first), null);
    },
    async loadLatest(runId: string) {
      loads.push('latest');
      const model = readModel.at(-1);
      const latest = loadAll(runId).at(-1);
      if (!latest) return null;
      return { transition: { ...latest, published: (model?.publishedVersion ?? 0) >= latest.version }, lastSeq: null };
    },
    async commit(transition: TransitionDocument, previous: RunState | null) {
      if (transitions.has(transition._id)) throw new TransitionConflictError(`transition ${transition._id} exists`);
      transitions.set(transition._id, structuredClone(toStoredTransition(transition, previous)));
      log.push(`commit ${transition.version}`);
    },
    async lowerDeadline(runId: string, _tenantId: string, dueAt: string) {
      const stored = deadlines.get(runId);
      if (stored === undefined || dueAt < stored) deadlines.set(runId, dueAt);
      log.push('deadline lowered');
    },
    async writeDeadline(runId: string, _tenantId: string, dueAt: string | null) {
      if (options.holdDeadlineSet && !deadlineHeld) {
        deadlineHeld = true;
        log.push('deadline set held');
        await deadlineHold.promise;
      }
      if (dueAt === null) deadlines.delete(runId);
      else deadlines.set(runId, dueAt);
      log.push(`deadline ${dueAt === null ? 'cleared' : 'set'}`);
    },
    async writeReadModel(transition: TransitionDocument) {
      // Only the first write of that version is held (another replica's write of it is not).
      if (transition.version === options.holdReadModel && !held) {
        held = true;
        await hold.promise;
      }
      readModel.push({ version: transition.version, publishedVersion: transition.published ? transition.version : transition.version - 1 });
      log.push(`read model ${transition.version}`);
    },
    async deleteWork() {},
    async insertWork(item: { _id: string; kind: string; dueAt: string }) {
      log.push(`work ${item._id} ${item.kind} due ${item.dueAt}`);
    },
  } as unknown as RunStore;
  const js = {
    async publish(subject: string, _data: Uint8Array, publishOptions: { msgID: string }) {
      log.push(`publish ${subject} ${publishOptions.msgID}`);
      return { stream: 'S', seq: log.length, duplicate: false, domain: '' };
    },
  };
  const collections = { writes: { conversations: { update: async () => 'ok' }, conversationLocks: { delete: async () => 'ok' } } };
  const logger = createLogger('orchestrator', 'silent', new Writable({ write: (_chunk, _encoding, done) => done() }));
  // The delayed read models are written by `flushReadModels` unless a test sets a short delay.
  const make = () =>
    createRunProcessor({ store, publisher: { js: js as never, collections: collections as never }, queue: createKeyedQueue(), logger, now: () => clock.now, retentionMs: options.retentionMs, readModelDelayMs: options.readModelDelayMs ?? 3_600_000 });
  return { log, loads, transitions, readModel, deadlines, probes, hold, deadlineHold, make, clock };
}

describe('run processor: one write on a step critical path (issue 9)', () => {
  it('publishes right after the commit; the deadline item follows before the input is acked, the read model of a run that moves on after its delay', async () => {
    const h = harness({ readModelDelayMs: 20 });
    const processor = h.make();
    // `run_1:1:0` is the start version 1's outbox sent: its arrival proves version 1 published.
    expect(await processor.apply('run_1', 't1', { type: 'start' }, 'run_1:1:0')).toEqual({ kind: 'committed', version: 2 });
    const commit = h.log.indexOf('commit 2');
    expect(h.log.slice(0, commit)).toEqual([]); // nothing republished, nothing written before the commit
    expect(h.log.slice(commit + 1, -1).every((line) => line.startsWith('publish '))).toBe(true);
    expect(h.log.at(-1)).toBe('deadline lowered');
    expect(h.readModel).toEqual([]); // the ack did not wait for it
    await expect.poll(() => h.readModel).toEqual([{ version: 2, publishedVersion: 2 }]);
  });

  it('the next input does not wait for the read model; writes stay in version order', async () => {
    const h = harness({ holdReadModel: 2 });
    const processor = h.make();
    await processor.apply('run_1', 't1', { type: 'start' }, 'run_1:1:0');
    const flushed = processor.flushReadModels();
    // Version 2's read model is held; the model's tool call still commits version 3 and publishes its tool request.
    const second = processor.apply('run_1', 't1', toolCall, 'llm:run_1:0');
    await expect.poll(() => h.log.some((line) => line.startsWith('publish tool.request.echo run_1:3:'))).toBe(true);
    expect(h.log).not.toContain('read model 2');
    h.hold.resolve();
    await Promise.all([flushed, second]);
    await processor.flushReadModels();
    expect(h.readModel.map((model) => model.version)).toEqual([2, 3]);
    expect(h.readModel.at(-1)).toEqual({ version: 3, publishedVersion: 3 });
  });

  it('a run that moves on by itself has its read model written once per delay, for the newest version ready', async () => {
    const h = harness();
    const processor = h.make();
    await processor.apply('run_1', 't1', { type: 'start' }, 'run_1:1:0');
    await processor.apply('run_1', 't1', toolCall, 'llm:run_1:0');
    await processor.apply('run_1', 't1', toolResult(0), 'tool:run_1:s0c0');
    // Three transitions inside one delay: no read model written yet, then one, of the newest.
    expect(h.readModel).toEqual([]);
    await processor.flushReadModels();
    expect(h.readModel).toEqual([{ version: 4, publishedVersion: 4 }]);
    await processor.flushReadModels();
    expect(h.readModel).toHaveLength(1);
    // A run that ends writes its own read model at once; nothing delayed is written after it.
    await processor.apply('run_1', 't1', toolCallAt(1), 'llm:run_1:1');
    await processor.apply('run_1', 't1', toolResult(1), 'tool:run_1:s1c0');
    await processor.apply('run_1', 't1', finalAnswerAt(2), 'llm:run_1:2');
    await processor.flushReadModels();
    expect(h.readModel).toEqual([
      { version: 4, publishedVersion: 4 },
      { version: 7, publishedVersion: 6 },
      { version: 7, publishedVersion: 7 },
    ]);
  });

  it('a run that ends has its read model written before its terminal event goes out, its deadline item after, then recorded published', async () => {
    const h = harness();
    const processor = h.make();
    await processor.apply('run_1', 't1', { type: 'start' }, 'run_1:1:0');
    h.log.length = 0;
    await processor.apply('run_1', 't1', finalAnswer, 'llm:run_1:0');
    const terminalEvent = h.log.findIndex((line) => line.startsWith('publish run.events.run_1 run_1:3:'));
    expect(h.log.slice(0, terminalEvent)).toEqual(['commit 3', 'read model 3']);
    expect(h.log.slice(terminalEvent).filter((line) => !line.startsWith('publish '))).toEqual(['deadline cleared', 'read model 3']);
    expect(h.readModel.slice(-2)).toEqual([
      { version: 3, publishedVersion: 2 },
      { version: 3, publishedVersion: 3 },
    ]);
    expect(h.deadlines.has('run_1')).toBe(false); // a finished run leaves no deadline item
  });

  it('loads a new run for its start with version 1 and the probe of version 2 alone; a redelivered start finds version 2 and loads the latest', async () => {
    const h = harness();
    expect(await h.make().apply('run_1', 't1', { type: 'start' }, 'run_1:1:0')).toEqual({ kind: 'committed', version: 2 });
    expect(h.loads).toEqual(['first']);
    // Another process (or this one after a restart) gets the start again: version 2 exists, so
    // version 1 is not the latest; the input is found applied.
    h.loads.length = 0;
    expect(await h.make().apply('run_1', 't1', { type: 'start' }, 'run_1:1:0')).toEqual({ kind: 'ignored', reason: 'input already applied' });
    expect(h.loads).toEqual(['first', 'latest']);
    expect(h.transitions.has('run_1:3')).toBe(false);
    // Any other input of a run this process has not seen loads the latest directly.
    h.loads.length = 0;
    await h.make().apply('run_1', 't1', toolCall, 'llm:run_1:0');
    expect(h.loads).toEqual(['latest']);
  });

  it('a start that carries version 1 commits version 2 without reading the run; when version 2 exists the insert loses and the run is read', async () => {
    const h = harness();
    const carried: TransitionDocument = { ...(structuredClone(h.transitions.get('run_1:1')!) as TransitionDocument), published: true };
    expect(await h.make().apply('run_1', 't1', { type: 'start' }, 'run_1:1:0', carried)).toEqual({ kind: 'committed', version: 2 });
    expect(h.loads).toEqual([]);
    expect(h.log.slice(0, h.log.indexOf('commit 2'))).toEqual([]); // nothing republished before the commit
    // Version 2 is exactly what reading version 1 would have committed.
    const read = harness();
    await read.make().apply('run_1', 't1', { type: 'start' }, 'run_1:1:0');
    expect(h.transitions.get('run_1:2')).toEqual(read.transitions.get('run_1:2'));
    // Another copy of the start carrying version 1 (a republish after the duplicate window): its
    // version 2 insert loses, the run is read, and the input is found applied.
    h.loads.length = 0;
    expect(await h.make().apply('run_1', 't1', { type: 'start' }, 'run_1:1:0', carried)).toEqual({ kind: 'ignored', reason: 'input already applied' });
    expect(h.loads).toEqual(['first', 'latest']);
    expect(h.transitions.has('run_1:3')).toBe(false);
  });

  it('a redelivered input whose transition was committed but not published publishes it, writes the read model, and is acked', async () => {
    const h = harness();
    // A process committed version 2 for this input and died before publishing it.
    await h.make().apply('run_1', 't1', { type: 'start' }, 'run_1:1:0');
    h.readModel.length = 0;
    h.log.length = 0;
    const fresh = h.make();
    expect(await fresh.apply('run_1', 't1', { type: 'start' }, 'run_1:1:0')).toEqual({ kind: 'ignored', reason: 'input already applied' });
    expect(h.log.filter((line) => line.startsWith('publish ')).length).toBeGreaterThan(0);
    expect(h.log.filter((line) => line.startsWith('publish ')).every((line) => line.includes(' run_1:2:'))).toBe(true);
    expect(h.log.at(-1)).toBe('deadline lowered');
    await fresh.flushReadModels();
    expect(h.log.at(-1)).toBe('read model 2');
    expect(h.transitions.has('run_1:3')).toBe(false);
  });

  it('a read model write that lands behind another replica\'s newer one is caught up to the latest', async () => {
    const h = harness({ holdReadModel: 2 });
    const replicaA = h.make();
    const replicaB = h.make();
    // A commits and publishes version 2; its read-model write is slow.
    await replicaA.apply('run_1', 't1', { type: 'start' }, 'run_1:1:0');
    const first = replicaA.flushReadModels();
    // B takes the next input: version 2 is not known published to it, so it publishes it again, then commits version 3.
    await replicaB.apply('run_1', 't1', toolCall, 'llm:run_1:0');
    await replicaB.flushReadModels();
    expect(h.readModel.at(-1)).toEqual({ version: 3, publishedVersion: 3 });
    // A's write of version 2 lands last, behind B's version 3 ...
    h.hold.resolve();
    await first;
    // ... and A finds version 3 and writes it again: the read model ends at the latest.
    await expect.poll(() => h.log.filter((line) => line.startsWith('publish tool.request.echo run_1:3:')).length).toBe(2);
    await replicaA.flushReadModels();
    expect(h.readModel.at(-1)).toEqual({ version: 3, publishedVersion: 3 });
    expect(h.readModel.map((model) => model.version)).toEqual([3, 2, 3]);
  });

  it('probes for a newer version after a read-model write only where one can be: not after an ended run\'s', async () => {
    const h = harness();
    const processor = h.make();
    await processor.apply('run_1', 't1', { type: 'start' }, 'run_1:1:0');
    // A deadline item lowered before the ack cannot end later than a newer version's: no probe.
    expect(h.probes).toEqual([]);
    // The delayed read model: another replica may have committed on top of it.
    await processor.flushReadModels();
    expect(h.probes).toEqual([3]);
    await processor.apply('run_1', 't1', finalAnswer, 'llm:run_1:0');
    // Both writes of the ended run (before its terminal event and after) probe nothing.
    expect(h.readModel.slice(-2)).toEqual([
      { version: 3, publishedVersion: 2 },
      { version: 3, publishedVersion: 3 },
    ]);
    expect(h.probes).toEqual([3]);
  });

  it('with RUN_RETENTION, a run that ends gets its retention item after its deadline item, both after its terminal event and before its read model records it published; without, none', async () => {
    const h = harness({ retentionMs: 3_600_000 });
    const processor = h.make();
    await processor.apply('run_1', 't1', { type: 'start' }, 'run_1:1:0');
    expect(h.log.some((line) => line.startsWith('work '))).toBe(false); // not ended: no item
    h.log.length = 0;
    await processor.apply('run_1', 't1', finalAnswer, 'llm:run_1:0');
    const terminalEvent = h.log.findIndex((line) => line.startsWith('publish run.events.run_1 run_1:3:'));
    // Before the terminal event: the commit, then the read model recording version 3 not yet published.
    expect(h.log.slice(0, terminalEvent)).toEqual(['commit 3', 'read model 3']);
    expect(h.readModel.at(-2)).toEqual({ version: 3, publishedVersion: 2 });
    // After it, before the ack: the work items (deadline item, then retention item), then the read
    // model recording the terminal transition published.
    expect(h.log.slice(terminalEvent).filter((line) => !line.startsWith('publish '))).toEqual(['deadline cleared', 'work retention:run_1 retention due 2026-11-24T11:00:00.000Z', 'read model 3']);

    const forever = harness();
    const kept = forever.make();
    await kept.apply('run_1', 't1', { type: 'start' }, 'run_1:1:0');
    await kept.apply('run_1', 't1', finalAnswer, 'llm:run_1:0');
    expect(forever.log.some((line) => line.startsWith('work '))).toBe(false);
  });

  it('sends the terminal event without waiting for the deadline item, and acks the input only once it is written', async () => {
    const h = harness({ holdDeadlineSet: true });
    const processor = h.make();
    await processor.apply('run_1', 't1', { type: 'start' }, 'run_1:1:0');
    let acked = false;
    const ended = processor.apply('run_1', 't1', finalAnswer, 'llm:run_1:0').then((outcome) => {
      acked = true;
      return outcome;
    });
    await expect.poll(() => h.log.includes('deadline set held')).toBe(true);
    // The read model recording version 3 not yet published, then the events, before the held delete.
    const order = ['read model 3', 'publish run.events.run_1 run_1:3:', 'deadline set held'].map((line) => h.log.findIndex((logged) => logged.startsWith(line)));
    expect(order[0]).toBeGreaterThanOrEqual(0);
    expect(order).toEqual([...order].sort((a, b) => a - b));
    // The input waits for the delete (a crash here redelivers it: published again, then written).
    await new Promise((resolve) => setImmediate(resolve));
    expect(acked).toBe(false);
    expect(h.deadlines.has('run_1')).toBe(true);
    h.deadlineHold.resolve();
    expect(await ended).toEqual({ kind: 'committed', version: 3 });
    expect(h.deadlines.has('run_1')).toBe(false);
    expect(h.readModel.at(-1)).toEqual({ version: 3, publishedVersion: 3 });
  });
});

describe('run processor: deadline items fire no later than the deadline, written only when that needs it', () => {
  const hour = '2026-11-24T11:00:00.000Z';
  const tenMinutes = '2026-11-24T10:10:00.000Z';

  it('decides a write from what this process knows of the item', () => {
    // Nothing known (another replica's run, or a restart): written.
    expect(deadlineWriteNeeded(undefined, 4, hour)).toBe(true);
    // The same version again (the second settle of a run that ended or waits): nothing to write.
    expect(deadlineWriteNeeded({ version: 4, dueAt: hour, retention: false }, 4, hour)).toBe(false);
    expect(deadlineWriteNeeded({ version: 4, dueAt: null, retention: false }, 4, null)).toBe(false);
    // The next version, due no earlier than what is stored: the stored item fires first, early, and is then moved.
    expect(deadlineWriteNeeded({ version: 3, dueAt: tenMinutes, retention: false }, 4, hour)).toBe(false);
    expect(deadlineWriteNeeded({ version: 3, dueAt: hour, retention: false }, 4, hour)).toBe(false);
    // Due earlier than what is stored: written, or the deadline would fire late.
    expect(deadlineWriteNeeded({ version: 3, dueAt: hour, retention: false }, 4, tenMinutes)).toBe(true);
    // A version in between it did not see (another replica's, or a settle skipped for a newer one): written.
    expect(deadlineWriteNeeded({ version: 2, dueAt: tenMinutes, retention: false }, 4, hour)).toBe(true);
    // No deadline any more, or none stored: written (deleted, or set).
    expect(deadlineWriteNeeded({ version: 3, dueAt: tenMinutes, retention: false }, 4, null)).toBe(true);
    expect(deadlineWriteNeeded({ version: 3, dueAt: null, retention: false }, 4, hour)).toBe(true);
  });

  /** Tool calls due in 30 s: a horizon under `minDeadlineItemHorizonMs`, so the item is due at the run's deadline itself. */
  const shortTools = { tools: [{ name: 'echo', kind: 'builtin', inputSchema: { type: 'object' }, timeoutMs: 30_000 }] };
  const thirtySeconds = '2026-11-24T10:00:30.000Z';
  const at = (offsetMs: number) => new Date(now.getTime() + offsetMs);

  it('a working run\'s item is due within its deadline horizon; a run waiting for people, or with a short horizon, at its deadline', () => {
    const working = testRunState({ status: 'running', nextDeadlineAt: hour }, { at: now.toISOString() });
    // The default agent: model steps due in an hour, tool calls in ten minutes: a ten-minute horizon.
    expect(deadlineItemDue(working, now.getTime())).toBe(tenMinutes);
    // Never later than the deadline itself.
    expect(deadlineItemDue({ ...working, nextDeadlineAt: '2026-11-24T10:05:00.000Z' }, now.getTime())).toBe('2026-11-24T10:05:00.000Z');
    expect(deadlineItemDue({ ...working, nextDeadlineAt: null }, now.getTime())).toBeNull();
    // An approval due sooner than any tool call makes the horizon shorter.
    const approvals = testRunState({ status: 'running', nextDeadlineAt: hour }, { agent: { tools: [{ name: 'echo', kind: 'builtin', inputSchema: { type: 'object' }, needsApproval: true, approvalTimeoutMs: 120_000 }] } });
    expect(deadlineItemDue(approvals, now.getTime())).toBe('2026-11-24T10:02:00.000Z');
    expect(deadlineItemDue({ ...approvals, status: 'suspended' }, now.getTime())).toBe(hour);
    // Under the minimum horizon the item is due at the deadline: a short horizon would fire that often.
    const short = testRunState({ status: 'running', nextDeadlineAt: hour }, { agent: shortTools });
    expect(30_000).toBeLessThan(minDeadlineItemHorizonMs);
    expect(deadlineItemDue(short, now.getTime())).toBe(hour);
  });

  it('a working run writes its item at its first step only, as every later step is due no earlier, and deletes it once when it ends', async () => {
    const h = harness();
    const processor = h.make();
    const deadlineWrites = () => h.log.filter((line) => line.startsWith('deadline '));
    await processor.apply('run_1', 't1', { type: 'start' }, 'run_1:1:0'); // v2: model step, due in an hour; the item within the ten-minute horizon
    expect(deadlineWrites()).toEqual(['deadline lowered']);
    expect(h.deadlines.get('run_1')).toBe(tenMinutes);
    h.clock.now = at(1_000);
    await processor.apply('run_1', 't1', toolCall, 'llm:run_1:0'); // v3: tool call, due in ten minutes from a second later
    h.clock.now = at(2_000);
    await processor.apply('run_1', 't1', toolResult(0), 'tool:run_1:s0c0'); // v4: model step 1
    await processor.apply('run_1', 't1', toolCallAt(1), 'llm:run_1:1'); // v5
    await processor.apply('run_1', 't1', toolResult(1), 'tool:run_1:s1c0'); // v6
    expect(deadlineWrites()).toEqual(['deadline lowered']);
    expect(h.deadlines.get('run_1')).toBe(tenMinutes);
    await processor.apply('run_1', 't1', finalAnswerAt(2), 'llm:run_1:2'); // v7: completed
    // Ended: deleted once, though the run is settled twice (before its terminal event and after).
    expect(deadlineWrites()).toEqual(['deadline lowered', 'deadline cleared']);
    expect(h.deadlines.has('run_1')).toBe(false);
    expect(h.readModel.at(-1)).toEqual({ version: 7, publishedVersion: 7 });
  });

  it('with a short horizon, a run alternating model and tool steps writes its item only when the deadline comes earlier', async () => {
    const h = harness({ agent: shortTools });
    const processor = h.make();
    const deadlineWrites = () => h.log.filter((line) => line.startsWith('deadline '));
    await processor.apply('run_1', 't1', { type: 'start' }, 'run_1:1:0'); // v2: model step, due in an hour
    await processor.apply('run_1', 't1', toolCall, 'llm:run_1:0'); // v3: tool call, due in 30 s (earlier)
    expect(deadlineWrites()).toEqual(['deadline lowered', 'deadline lowered']);
    expect(h.deadlines.get('run_1')).toBe(thirtySeconds);
    await processor.apply('run_1', 't1', toolResult(0), 'tool:run_1:s0c0'); // v4: model step 1, due in an hour (later): not written
    expect(deadlineWrites()).toHaveLength(2);
    await processor.apply('run_1', 't1', toolCallAt(1), 'llm:run_1:1'); // v5: due in 30 s, earlier than v4's hour: written
    expect(deadlineWrites()).toHaveLength(3);
    await processor.apply('run_1', 't1', toolResult(1), 'tool:run_1:s1c0'); // v6: not written
    await processor.apply('run_1', 't1', finalAnswerAt(2), 'llm:run_1:2'); // v7: completed
    expect(deadlineWrites()).toEqual(['deadline lowered', 'deadline lowered', 'deadline lowered', 'deadline cleared']);
    expect(h.deadlines.has('run_1')).toBe(false);
  });

  it('a timer from an item left early is ignored and moves the item on by the horizon, then to the run\'s deadline', async () => {
    const h = harness();
    const processor = h.make();
    await processor.apply('run_1', 't1', { type: 'start' }, 'run_1:1:0');
    await processor.apply('run_1', 't1', toolCall, 'llm:run_1:0');
    await processor.apply('run_1', 't1', toolResult(0), 'tool:run_1:s0c0');
    // The item still holds the first step's ten minutes; the run (v4, a model step) is due in an hour.
    expect(h.deadlines.get('run_1')).toBe(tenMinutes);
    h.clock.now = at(10 * 60_000);
    expect(await processor.apply('run_1', 't1', { type: 'deadline' }, `run_1:timer:${tenMinutes}`)).toEqual({ kind: 'ignored', reason: 'no deadline due' });
    expect(h.deadlines.get('run_1')).toBe('2026-11-24T10:20:00.000Z');
    h.clock.now = at(55 * 60_000);
    expect(await processor.apply('run_1', 't1', { type: 'deadline' }, 'run_1:timer:2026-11-24T10:20:00.000Z')).toEqual({ kind: 'ignored', reason: 'no deadline due' });
    expect(h.deadlines.get('run_1')).toBe(hour);
  });

  it('a run waiting for an approval keeps the earlier item; its early timer moves the item to the approval\'s deadline', async () => {
    const h = harness({ agent: { tools: [{ name: 'echo', kind: 'builtin', inputSchema: { type: 'object' }, needsApproval: true }] } });
    const processor = h.make();
    const deadlineWrites = () => h.log.filter((line) => line.startsWith('deadline '));
    await processor.apply('run_1', 't1', { type: 'start' }, 'run_1:1:0'); // v2: due within the ten-minute horizon
    h.clock.now = at(1_000);
    await processor.apply('run_1', 't1', toolCall, 'llm:run_1:0'); // v3: suspended, the approval expires in 30 minutes
    expect(deadlineWrites()).toEqual(['deadline lowered']);
    expect(h.deadlines.get('run_1')).toBe(tenMinutes);
    h.clock.now = at(10 * 60_000);
    expect(await processor.apply('run_1', 't1', { type: 'deadline' }, `run_1:timer:${tenMinutes}`)).toEqual({ kind: 'ignored', reason: 'no deadline due' });
    expect(h.deadlines.get('run_1')).toBe('2026-11-24T10:30:01.000Z');
  });

  it('a stale timer\'s move of the item to a later time that lands after another replica lowered it for a newer version is lowered again', async () => {
    const h = harness({ holdDeadlineSet: true, agent: shortTools });
    const first = h.make();
    await first.apply('run_1', 't1', { type: 'start' }, 'run_1:1:0');
    await first.apply('run_1', 't1', toolCall, 'llm:run_1:0');
    await first.apply('run_1', 't1', toolResult(0), 'tool:run_1:s0c0');
    await first.flushReadModels();
    // v4 (a model step, an hour) left the item at v3's 30 s; its timer reaches another replica, whose move to the hour is slow ...
    const stale = h.make().apply('run_1', 't1', { type: 'deadline' }, `run_1:timer:${thirtySeconds}`);
    await expect.poll(() => h.log.includes('deadline set held')).toBe(true);
    // ... while the first commits v5 (a tool call, 30 s) and lowers the item.
    await first.apply('run_1', 't1', toolCallAt(1), 'llm:run_1:1');
    expect(h.deadlines.get('run_1')).toBe(thirtySeconds);
    h.deadlineHold.resolve();
    expect(await stale).toEqual({ kind: 'ignored', reason: 'no deadline due' });
    // The move to v4's hour landed last; v5 exists, so the item is lowered to v5's 30 s again.
    expect(h.deadlines.get('run_1')).toBe(thirtySeconds);
    expect(h.log.slice(-2)).toEqual(['deadline set', 'deadline lowered']);
  });

  it('a process that did not write the run\'s previous item writes the next one, lowering it only', async () => {
    const h = harness({ agent: shortTools });
    const first = h.make();
    await first.apply('run_1', 't1', { type: 'start' }, 'run_1:1:0');
    await first.apply('run_1', 't1', toolCall, 'llm:run_1:0');
    await first.flushReadModels();
    expect(h.deadlines.get('run_1')).toBe(thirtySeconds);
    const writes = () => h.log.filter((line) => line.startsWith('deadline ')).length;
    const before = writes();
    // Another process (another replica, or after a restart) commits v4, due later than the stored
    // item: it does not know what is stored, so it writes, and the item (due earlier) stays.
    await h.make().apply('run_1', 't1', toolResult(0), 'tool:run_1:s0c0');
    expect(writes()).toBe(before + 1);
    expect(h.deadlines.get('run_1')).toBe(thirtySeconds);
  });
});
