import type { RunEventFields, RunEventType } from '@abide/shared';

/** An event as clients receive it (DESIGN §6). */
export type RunEvent = { [Type in RunEventType]: { seq: number; eventId: string; runId: string; type: Type; ts: string } & RunEventFields<Type> }[RunEventType];

export type ToolCallView = {
  toolCallId: string;
  toolName: string;
  step: number;
  args: unknown;
  needsApproval: boolean;
  approval: { state: 'pending' | 'approved' | 'denied'; reason?: string; source?: string; expiresAt?: string } | null;
  result?: unknown;
  error?: { code: string; message: string };
};

export type StepView = { step: number; attempt: number; text: string; completed: boolean };

export type RunModel = {
  /** The `seq` of the last event applied: the resume cursor. */
  lastSeq: number | null;
  status: 'queued' | 'running' | 'suspended' | 'completed' | 'failed' | 'cancelled';
  steps: StepView[];
  toolCalls: ToolCallView[];
  output: string | null;
  error: { code: string; message: string } | null;
  cancelReason: string | null;
  usage: { inputTokens: number; outputTokens: number; totalTokens: number } | null;
  ended: boolean;
};

export const emptyRunModel: RunModel = {
  lastSeq: null,
  status: 'queued',
  steps: [],
  toolCalls: [],
  output: null,
  error: null,
  cancelReason: null,
  usage: null,
  ended: false,
};

function withStep(model: RunModel, step: number, update: (current: StepView | undefined) => StepView | undefined): StepView[] {
  const current = model.steps.find((candidate) => candidate.step === step);
  const next = update(current);
  if (!next || next === current) return model.steps;
  const others = model.steps.filter((candidate) => candidate.step !== step);
  return [...others, next].sort((left, right) => left.step - right.step);
}

function withCall(model: RunModel, toolCallId: string, update: (call: ToolCallView) => ToolCallView): ToolCallView[] {
  return model.toolCalls.map((call) => (call.toolCallId === toolCallId ? update(call) : call));
}

/**
 * Folds one event into the run's view. Pure; an event at or before `lastSeq` (a repeat after a
 * resume) and anything after the terminal event are ignored; a `message.completed` text replaces
 * the deltas, and deltas of another attempt (a retried step) start the text afresh.
 */
export function applyRunEvent(model: RunModel, event: RunEvent): RunModel {
  if (model.ended || (model.lastSeq !== null && event.seq <= model.lastSeq)) return model;
  const next: RunModel = { ...model, lastSeq: event.seq };
  switch (event.type) {
    case 'run.started':
    case 'run.resumed':
      return { ...next, status: 'running' };
    case 'llm.step.started':
      return { ...next, steps: withStep(model, event.step, (current) => (current?.completed ? current : { step: event.step, attempt: event.attempt, text: '', completed: false })) };
    case 'message.delta':
      return {
        ...next,
        steps: withStep(model, event.step, (current) => {
          if (current?.completed) return current;
          if (!current || current.attempt !== event.attempt) return { step: event.step, attempt: event.attempt, text: event.text, completed: false };
          return { ...current, text: current.text + event.text };
        }),
      };
    case 'message.completed':
      return { ...next, steps: withStep(model, event.step, () => ({ step: event.step, attempt: event.attempt, text: event.text, completed: true })) };
    case 'tool.call':
      if (model.toolCalls.some((call) => call.toolCallId === event.toolCallId)) return next;
      return {
        ...next,
        toolCalls: [...model.toolCalls, { toolCallId: event.toolCallId, toolName: event.toolName, step: event.step, args: event.args, needsApproval: event.needsApproval, approval: null }],
      };
    case 'approval.requested':
      return {
        ...next,
        toolCalls: withCall(model, event.toolCallId, (call) => ({ ...call, args: event.args, approval: { state: 'pending', expiresAt: event.expiresAt } })),
      };
    case 'approval.resolved':
      return {
        ...next,
        toolCalls: withCall(model, event.toolCallId, (call) => ({
          ...call,
          approval: { state: event.approved ? 'approved' : 'denied', source: event.source, ...(event.reason === undefined ? {} : { reason: event.reason }) },
        })),
      };
    case 'tool.result':
      return {
        ...next,
        toolCalls: withCall(model, event.toolCallId, (call) => ({ ...call, ...(event.error ? { error: event.error } : { result: event.result }) })),
      };
    case 'run.suspended':
      return { ...next, status: 'suspended' };
    case 'run.completed':
      return { ...next, status: 'completed', output: event.output, usage: event.usage, ended: true };
    case 'run.failed':
      return { ...next, status: 'failed', error: event.error, ended: true };
    case 'run.cancelled':
      return { ...next, status: 'cancelled', cancelReason: event.reason ?? null, ended: true };
    default:
      return next;
  }
}

export const pendingCalls = (model: RunModel) => model.toolCalls.filter((call) => call.approval?.state === 'pending');
