import { describe, expect, it } from 'vitest';
import { applyDelta, applyDeltaToSummary, summarizeRunState, decodeStoredKeys, encodeDelta, encodeStoredKeys, runErrorCodes, type ApprovalLedgerEntry, type LlmResultPayload, type OutboxEntry, type RunState } from '@abide/shared';
import { testRunState } from '@abide/shared/testing';
import { deadlineHorizonMs, transition as machineTransition, type RunInput, type TransitionResult } from './run-state-machine.ts';

/** A value as storing it and reading it back gives it (stored-key escaping, JSON). */
const stored = <Value>(value: Value): Value => decodeStoredKeys(JSON.parse(JSON.stringify(encodeStoredKeys(value))) as Value);

/**
 * The state machine, with every state it produces checked against the storage encoding of
 * transitions (issue 9: a transition stores a delta against the previous state): the stored
 * delta, folded onto the stored previous state, gives exactly the new state as storing it
 * whole would, and the read model's summary (`run-summary.ts`) rolls forward by it too.
 */
function transition(...args: Parameters<typeof machineTransition>): TransitionResult {
  // The input frozen through and through: the next state shares what it does not change with
  // it (`draftOf`), so a change made in place to anything shared throws here instead of
  // silently rewriting the previous state (which the orchestrator keeps cached).
  const result = machineTransition(deepFreeze(args[0]), args[1], args[2]);
  if (result.kind === 'changed') {
    const delta = stored(encodeDelta(args[0], result.state));
    expect(applyDelta(stored(args[0]), delta)).toEqual(stored(result.state));
    // The read model's summary rolls forward by the delta alone to the new state's summary.
    expect(applyDeltaToSummary(stored(summarizeRunState(args[0])), delta)).toEqual(stored(summarizeRunState(result.state)));
  }
  return result;
}

function deepFreeze<Value>(value: Value): Value {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const member of Object.values(value)) deepFreeze(member);
  }
  return value;
}

const now = new Date('2026-11-24T10:00:00.000Z');
const context = { now };

function makeState(overrides: Partial<RunState> = {}, agent: Record<string, unknown> = {}): RunState {
  return testRunState(overrides, {
    at: now.toISOString(),
    agentVersion: 3,
    agent: {
      tools: [
        { name: 'echo', kind: 'builtin', inputSchema: { type: 'object' } },
        { name: 'pay', kind: 'http', http: { url: 'https://pay.example/api' }, inputSchema: { type: 'object' }, needsApproval: true },
        { name: 'wire', kind: 'http', http: { url: 'https://pay.example/wire' }, inputSchema: { type: 'object' }, needsApproval: true, onApprovalTimeout: 'fail' },
      ],
      ...agent,
    },
  });
}

function changed(result: TransitionResult) {
  if (result.kind !== 'changed') throw new Error(`expected a change, got ignored: ${result.reason}`);
  return result;
}

const eventTypes = (outbox: OutboxEntry[]) => outbox.filter((entry) => entry.kind === 'event').map((entry) => (entry as { type: string }).type);
const work = (outbox: OutboxEntry[]) => outbox.filter((entry) => entry.kind !== 'event');
const usage = { inputTokens: 10, outputTokens: 5, totalTokens: 15 };

function llm(step: number, fields: Partial<Extract<LlmResultPayload, { ok: true }>> = {}): RunInput {
  return { type: 'llm_result', payload: { ok: true, step, attempt: 1, text: '', toolCalls: [], finishReason: 'stop', usage, ...fields } };
}
function toolResult(toolCallId: string, step: number, value: unknown = { ok: true }): RunInput {
  return { type: 'tool_result', payload: { toolCallId, step, outcome: { kind: 'success', value } } };
}
function decision(toolCallId: string, approved: boolean, fields: Partial<ApprovalLedgerEntry> = {}): RunInput {
  return { type: 'approval_decision', toolCallId, decision: { decisionId: `dec_${toolCallId}`, approved, argsHash: 'x', source: 'user', at: now.toISOString(), ...fields } };
}

/** Applies inputs one after another, failing on any ignored one. */
function run(state: RunState, ...inputs: RunInput[]) {
  let current = state;
  let last: ReturnType<typeof changed> | undefined;
  for (const input of inputs) {
    last = changed(transition(current, input, context));
    current = last.state;
  }
  return { state: current, last: last! };
}

