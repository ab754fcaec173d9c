import { describe, expect, it } from 'vitest';
import { applyDelta, encodeDelta, RunDeltaMismatchError } from './run-delta.ts';
import { zeroUsage, type RunState, type ToolCallRecord } from './run-state.ts';
import { applyDeltaToSummary, summarizeRunState } from './run-summary.ts';
import { testRunState } from './testing/run-state.ts';

const at = '2026-11-30T00:00:00.000Z';

function state(overrides: Partial<RunState> = {}): RunState {
  return testRunState({ status: 'running', awaiting: { kind: 'llm', step: 0 }, metadata: { a: 1 }, ...overrides }, { at });
}

const call = (toolCallId: string, fields: Partial<ToolCallRecord> = {}): ToolCallRecord => ({
  toolCallId,
  providerToolCallId: `p_${toolCallId}`,
  step: 0,
  toolName: 'echo',
  args: { text: toolCallId },
  needsApproval: false,
  state: 'requested',
  ...fields,
});

describe('run deltas', () => {
  it('stores only the header, the appended tail and the changed tool calls, and folds back exactly', () => {
    const previous = state({ messages: [{ role: 'user', content: 'hello' }, { role: 'assistant', content: 'a' }], toolCalls: [call('c1'), call('c2')], llmAttempts: [1] });
    const next = state({
      step: 1,
      messages: [...previous.messages, { role: 'tool', content: [] }],
      toolCalls: [previous.toolCalls[0]!, call('c2', { state: 'completed', outcome: { kind: 'success', value: 2 } }), call('c3')],
      llmAttempts: [1, 2],
      updatedAt: '2026-11-30T00:00:01.000Z',
    });
    const delta = encodeDelta(previous, next);
    expect(delta.set).toEqual({ status: 'running', step: 1, awaiting: { kind: 'llm', step: 0 }, nextDeadlineAt: null, usage: zeroUsage, updatedAt: '2026-11-30T00:00:01.000Z' });
    expect(delta.append).toEqual({ messages: { from: 2, length: 3, items: [{ role: 'tool', content: [] }] }, llmAttempts: { from: 1, length: 2, items: [2] } });
    expect(delta.toolCalls).toEqual({ from: 2, length: 3, changed: [{ index: 1, record: next.toolCalls[1] }, { index: 2, record: next.toolCalls[2] }] });
    expect(delta.unset).toBeUndefined();
    expect(applyDelta(previous, delta)).toEqual(next);
  });

  it('keeps the delta the same size however long the run already is', () => {
    const sizeAfter = (earlierMessages: number) => {
      const messages = Array.from({ length: earlierMessages }, (_, index) => ({ role: 'user' as const, content: `message ${index}` }));
      const previous = state({ messages });
      return JSON.stringify(encodeDelta(previous, state({ messages: [...messages, { role: 'assistant', content: 'next' }] }))).length;
    };
    // Only the digits of the lengths differ.
    expect(Math.abs(sizeAfter(1_000) - sizeAfter(5))).toBeLessThanOrEqual(6);
  });

  it('stores a field whole when its change is not an append (a rewritten message, a removed tool call)', () => {
    const previous = state({ messages: [{ role: 'user', content: 'hello' }, { role: 'assistant', content: 'a' }], toolCalls: [call('c1'), call('c2')] });
    const next = state({ messages: [{ role: 'user', content: 'changed' }, { role: 'assistant', content: 'a' }, { role: 'assistant', content: 'b' }], toolCalls: [call('c2')] });
    const delta = encodeDelta(previous, next);
    expect(delta.set.messages).toEqual(next.messages);
    expect(delta.set.toolCalls).toEqual(next.toolCalls);
    expect(delta.append).toBeUndefined();
    expect(delta.toolCalls).toBeUndefined();
    expect(applyDelta(previous, delta)).toEqual(next);
  });

  it('records fields the new state no longer has, and changed non-header fields whole', () => {
    const previous = state({ runSlot: 3 });
    const next = state({ status: 'completed', output: 'done', metadata: null });
    const delta = encodeDelta(previous, next);
    expect(delta.unset).toEqual(['runSlot']);
    expect(delta.set).toMatchObject({ status: 'completed', output: 'done', metadata: null });
    expect(applyDelta(previous, delta)).toEqual(next);
    expect('runSlot' in applyDelta(previous, delta)).toBe(false);
  });

  it('refuses to fold a delta onto a state it was not made from', () => {
    const base = state();
    const longer = state({ messages: [...base.messages, { role: 'assistant', content: 'a' }] });
    const appended = encodeDelta(longer, state({ messages: [...longer.messages, { role: 'user', content: 'b' }] }));
    expect(() => applyDelta(base, appended)).toThrow(RunDeltaMismatchError);
    const withCalls = state({ toolCalls: [call('c1')] });
    const changedCall = encodeDelta(withCalls, state({ toolCalls: [call('c1', { state: 'completed' })] }));
    expect(() => applyDelta(state({ toolCalls: [call('other')] }), changedCall)).toThrow(RunDeltaMismatchError);
    expect(() => applyDelta(state(), changedCall)).toThrow(RunDeltaMismatchError);
  });
});

describe('run summaries (the read model)', () => {
  it('keep no messages, finished calls, attempts or agent, only the pending calls, and roll forward by deltas', () => {
    const pending = call('c2', { needsApproval: true, state: 'awaiting_approval', approvalExpiresAt: at });
    const previous = state({ messages: [{ role: 'user', content: 'hello' }], toolCalls: [call('c1', { state: 'completed' })], llmAttempts: [1] });
    const next = state({ status: 'suspended', messages: [...previous.messages, { role: 'assistant', content: 'b' }], toolCalls: [previous.toolCalls[0]!, pending], pendingApprovals: ['c2'], llmAttempts: [1, 1] });
    const summary = summarizeRunState(next);
    expect(Object.keys(summary)).not.toContain('messages');
    expect(Object.keys(summary)).not.toContain('agentSnapshot');
    expect(Object.keys(summary)).not.toContain('llmAttempts');
    expect(summary).toMatchObject({ agentVersion: 1, status: 'suspended', toolCalls: [pending], pendingApprovals: ['c2'] });
    expect(applyDeltaToSummary(summarizeRunState(previous), encodeDelta(previous, next))).toEqual(summary);
  });

  it('cannot roll forward when a pending call is in neither the delta nor the summary', () => {
    const pending = call('c1', { needsApproval: true, state: 'awaiting_approval' });
    const previous = state({ toolCalls: [pending] }); // recorded, not yet pending (no such transition exists; a broken summary looks alike)
    const next = state({ toolCalls: [pending], pendingApprovals: ['c1'], status: 'suspended' });
    expect(applyDeltaToSummary(summarizeRunState(previous), encodeDelta(previous, next))).toBeNull();
  });
});
