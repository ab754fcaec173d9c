import { describe, expect, it } from 'vitest';
import { applyRunEvent, emptyRunModel, pendingCalls, type RunEvent, type RunModel } from './run-model.ts';

const base = { eventId: 'e', runId: 'run_1', ts: '2030-01-01T00:00:00.000Z' };
const events: RunEvent[] = [
  { ...base, seq: 1, type: 'run.started', agentId: 'a', agentVersion: 1, conversationId: 'c' },
  { ...base, seq: 2, type: 'llm.step.started', step: 0, attempt: 1 },
  { ...base, seq: 3, type: 'message.delta', step: 0, attempt: 1, text: 'Hel' },
  { ...base, seq: 4, type: 'message.delta', step: 0, attempt: 2, text: 'Hi' },
  { ...base, seq: 5, type: 'message.completed', step: 0, attempt: 2, text: 'Hi there' },
  { ...base, seq: 6, type: 'tool.call', step: 0, toolCallId: 's0c0', toolName: 'echo', args: { text: 'x' }, needsApproval: true },
  { ...base, seq: 7, type: 'approval.requested', toolCallId: 's0c0', toolName: 'echo', args: { text: 'x' }, expiresAt: '2030-01-01T00:30:00.000Z' },
  { ...base, seq: 8, type: 'run.suspended', pendingApprovals: ['s0c0'] },
];
const fold = (list: RunEvent[], from: RunModel = emptyRunModel) => list.reduce(applyRunEvent, from);

describe('applyRunEvent', () => {
  it('streams text, replaces it with the recorded attempt, and shows a pending approval', () => {
    const model = fold(events);
    expect(model).toMatchObject({ lastSeq: 8, status: 'suspended', steps: [{ step: 0, attempt: 2, text: 'Hi there', completed: true }] });
    expect(pendingCalls(model).map((call) => call.toolCallId)).toEqual(['s0c0']);
    expect(fold(events.slice(0, 4)).steps[0]).toMatchObject({ attempt: 2, text: 'Hi', completed: false });
  });

  it('ignores repeats after a resume and everything after the terminal event', () => {
    const done = fold(
      [
        { ...base, seq: 9, type: 'approval.resolved', toolCallId: 's0c0', approved: true, source: 'user' },
        { ...base, seq: 10, type: 'tool.result', toolCallId: 's0c0', toolName: 'echo', result: { text: 'x' } },
        { ...base, seq: 11, type: 'run.completed', output: 'ok', usage: { inputTokens: 1, outputTokens: 2, totalTokens: 3 } },
        { ...base, seq: 12, type: 'run.failed', error: { code: 'internal', message: 'late' } },
      ],
      fold(events),
    );
    expect(done).toMatchObject({ status: 'completed', output: 'ok', ended: true, lastSeq: 11, error: null });
    expect(done.toolCalls[0]).toMatchObject({ approval: { state: 'approved' }, result: { text: 'x' } });
    // A resumed subscription that replays from an older cursor changes nothing.
    expect(fold(events, fold(events))).toEqual(fold(events));
  });
});