describe('start', () => {
  it('moves a queued run to running and asks for model step 0, events first', () => {
    const result = changed(transition(makeState(), { type: 'start' }, context));
    expect(result.state.status).toBe('running');
    expect(result.state.awaiting).toEqual({ kind: 'llm', step: 0 });
    expect(result.state.nextDeadlineAt).toBe(new Date(now.getTime() + 3_600_000).toISOString());
    expect(result.outbox).toEqual([
      { kind: 'event', type: 'run.started', payload: { agentId: 'a1', agentVersion: 3, conversationId: 'conv_1' } },
      { kind: 'llm_request', step: 0 },
    ]);
  });

  it('ignores a duplicate start', () => {
    const { state } = run(makeState(), { type: 'start' });
    expect(transition(state, { type: 'start' }, context)).toEqual({ kind: 'ignored', reason: 'run already started' });
  });
});

describe('model results', () => {
  const started = () => run(makeState(), { type: 'start' }).state;

  it('completes the run when the model answers without tool calls', () => {
    const result = changed(transition(started(), llm(0, { text: 'the answer', attempt: 2 }), context));
    expect(result.state.status).toBe('completed');
    expect(result.state.output).toBe('the answer');
    expect(result.state.usage).toEqual(usage);
    expect(result.state.llmAttempts).toEqual([2]);
    expect(result.state.messages.at(-1)).toEqual({ role: 'assistant', content: [{ type: 'text', text: 'the answer' }] });
    expect(eventTypes(result.outbox)).toEqual(['message.completed', 'run.completed']);
    expect(work(result.outbox)).toEqual([{ kind: 'release_conversation_lock', conversationId: 'conv_1' }]);
    expect(result.state.nextDeadlineAt).toBeNull();
  });

  it('records tool calls with minted ids and publishes the ones needing no approval', () => {
    const result = changed(
      transition(
        started(),
        llm(0, { text: 'calling', toolCalls: [{ providerToolCallId: 'call_a', toolName: 'echo', args: { x: 1 } }, { providerToolCallId: 'call_a', toolName: 'echo', args: { x: 2 } }] }),
        context,
      ),
    );
    expect(result.state.status).toBe('running');
    expect(result.state.awaiting).toEqual({ kind: 'tools', step: 0 });
    expect(result.state.toolCalls.map((call) => [call.toolCallId, call.providerToolCallId, call.state])).toEqual([
      ['s0c0', 'call_a', 'requested'],
      ['s0c1', 'call_a', 'requested'],
    ]);
    expect(eventTypes(result.outbox)).toEqual(['message.completed', 'tool.call', 'tool.call']);
    expect(work(result.outbox)).toEqual([
      { kind: 'tool_request', toolCallId: 's0c0' },
      { kind: 'tool_request', toolCallId: 's0c1' },
    ]);
  });

  it('ignores a result for a step that is not awaited (stale or duplicate)', () => {
    const state = started();
    expect(transition(state, llm(1), context).kind).toBe('ignored');
    const { state: afterTools } = run(state, llm(0, { toolCalls: [{ providerToolCallId: 'c', toolName: 'echo', args: {} }] }));
    expect(transition(afterTools, llm(0, { text: 'again' }), context)).toEqual({ kind: 'ignored', reason: 'not awaiting the model for step 0' });
  });

  it('fails the run with the error of a failed model step', () => {
    const result = changed(transition(started(), { type: 'llm_result', payload: { ok: false, step: 0, attempt: 6, error: { code: 'delivery_exhausted', message: 'gave up' } } }, context));
    expect(result.state.status).toBe('failed');
    expect(result.state.error).toEqual({ code: 'delivery_exhausted', message: 'gave up' });
    expect(eventTypes(result.outbox)).toEqual(['run.failed']);
  });

  it('gives an unknown tool an error result and goes on', () => {
    const result = changed(transition(started(), llm(0, { toolCalls: [{ providerToolCallId: 'c', toolName: 'nope', args: {} }] }), context));
    expect(result.state.step).toBe(1);
    expect(result.state.awaiting).toEqual({ kind: 'llm', step: 1 });
    expect(result.state.toolCalls[0]!.outcome).toEqual({ kind: 'error', error: { code: 'tool_not_found', message: 'the agent has no tool named "nope"' } });
    expect(work(result.outbox)).toEqual([{ kind: 'llm_request', step: 1 }]);
    // The code is in the registry (and so documented in docs/api.md), not a string of its own.
    expect(runErrorCodes).toContain('tool_not_found');
  });

  it('fails with max_steps_exceeded when the next step would pass maxSteps, closing the history', () => {
    const state = makeState({ status: 'running', step: 4, awaiting: { kind: 'llm', step: 4 } });
    const result = changed(transition(state, llm(4, { toolCalls: [{ providerToolCallId: 'c9', toolName: 'echo', args: {} }] }), context));
    expect(result.state.status).toBe('failed');
    expect(result.state.error?.code).toBe('max_steps_exceeded');
    expect(result.state.messages.at(-1)).toEqual({ role: 'tool', content: [{ type: 'tool-result', toolCallId: 'c9', toolName: 'echo', output: { type: 'json', value: { cancelled: true } } }] });
    expect(work(result.outbox).some((entry) => entry.kind === 'tool_request')).toBe(false);
  });
});

