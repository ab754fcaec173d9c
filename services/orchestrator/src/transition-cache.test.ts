import { describe, expect, it } from 'vitest';
import type { RunState, TransitionDocument } from '@abide/shared';
import { testRunState } from '@abide/shared/testing';
import { createTransitionCache, type CachedTransition } from './transition-cache.ts';

function entry(runId: string, overrides: Partial<RunState> = {}, published = true): CachedTransition {
  const state = testRunState({ runId, ...overrides });
  const transition: TransitionDocument = { _id: `${runId}:2`, runId, tenantId: 't1', version: 2, at: new Date(0), cause: 'm', state, outbox: [], published };
  return { transition, lastSeq: 7 };
}

describe('transition cache', () => {
  it('keeps the latest entry per run and evicts the least recently used beyond the entry bound', () => {
    const cache = createTransitionCache({ maxEntries: 2, maxBytes: 1_000_000 });
    cache.remember('r1', entry('r1'));
    cache.remember('r2', entry('r2'));
    cache.remember('r1', entry('r1', { step: 3 })); // r1 is now the most recently used
    cache.remember('r3', entry('r3'));
    expect(cache.get('r2')).toBeUndefined();
    expect(cache.get('r1')?.transition.state.step).toBe(3);
    expect(cache.get('r3')).toBeDefined();
    expect(cache.size.entries).toBe(2);
  });

  it('bounds the sum of the entries by bytes, whatever their count', () => {
    const big = 'x'.repeat(4_000);
    let evicted = 0;
    const cache = createTransitionCache({ maxEntries: 10_000, maxBytes: 10_000, onEvict: () => (evicted += 1) });
    for (let index = 0; index < 10; index += 1) cache.remember(`r${index}`, entry(`r${index}`, { messages: [{ role: 'user', content: big }] }));
    // Each state is a little over 4 KB of JSON: only the two most recent fit in 10 KB.
    expect(cache.size.entries).toBe(2);
    expect(cache.size.bytes).toBeLessThanOrEqual(10_000);
    expect(cache.get('r9')).toBeDefined();
    expect(cache.get('r8')).toBeDefined();
    expect(cache.get('r7')).toBeUndefined();
    // Eight runs dropped for the bound (the metric operators size ORCHESTRATOR_CACHE_BYTES by) ...
    expect(evicted).toBe(8);
    // ... and none for a run that ended, or that is forgotten on purpose.
    cache.remember('r9', entry('r9', { status: 'completed' }));
    cache.delete('r8');
    expect(cache.size.entries).toBe(0);
    expect(evicted).toBe(8);
  });

  it('counts about the length of the state as JSON without its agent', () => {
    const cache = createTransitionCache({ maxEntries: 10, maxBytes: 1_000_000 });
    const messages = Array.from({ length: 20 }, (_, index) => ({ role: 'user' as const, content: `message ${index} ${'x'.repeat(500)}` }));
    const toolCalls = [{ toolCallId: 's0c0', providerToolCallId: 'p', step: 0, toolName: 'echo', args: { text: 'y'.repeat(300) }, needsApproval: false, state: 'completed' as const, outcome: { kind: 'success' as const, value: 'z'.repeat(300) } }];
    const kept = entry('r1', { messages, toolCalls });
    cache.remember('r1', kept);
    const { agentSnapshot: _agent, ...rest } = kept.transition.state;
    const agentBytes = JSON.stringify(kept.transition.state.agentSnapshot).length;
    expect(Math.abs(cache.size.bytes - agentBytes - JSON.stringify(rest).length)).toBeLessThan(64);
  });

  it('keeps no entry larger than the whole budget, and forgets the run’s older entry', () => {
    const cache = createTransitionCache({ maxEntries: 10, maxBytes: 3_000 });
    cache.remember('r1', entry('r1'));
    expect(cache.get('r1')).toBeDefined();
    cache.remember('r1', entry('r1', { messages: [{ role: 'user', content: 'x'.repeat(5_000) }] }));
    expect(cache.get('r1')).toBeUndefined();
    expect(cache.size).toEqual({ entries: 0, bytes: 0, agents: 0 });
  });

  it('drops a run that has ended once its last transition is published, and keeps it while unpublished', () => {
    const cache = createTransitionCache();
    cache.remember('r1', entry('r1', { status: 'running' }));
    cache.remember('r1', entry('r1', { status: 'completed' }, false));
    expect(cache.get('r1')?.transition.state.status).toBe('completed');
    cache.remember('r1', entry('r1', { status: 'completed' }, true));
    expect(cache.get('r1')).toBeUndefined();
    expect(cache.size).toEqual({ entries: 0, bytes: 0, agents: 0 });
  });

  it('delete forgets a run and its bytes', () => {
    const cache = createTransitionCache({ sizeOf: () => 100 });
    cache.remember('r1', entry('r1'));
    cache.remember('r2', entry('r2'));
    cache.delete('r1');
    cache.delete('unknown');
    expect(cache.get('r1')).toBeUndefined();
    // r2's 100 and its agent's, kept while r2 uses it.
    expect(cache.size).toEqual({ entries: 1, bytes: 100 + JSON.stringify(entry('r2').transition.state.agentSnapshot).length, agents: 1 });
  });

  it('keeps one copy of an agent version for all its runs, counted once, and lets it go with its last run', () => {
    const agent = { system: 'x'.repeat(4_000) };
    const cache = createTransitionCache({ maxEntries: 10_000, maxBytes: 10_000 });
    const kept = Array.from({ length: 10 }, (_, index) => entry(`r${index}`, {}, true));
    for (const [index, each] of kept.entries()) {
      each.transition.state = testRunState({ runId: `r${index}`, status: 'suspended' }, { agent });
      cache.remember(`r${index}`, each);
    }
    // Ten states of ~0.5 KB and one 4-KB agent fit in 10 KB; ten copies of it would not.
    expect(cache.size).toMatchObject({ entries: 10, agents: 1 });
    expect(cache.size.bytes).toBeLessThanOrEqual(10_000);
    expect(cache.get('r3')!.transition.state.agentSnapshot).toBe(cache.get('r7')!.transition.state.agentSnapshot);
    // Another version is another copy; the first goes when its last run does.
    cache.remember('v2', { ...entry('v2'), transition: { ...entry('v2').transition, state: testRunState({ runId: 'v2', status: 'suspended' }, { agent, agentVersion: 2 }) } });
    expect(cache.size.agents).toBe(2);
    for (let index = 0; index < 10; index += 1) cache.delete(`r${index}`);
    expect(cache.size.agents).toBe(1);
    cache.delete('v2');
    expect(cache.size).toEqual({ entries: 0, bytes: 0, agents: 0 });
  });
});
