import { describe, expect, it, vi } from 'vitest';
import { ApiError, createLogger, runIdFromIdempotencyKey, type Agent } from '@abide/shared';
import type { GatewayStore } from './ports.ts';
import { createRunCreator } from './run-creation.ts';
import { createFakeBus, createMemoryStore } from './testing/fakes.ts';

const at = new Date('2030-01-01T00:00:00.000Z');
const agent = {
  tenantId: 't1',
  agentId: 'helper',
  version: 1,
  model: { provider: 'scripted', steps: [{ text: 'hello' }] },
  tools: [],
  maxSteps: 10,
  limits: {},
  createdAt: at.toISOString(),
  updatedAt: at.toISOString(),
} as unknown as Agent;

const isSlot = (lockId: string) => lockId.includes('/active-run/');

/**
 * A creator over the memory store, each store call recorded as `<method> <id>` when it starts
 * and `<method> <id> done` when it ends; `override` replaces store methods.
 */
function harness(options: { maxActiveRuns?: number; override?: (store: GatewayStore) => Partial<GatewayStore> } = {}) {
  const memory = createMemoryStore();
  memory.agents.set('t1:helper', agent);
  const calls: string[] = [];
  const base = { ...memory.store, ...options.override?.(memory.store) };
  const traced = <Args extends unknown[], Result>(method: string, idOf: (...args: Args) => string, call: (...args: Args) => Promise<Result>) =>
    async (...args: Args) => {
      calls.push(`${method} ${idOf(...args)}`);
      const result = await call(...args);
      calls.push(`${method} ${idOf(...args)} done`);
      return result;
    };
  const store: GatewayStore = {
    ...base,
    findAgent: traced('findAgent', (_tenantId, agentId) => agentId, base.findAgent),
    insertLock: traced('insertLock', (lock) => lock._id, base.insertLock),
    insertWork: traced('insertWork', (item) => item._id, base.insertWork),
    insertTransition: traced('insertTransition', (transition) => transition._id, base.insertTransition),
  };
  const bus = createFakeBus();
  const createRun = createRunCreator({ store, bus: bus.bus, logger: createLogger('gateway-test', 'silent'), maxActiveRuns: options.maxActiveRuns, now: () => at, random: () => 0 });
  const request = (fields: { conversationId?: string; idempotencyKey?: string } = {}) =>
    createRun({
      tenantId: 't1',
      body: { agentId: 'helper', input: 'hi', ...(fields.conversationId === undefined ? {} : { conversationId: fields.conversationId }) },
      idempotencyKey: fields.idempotencyKey,
      requestId: 'req_1',
    });
  return { memory, calls, bus, request };
}