describe('tool results', () => {
  const withTools = () =>
    run(makeState(), { type: 'start' }, llm(0, { toolCalls: [{ providerToolCallId: 'p0', toolName: 'echo', args: { a: 1 } }, { providerToolCallId: 'p1', toolName: 'echo', args: { b: 2 } }] })).state;

  it('stores each result and starts the next step when the last one arrives', () => {
    const first = changed(transition(withTools(), toolResult('s0c1', 0, { b: 2 }), context));
    expect(first.state.step).toBe(0);
    expect(eventTypes(first.outbox)).toEqual(['tool.result']);
    expect(work(first.outbox)).toEqual([]);
    const second = changed(transition(first.state, toolResult('s0c0', 0, { a: 1 }), context));
    expect(second.state.step).toBe(1);
    expect(second.state.awaiting).toEqual({ kind: 'llm', step: 1 });
    expect(second.state.messages.at(-1)).toEqual({
      role: 'tool',
      content: [
        { type: 'tool-result', toolCallId: 'p0', toolName: 'echo', output: { type: 'json', value: { a: 1 } } },
        { type: 'tool-result', toolCallId: 'p1', toolName: 'echo', output: { type: 'json', value: { b: 2 } } },
      ],
    });
    expect(work(second.outbox)).toEqual([{ kind: 'llm_request', step: 1 }]);
  });

  it('ignores a duplicate result and a result for an unknown call', () => {
    const { state } = run(withTools(), toolResult('s0c0', 0));
    expect(transition(state, toolResult('s0c0', 0, 'other'), context).kind).toBe('ignored');
    expect(transition(state, toolResult('s9c9', 9), context).kind).toBe('ignored');
  });

  it('shows a tool error to the model as error text', () => {
    const { state } = run(withTools(), { type: 'tool_result', payload: { toolCallId: 's0c0', step: 0, outcome: { kind: 'error', error: { code: 'tool_error', message: 'HTTP 400' } } } }, toolResult('s0c1', 0));
    const toolMessage = state.messages.at(-1)!;
    expect(toolMessage.role).toBe('tool');
    expect((toolMessage.content as { output: unknown }[])[0]!.output).toEqual({ type: 'error-text', value: 'tool_error: HTTP 400' });
  });
});

describe('approvals', () => {
  const suspended = () =>
    run(
      makeState(),
      { type: 'start' },
      llm(0, {
        toolCalls: [
          { providerToolCallId: 'p0', toolName: 'pay', args: { amount: 1 } },
          { providerToolCallId: 'p1', toolName: 'pay', args: { amount: 2 } },
          { providerToolCallId: 'p2', toolName: 'echo', args: {} },
        ],
      }),
    );

  it('suspends on calls needing approval and runs the others at once', () => {
    const { state, last } = suspended();
    expect(state.status).toBe('suspended');
    expect(state.awaiting).toEqual({ kind: 'approvals', step: 0 });
    expect(state.pendingApprovals).toEqual(['s0c0', 's0c1']);
    expect(eventTypes(last.outbox)).toEqual(['message.completed', 'tool.call', 'approval.requested', 'tool.call', 'approval.requested', 'tool.call', 'run.suspended']);
    expect(work(last.outbox)).toEqual([{ kind: 'tool_request', toolCallId: 's0c2' }]);
    expect(state.nextDeadlineAt).toBe(new Date(now.getTime() + 600_000).toISOString());
  });

  it('decides each call on its own; approve runs it, deny gives the model a denial; resumes when none is pending', () => {
    const { state } = suspended();
    const approved = changed(transition(state, decision('s0c0', true), context));
    expect(approved.state.status).toBe('suspended');
    expect(work(approved.outbox)).toEqual([{ kind: 'tool_request', toolCallId: 's0c0' }]);
    const denied = changed(transition(approved.state, decision('s0c1', false, { reason: 'too much' }), context));
    expect(denied.state.status).toBe('running');
    expect(eventTypes(denied.outbox)).toEqual(['approval.resolved', 'tool.result', 'run.resumed']);
    const { state: next } = run(denied.state, toolResult('s0c2', 0), toolResult('s0c0', 0));
    expect(next.step).toBe(1);
    const outputs = (next.messages.at(-1)!.content as { output: unknown }[]).map((part) => part.output);
    expect(outputs[1]).toEqual({ type: 'execution-denied', reason: 'too much' });
    expect(next.toolCalls[1]!.approval).toMatchObject({ approved: false, source: 'user', reason: 'too much' });
  });

  it('ignores a second decision for the same call', () => {
    const { state } = run(suspended().state, decision('s0c0', true));
    expect(transition(state, decision('s0c0', false), context).kind).toBe('ignored');
  });

  it('records a tool result while still suspended without starting the next step', () => {
    const { state } = run(suspended().state, toolResult('s0c2', 0));
    expect(state.status).toBe('suspended');
    expect(state.step).toBe(0);
  });

  it('fails the run when an approval with onApprovalTimeout=fail expires', () => {
    const { state } = run(makeState(), { type: 'start' }, llm(0, { toolCalls: [{ providerToolCallId: 'w', toolName: 'wire', args: {} }] }));
    const result = changed(transition(state, decision('s0c0', false, { source: 'timeout' }), context));
    expect(result.state.status).toBe('failed');
    expect(result.state.error?.code).toBe('approval_timeout');
  });
});

