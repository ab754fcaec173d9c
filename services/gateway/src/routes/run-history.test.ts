import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { auth, createTestApp, scriptedAgent, type TestApp } from '../testing/test-app.ts';

let t: TestApp;
let runId: string;
beforeEach(async () => {
  t = createTestApp();
  await t.app.inject({ method: 'PUT', url: '/v1/agents/helper', headers: auth(), payload: scriptedAgent });
  runId = (await t.app.inject({ method: 'POST', url: '/v1/runs', headers: auth(), payload: { agentId: 'helper', input: 'hi' } })).json().runId;
  // Versions 2..12: past 9 → 10, where `<runId>:10` sorts before `<runId>:2` as a string.
  for (let step = 1; step <= 11; step += 1) {
    t.memory.advance(runId, (state) => {
      state.status = step === 11 ? 'completed' : 'running';
      state.step = step;
      state.awaiting = { kind: step === 11 ? null : 'llm', step };
    });
  }
});
afterEach(async () => {
  await t.app.close();
});

const history = (query = '', headers: Record<string, string> = auth()) => t.app.inject({ method: 'GET', url: `/v1/runs/${runId}/history${query}`, headers });

describe('GET /v1/runs/:runId/history', () => {
  it('pages through every transition in version order (numeric, not string order) with a cursor', async () => {
    const first = await history('?limit=5');
    expect(first.statusCode).toBe(200);
    expect(first.json().transitions.map((transition: { version: number }) => transition.version)).toEqual([1, 2, 3, 4, 5]);
    expect(first.json().transitions[0]).toMatchObject({ version: 1, status: 'queued', step: 0, awaiting: null, cause: expect.any(String), at: expect.any(String) });
    expect(first.json().nextCursor).toBe('5');

    const second = await history(`?limit=5&after=${first.json().nextCursor}`);
    expect(second.json().transitions.map((transition: { version: number }) => transition.version)).toEqual([6, 7, 8, 9, 10]);
    const third = await history(`?limit=5&after=${second.json().nextCursor}`);
    expect(third.json()).toMatchObject({ nextCursor: null, transitions: [{ version: 11 }, { version: 12, status: 'completed', step: 11 }] });

    const all = await history();
    expect(all.json().transitions).toHaveLength(12);
    expect(all.json().nextCursor).toBeNull();
    expect((await history('?after=12')).json()).toEqual({ transitions: [], nextCursor: null });
  });

  it("answers another tenant's run exactly like a missing one (404), and refuses a bad cursor (400)", async () => {
    const foreign = await history('', auth('t2'));
    expect(foreign.statusCode).toBe(404);
    expect(foreign.json().error.code).toBe('run_not_found');
    const missing = await t.app.inject({ method: 'GET', url: '/v1/runs/run_missing/history', headers: auth() });
    expect(missing.statusCode).toBe(404);
    expect((await history('?after=-1')).json().error.code).toBe('invalid_cursor');
    expect((await history('?after=abc')).json().error.code).toBe('invalid_cursor');
    expect((await history('?limit=1000')).json().error.code).toBe('invalid_request');
    expect((await history('', {})).statusCode).toBe(401);
  });

  it('answers 410 run_history_pruned for a run whose history retention deleted, also when it goes during a page', async () => {
    const { store } = t.memory;
    const loadRun = store.loadRun.bind(store);
    let pruned = false;
    store.loadRun = async (id) => {
      const run = await loadRun(id);
      return run && pruned ? { ...run, pruned: true } : run;
    };
    pruned = true;
    for (const query of ['', '?after=3&limit=2']) {
      const answer = await history(query);
      expect(answer.statusCode).toBe(410);
      expect(answer.json().error.code).toBe('run_history_pruned');
    }
    // Another tenant still learns nothing about the run.
    expect((await history('', auth('t2'))).statusCode).toBe(404);

    // Pruned between reading the run and reading its transitions: the same answer, not a 500.
    pruned = false;
    const loadTransitionHeader = store.loadTransitionHeader.bind(store);
    store.loadTransitionHeader = async (id, version) => {
      if (version < 3) return loadTransitionHeader(id, version);
      pruned = true;
      return null;
    };
    const during = await history();
    expect(during.statusCode).toBe(410);
    expect(during.json().error.code).toBe('run_history_pruned');
  });
});