describe('run creation: the conversation lock and the slot at once', () => {
  it('looks the agent up and sends the conversation lock and the slot in one turn, the work item once both are held, version 1 after it', async () => {
    const h = harness({ maxActiveRuns: 2 });
    const { runId } = await h.request({ conversationId: 'conv-1' });
    const firstDone = h.calls.findIndex((call) => call.endsWith(' done'));
    expect(h.calls.slice(0, firstDone).sort()).toEqual(['findAgent helper', 'insertLock t1/active-run/0', 'insertLock t1:conv-1']);
    expect(h.calls.indexOf('findAgent helper done')).toBeLessThan(h.calls.indexOf(`insertWork outbox:${runId}`));
    const work = h.calls.indexOf(`insertWork outbox:${runId}`);
    expect(h.calls.indexOf('insertLock t1:conv-1 done')).toBeLessThan(work);
    expect(h.calls.indexOf('insertLock t1/active-run/0 done')).toBeLessThan(work);
    expect(h.calls.indexOf(`insertTransition ${runId}:1`)).toBeGreaterThan(h.calls.indexOf(`insertWork outbox:${runId} done`));
    expect(h.memory.transitions.get(`${runId}:1`)!.state.runSlot).toBe(0);
  });

  it('an unknown agent is refused with the locks given back at once, and nothing else written', async () => {
    const h = harness({ maxActiveRuns: 2 });
    h.memory.agents.delete('t1:helper');
    await expect(h.request({ conversationId: 'conv-1' })).rejects.toMatchObject({ code: 'agent_not_found' });
    expect(h.calls).toContain('insertLock t1:conv-1 done');
    expect(h.memory.locks.size).toBe(0);
    expect(h.memory.work.size).toBe(0);
    expect(h.memory.transitions.size).toBe(0);
    // The conversation is free for the next creation at once.
    h.memory.agents.set('t1:helper', agent);
    expect(await h.request({ conversationId: 'conv-1' })).toMatchObject({ created: true, conversationId: 'conv-1' });
  });

  it('gives the conversation lock back when the slot insert fails, and writes no work item', async () => {
    const h = harness({
      maxActiveRuns: 2,
      override: (store) => ({
        async insertLock(lock) {
          if (isSlot(lock._id)) throw new Error('the store is gone');
          return store.insertLock(lock);
        },
      }),
    });
    await expect(h.request({ conversationId: 'conv-1' })).rejects.toThrow('the store is gone');
    expect(h.memory.locks.size).toBe(0);
    expect(h.memory.work.size).toBe(0);
    expect(h.memory.transitions.size).toBe(0);
  });

  it('gives the slot back when the conversation is busy, and the lock when no slot is free', async () => {
    const h = harness({ maxActiveRuns: 1 });
    const first = await h.request({ conversationId: 'conv-1' });
    // The conversation is busy: the slot (free here: none is held) is given back.
    h.memory.locks.delete('t1/active-run/0');
    const busy = h.request({ conversationId: 'conv-1' });
    await expect(busy).rejects.toBeInstanceOf(ApiError);
    await expect(busy).rejects.toMatchObject({ code: 'conversation_busy' });
    expect([...h.memory.locks.keys()]).toEqual(['t1:conv-1']);
    // No free slot: the lock of the other conversation is given back.
    h.memory.locks.set('t1/active-run/0', { _id: 't1/active-run/0', runId: first.runId, at });
    await expect(h.request({ conversationId: 'conv-2' })).rejects.toMatchObject({ code: 'rate_limited' });
    expect([...h.memory.locks.keys()].sort()).toEqual(['t1/active-run/0', 't1:conv-1']);
    // No work item but the first run's, deleted a moment after its start went out.
    await vi.waitFor(() => expect([...h.memory.work.keys()]).toEqual([]));
    expect(h.memory.transitions.size).toBe(1);
  });

  it('with an Idempotency-Key, a refused request gives its slot back once a read shows its run absent, and writes no work item', async () => {
    const h = harness({ maxActiveRuns: 2 });
    const runId = runIdFromIdempotencyKey('t1', 'order-1');
    await h.request({ conversationId: 'conv-1', idempotencyKey: 'order-1' });
    await expect(h.request({ conversationId: 'conv-1', idempotencyKey: 'order-2' })).rejects.toMatchObject({ code: 'conversation_busy' });
    // Its slot was given back: only the first run's slot is held.
    expect([...h.memory.locks.values()].filter((lock) => isSlot(lock._id)).map((lock) => lock.runId)).toEqual([runId]);
    expect(h.memory.work.has(`outbox:${runIdFromIdempotencyKey('t1', 'order-2')}`)).toBe(false);
  });

  it('keeps the work item when the transition insert fails (its reply may be lost), and gives the locks back when the run is absent', async () => {
    const h = harness({ maxActiveRuns: 2 });
    h.memory.failNext('insertTransition', new Error('no reply'));
    await expect(h.request({ conversationId: 'conv-1' })).rejects.toThrow('no reply');
    expect(h.memory.locks.size).toBe(0);
    expect(h.memory.work.size).toBe(1);
  });
});

describe('run creation near the tenant active-run limit (issue 9)', () => {
  /** The harness with every store read of a lock or a run counted. */
  function counted(maxActiveRuns: number) {
    const reads = { findLock: 0, loadRun: 0, loadRunSummary: 0, insertSlot: 0 };
    const h = harness({
      maxActiveRuns,
      override: (store) => ({
        findLock: async (lockId) => {
          reads.findLock += 1;
          return store.findLock(lockId);
        },
        loadRun: async (runId) => {
          reads.loadRun += 1;
          return store.loadRun(runId);
        },
        loadRunSummary: async (runId) => {
          reads.loadRunSummary += 1;
          return store.loadRunSummary(runId);
        },
        insertLock: async (lock) => {
          if (isSlot(lock._id)) reads.insertSlot += 1;
          return store.insertLock(lock);
        },
      }),
    });
    return { ...h, reads, reset: () => Object.assign(reads, { findLock: 0, loadRun: 0, loadRunSummary: 0, insertSlot: 0 }) };
  }

  it('takes the last free slot with one insert once this process knows the others are held, and refuses the next after probing every slot', async () => {
    const h = counted(50);
    for (let index = 0; index < 49; index += 1) await h.request();
    h.reset();
    await h.request();
    // The probe starts at slot 0 (random() = 0), held: the hint sends it to the free one at once.
    expect(h.reads).toEqual({ findLock: 0, loadRun: 0, loadRunSummary: 0, insertSlot: 1 });
    expect([...h.memory.locks.values()].filter((lock) => isSlot(lock._id))).toHaveLength(50);
    h.reset();
    await expect(h.request()).rejects.toMatchObject({ code: 'rate_limited' });
    // Refused by the server's answers, not the hint: every slot was tried, each holder's status read (its summary, not its whole state).
    expect(h.reads).toEqual({ findLock: 50, loadRun: 0, loadRunSummary: 50, insertSlot: 50 });
  });

  it('still finds a slot freed since it was seen held (its run ended and the orchestrator deleted it)', async () => {
    const h = counted(3);
    for (let index = 0; index < 3; index += 1) await h.request();
    const freed = [...h.memory.locks.values()].find((lock) => lock._id === 't1/active-run/1')!;
    h.memory.locks.delete(freed._id);
    const created = await h.request();
    expect(h.memory.locks.get('t1/active-run/1')?.runId).toBe(created.runId);
  });
});