describe('cancel', () => {
  it("releases the run's active-run slot with its conversation lock when it ends (issue 8)", () => {
    const result = changed(transition(makeState({ runSlot: 4 }), { type: 'cancel', payload: { reason: 'user' } }, context));
    expect(work(result.outbox)).toEqual([
      { kind: 'release_conversation_lock', conversationId: 'conv_1', runSlot: 4 },
      { kind: 'run_control', reason: 'user' },
    ]);
  });

  it('cancels a queued run', () => {
    const result = changed(transition(makeState(), { type: 'cancel', payload: { reason: 'user' } }, context));
    expect(result.state.status).toBe('cancelled');
    expect(result.state.cancelReason).toBe('user');
    expect(eventTypes(result.outbox)).toEqual(['run.cancelled']);
    expect(work(result.outbox)).toEqual([
      { kind: 'release_conversation_lock', conversationId: 'conv_1' },
      { kind: 'run_control', reason: 'user' },
    ]);
  });

  it('closes calls without a result so the conversation stays valid', () => {
    const { state } = run(makeState(), { type: 'start' }, llm(0, { toolCalls: [{ providerToolCallId: 'p0', toolName: 'echo', args: {} }] }));
    const result = changed(transition(state, { type: 'cancel', payload: {} }, context));
    expect(result.state.toolCalls[0]!.outcome).toEqual({ kind: 'cancelled' });
    expect(result.state.messages.at(-1)).toEqual({ role: 'tool', content: [{ type: 'tool-result', toolCallId: 'p0', toolName: 'echo', output: { type: 'json', value: { cancelled: true } } }] });
  });

  it('cancels a suspended run', () => {
    const { state } = run(makeState(), { type: 'start' }, llm(0, { toolCalls: [{ providerToolCallId: 'p0', toolName: 'pay', args: {} }] }));
    const result = changed(transition(state, { type: 'cancel', payload: {} }, context));
    expect(result.state.status).toBe('cancelled');
    expect(result.state.pendingApprovals).toEqual([]);
  });
});

describe('terminal runs', () => {
  it.each(['completed', 'failed', 'cancelled'] as const)('ignores every input once %s', (status) => {
    const state = makeState({ status });
    const inputs: RunInput[] = [{ type: 'start' }, llm(0), toolResult('s0c0', 0), { type: 'cancel', payload: {} }, decision('s0c0', true), { type: 'deadline' }];
    for (const input of inputs) expect(transition(state, input, context)).toEqual({ kind: 'ignored', reason: `run is ${status}` });
  });
});

