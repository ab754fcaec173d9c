import { uiMessageChunkSchema, type ClientEvent } from '@abide/shared';
import { describe, expect, it } from 'vitest';
import { completionInput, createOpenAiTranslator, toOpenAiError } from './openai-chunks.ts';
import { createUiMessageStreamTranslator } from './ui-message-stream.ts';
import { ApiError } from '@abide/shared';

const runId = 'run_1';
let seq = 0;
const event = (type: string, fields: Record<string, unknown> = {}): ClientEvent => ({ seq: ++seq, eventId: `e${seq}`, runId, type: type as ClientEvent['type'], ts: '2026-01-01T00:00:00.000Z', ...fields });

const approvalRun = (): ClientEvent[] => [
  event('run.started', { agentId: 'a', agentVersion: 1, conversationId: 'c' }),
  event('llm.step.started', { step: 0, attempt: 1 }),
  event('message.delta', { step: 0, attempt: 1, text: 'Pay' }),
  event('message.completed', { step: 0, attempt: 1, text: 'Paying.' }),
  event('tool.call', { step: 0, toolCallId: 's0c0', toolName: 'pay', args: { amount: 1 }, needsApproval: true }),
  event('approval.requested', { toolCallId: 's0c0', toolName: 'pay', args: { amount: 1 }, expiresAt: '2026-01-01T00:30:00.000Z' }),
  event('run.suspended', { pendingApprovals: ['s0c0'] }),
  event('approval.resolved', { toolCallId: 's0c0', approved: false, source: 'chat' }),
  event('tool.result', { toolCallId: 's0c0', toolName: 'pay', result: { denied: true } }),
  event('run.resumed'),
  event('llm.step.started', { step: 1, attempt: 1 }),
  event('message.completed', { step: 1, attempt: 1, text: 'Done.' }),
  event('run.completed', { output: 'Done.', usage: { inputTokens: 1, outputTokens: 2, totalTokens: 3 } }),
];

function translate(events: ClientEvent[]) {
  const translator = createUiMessageStreamTranslator(runId);
  return [translator.start(), ...events.flatMap((item) => translator.next(item))];
}

describe('UI message stream translator', () => {
  it('gives the same chunks for the same events (stable indexes), every one valid for the client', () => {
    const events = approvalRun();
    const chunks = translate(events);
    expect(translate(events)).toEqual(chunks);
    for (const chunk of chunks) expect(uiMessageChunkSchema.safeParse(chunk).success).toBe(true);
    expect(chunks.map((chunk) => chunk.type)).toEqual([
      'start', 'start-step', 'text-start', 'text-delta', 'text-delta', 'text-end', 'tool-input-available', 'tool-approval-request',
      'finish-step', 'tool-output-denied', 'start-step', 'text-start', 'text-delta', 'text-end', 'finish-step', 'finish',
    ]);
    expect(chunks[0]).toEqual({ type: 'start', messageId: 'msg-run_1', messageMetadata: { runId } });
    expect(chunks[4]).toEqual({ type: 'text-delta', id: 'text-0', delta: 'ing.' });
    expect(chunks[7]).toEqual({ type: 'tool-approval-request', approvalId: 'run_1:s0c0', toolCallId: 's0c0' });
  });

  it('closes a part whose retried attempt diverged and sends the recorded text as a new part', () => {
    const chunks = translate([
      event('llm.step.started', { step: 0, attempt: 1 }),
      event('message.delta', { step: 0, attempt: 1, text: 'Hello wor' }),
      event('llm.step.started', { step: 0, attempt: 2 }),
      event('message.delta', { step: 0, attempt: 2, text: 'Bonjour' }),
      event('message.completed', { step: 0, attempt: 2, text: 'Bonjour.' }),
    ]);
    expect(chunks.slice(2)).toEqual([
      { type: 'text-start', id: 'text-0' },
      { type: 'text-delta', id: 'text-0', delta: 'Hello wor' },
      { type: 'text-end', id: 'text-0' },
      { type: 'text-start', id: 'text-0-final' },
      { type: 'text-delta', id: 'text-0-final', delta: 'Bonjour.' },
      { type: 'text-end', id: 'text-0-final' },
    ]);
  });

  it('ends a failed run with error then finish, and nothing after', () => {
    const translator = createUiMessageStreamTranslator(runId);
    expect(translator.next(event('run.failed', { error: { code: 'egress_denied', message: 'refused' } }))).toEqual([
      { type: 'error', errorText: 'egress_denied: refused' },
      { type: 'finish', finishReason: 'error', messageMetadata: { runId } },
    ]);
    expect(translator.next(event('run.completed', { output: '', usage: { inputTokens: 0, outputTokens: 0, totalTokens: 0 } }))).toEqual([]);
  });
});

describe('OpenAI translator', () => {
  it('joins the steps\' text with a blank line and reports the end', () => {
    const translator = createOpenAiTranslator();
    const content = approvalRun().flatMap((item) => translator.next(item).content).join('');
    expect(content).toBe('Paying.\n\nDone.');
  });

  it('takes only the last user message as new input in a conversation, and refuses system and tool messages', () => {
    expect(completionInput([{ role: 'user', content: 'a' }, { role: 'assistant', content: 'b' }, { role: 'user', content: [{ type: 'text', text: 'c' }] }], true)).toEqual([{ role: 'user', content: 'c' }]);
    expect(completionInput([{ role: 'user', content: 'a' }, { role: 'assistant', content: 'b' }, { role: 'user', content: 'c' }], false)).toHaveLength(3);
    expect(() => completionInput([{ role: 'system', content: 'x' }, { role: 'user', content: 'c' }], false)).toThrow(/system messages are not accepted/);
    expect(() => completionInput([{ role: 'user', content: 'c' }, { role: 'assistant', content: 'b' }], false)).toThrow(/last message must be a user message/);
  });

  it('maps Abide errors to OpenAI error objects', () => {
    expect(toOpenAiError(new ApiError('agent_not_found', 'agent x not found'))).toEqual({ error: { message: 'agent x not found', type: 'invalid_request_error', code: 'model_not_found', param: 'model' } });
    expect(toOpenAiError(new ApiError('unauthorized', 'no key')).error.type).toBe('authentication_error');
    expect(toOpenAiError(new ApiError('rate_limited', 'slow down')).error.type).toBe('rate_limit_error');
    expect(toOpenAiError(new ApiError('invalid_request', 'body.messages.0.role: nope')).error.param).toBe('messages.0.role');
  });
});