describe("run creation: a conversation's history, from its latest ended run", () => {
  type Memory = ReturnType<typeof harness>['memory'];
  /** Ends `runId` as the orchestrator would: version 2, completed, with the model's answer appended. */
  function end(memory: Memory, runId: string, answer: string): void {
    const first = structuredClone(memory.transitions.get(`${runId}:1`)!);
    const state = { ...first.state, status: 'completed' as const, messages: [...first.state.messages, { role: 'assistant' as const, content: answer }] };
    memory.transitions.set(`${runId}:2`, { ...first, _id: `${runId}:2`, version: 2, published: true, state });
  }
  const messagesOf = (memory: Memory, runId: string) => memory.transitions.get(`${runId}:1`)!.state.messages;
  const noQuery = () => ({
    conversationRuns: async () => {
      throw new Error('the conversation was looked up in runs');
    },
  });
  /** A harness whose heads are complete, none recorded for `conversationIds`, and that fails if a history is looked up in `runs`. */
  function withCompleteHeads(...conversationIds: string[]) {
    const h = harness({ override: noQuery });
    for (const conversationId of conversationIds) h.memory.conversationHeads.set(`t1:${conversationId}`, null);
    return h;
  }
  /** A run of `conversationId`, created and ended with `answer`; its id. */
  async function endedRun(h: ReturnType<typeof harness>, conversationId: string, answer: string): Promise<string> {
    const { runId } = await h.request({ conversationId });
    end(h.memory, runId, answer);
    return runId;
  }

  it('takes it from the ended run whose lock the creation frees (its head not recorded yet), without the runs query', async () => {
    // None recorded (and none will be here): only the freed lock tells.
    const h = withCompleteHeads('conv-1');
    await endedRun(h, 'conv-1', 'one');
    const second = await h.request({ conversationId: 'conv-1' });
    expect(messagesOf(h.memory, second.runId)).toEqual([{ role: 'user', content: 'hi' }, { role: 'assistant', content: 'one' }, { role: 'user', content: 'hi' }]);
  });

  it('takes it from the head once the lock is released, and none when the heads are complete and the conversation has none', async () => {
    const h = withCompleteHeads('conv-1', 'conv-2');
    const first = await endedRun(h, 'conv-1', 'one');
    // Its terminal outbox: the head, then the lock's delete.
    h.memory.conversationHeads.set('t1:conv-1', first);
    h.memory.locks.delete('t1:conv-1');
    const second = await h.request({ conversationId: 'conv-1' });
    expect(messagesOf(h.memory, second.runId).map((message) => message.content)).toEqual(['hi', 'one', 'hi']);

    const fresh = await h.request({ conversationId: 'conv-2' });
    expect(messagesOf(h.memory, fresh.runId)).toEqual([{ role: 'user', content: 'hi' }]);
  });

  it('looks in runs only for a conversation without a head while the heads are not complete (one older than heads)', async () => {
    const h = harness();
    await endedRun(h, 'conv-1', 'one');
    h.memory.locks.delete('t1:conv-1');
    const second = await h.request({ conversationId: 'conv-1' });
    expect(messagesOf(h.memory, second.runId).map((message) => message.content)).toEqual(['hi', 'one', 'hi']);
  });

  it("refuses a head that names a run of another conversation (corrupt data) instead of taking that run's history", async () => {
    const h = withCompleteHeads('conv-other');
    const other = await endedRun(h, 'conv-other', 'secret');
    h.memory.conversationHeads.set('t1:conv-1', other);
    await expect(h.request({ conversationId: 'conv-1' })).rejects.toThrow(/is not of conversation conv-1/);
  });
});