describe('deadlines', () => {
  it('ignores a deadline that is not due', () => {
    const { state } = run(makeState(), { type: 'start' });
    expect(transition(state, { type: 'deadline' }, context).kind).toBe('ignored');
  });

  it('fails a model step that passed its deadline', () => {
    const state = makeState({ status: 'running', awaiting: { kind: 'llm', step: 0 }, nextDeadlineAt: new Date(now.getTime() - 1).toISOString() });
    const result = changed(transition(state, { type: 'deadline' }, context));
    expect(result.state.error?.code).toBe('model_timeout');
  });

  it('fails a tool step that passed its deadline', () => {
    const { state } = run(makeState(), { type: 'start' }, llm(0, { toolCalls: [{ providerToolCallId: 'p0', toolName: 'echo', args: {} }] }));
    const late = { ...state, nextDeadlineAt: new Date(now.getTime() - 1).toISOString() };
    const result = changed(transition(late, { type: 'deadline' }, context));
    expect(result.state.error?.code).toBe('tool_timeout');
    expect(result.state.toolCalls[0]!.outcome).toEqual({ kind: 'cancelled' });
  });
});

describe('purity', () => {
  it('does not mutate the input state and gives the same result twice', () => {
    const state = makeState();
    const snapshot = structuredClone(state);
    const first = transition(state, { type: 'start' }, context);
    const second = transition(state, { type: 'start' }, context);
    expect(state).toEqual(snapshot);
    expect(first).toEqual(second);
  });
});

describe('exhausted deliveries', () => {
  it('fails a running run with the given error and closes open calls', () => {
    const { state } = run(makeState(), { type: 'start' }, llm(0, { toolCalls: [{ providerToolCallId: 'p0', toolName: 'echo', args: {} }] }));
    const result = changed(transition(state, { type: 'fail', error: { code: 'delivery_exhausted', message: 'gone' } }, context));
    expect(result.state.status).toBe('failed');
    expect(result.state.error).toEqual({ code: 'delivery_exhausted', message: 'gone' });
    expect(result.state.toolCalls[0]!.outcome).toEqual({ kind: 'cancelled' });
    expect(eventTypes(result.outbox)).toEqual(['run.failed']);
  });
});

describe('deadline horizon', () => {
  it('is the least of the model step, tool call and approval timeouts (a tool without one: the default)', () => {
    expect(deadlineHorizonMs(makeState())).toBe(600_000);
    const agent = { limits: { llmStepTimeoutMs: 900_000 }, tools: [{ name: 'echo', kind: 'builtin', inputSchema: { type: 'object' }, timeoutMs: 1_200_000, needsApproval: true, approvalTimeoutMs: 300_000 }] };
    expect(deadlineHorizonMs(makeState({}, agent))).toBe(300_000);
  });

  it('every deadline a transition sets lies at least the horizon after it, or is an approval deadline set before', () => {
    const agent = {
      limits: { llmStepTimeoutMs: 900_000 },
      tools: [
        { name: 'echo', kind: 'builtin', inputSchema: { type: 'object' }, timeoutMs: 240_000 },
        { name: 'pay', kind: 'http', http: { url: 'https://pay.example/api' }, inputSchema: { type: 'object' }, needsApproval: true, approvalTimeoutMs: 180_000 },
      ],
    };
    let state = makeState({}, agent);
    const horizon = deadlineHorizonMs(state);
    expect(horizon).toBe(180_000);
    let clock = now.getTime();
    const inputs: RunInput[] = [
      { type: 'start' },
      llm(0, { toolCalls: [{ providerToolCallId: 'p0', toolName: 'pay', args: {} }, { providerToolCallId: 'p1', toolName: 'pay', args: {} }, { providerToolCallId: 'p2', toolName: 'echo', args: {} }] }),
      toolResult('s0c2', 0),
      { type: 'deadline' }, // early: nothing due yet
      decision('s0c0', true),
      decision('s0c1', true),
      toolResult('s0c0', 0),
      toolResult('s0c1', 0),
      llm(1, { toolCalls: [{ providerToolCallId: 'p3', toolName: 'echo', args: {} }] }),
      toolResult('s1c0', 1),
      llm(2, { text: 'done' }),
    ];
    const checked: string[] = [];
    for (const input of inputs) {
      clock += 50_000;
      const approvalDeadlines = new Set(state.toolCalls.flatMap((call) => (call.approvalExpiresAt ? [call.approvalExpiresAt] : [])));
      const result = transition(state, input, { now: new Date(clock) });
      if (result.kind !== 'changed') continue;
      const deadline = result.state.nextDeadlineAt;
      if (deadline !== null && !approvalDeadlines.has(deadline)) expect(Date.parse(deadline)).toBeGreaterThanOrEqual(clock + horizon);
      if (deadline !== null) checked.push(approvalDeadlines.has(deadline) ? 'carried' : 'set');
      state = result.state;
    }
    expect(state.status).toBe('completed');
    // Both kinds were met: deadlines set by a transition and an approval's carried past it.
    expect(checked).toContain('set');
    expect(checked).toContain('carried');
  });
});
