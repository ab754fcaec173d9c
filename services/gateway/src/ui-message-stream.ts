import { chatApprovalId, chatMessageId, type ClientEvent, type ErrorInfo, type UiMessageChunk, type Usage } from '@abide/shared';
import { createRunTextTracker, type TextPiece } from './run-text.ts';

/**
 * A run's events as the AI SDK's UI message stream (`CLIENTS.md` §1), as a pure translator: the
 * same events in the same (seq) order always give the same chunks, so a chunk's index is a
 * cursor that every replay and every gateway replica agrees on.
 *
 * `start` (index 0) carries the message id derived from the run id; then per event:
 * `llm.step.started` → `start-step` (first attempt of a step, after `finish-step` of the one
 * before), deltas → `text-*`, `tool.call` → `tool-input-available`, `approval.requested` →
 * `tool-approval-request` (approval id `<runId>:<toolCallId>`), a denial → `tool-output-denied`,
 * `tool.result` → `tool-output-available` / `tool-output-error`, `run.suspended` → `finish-step`,
 * `run.completed` → `finish` (`stop`), `run.failed` → `error` then `finish` (`error`),
 * `run.cancelled` → `abort` then `finish` (`other`). `finish` ends the sequence.
 */
export function createUiMessageStreamTranslator(runId: string) {
  const text = createRunTextTracker();
  const denied = new Set<string>();
  let stepOpen = false;
  let lastStep = -1;
  let finished = false;

  const textChunk = (piece: TextPiece): UiMessageChunk =>
    piece.kind === 'open' ? { type: 'text-start', id: piece.partId } : piece.kind === 'delta' ? { type: 'text-delta', id: piece.partId, delta: piece.text } : { type: 'text-end', id: piece.partId };

  function closeStep(): UiMessageChunk[] {
    const chunks = text.closeAll().map(textChunk);
    if (stepOpen) chunks.push({ type: 'finish-step' });
    stepOpen = false;
    return chunks;
  }

  function end(chunks: UiMessageChunk[]): UiMessageChunk[] {
    finished = true;
    return chunks;
  }

  return {
    /** The first chunk of the stream. */
    start(): UiMessageChunk {
      return { type: 'start', messageId: chatMessageId(runId), messageMetadata: { runId } };
    },
    /** True once `finish` was produced. */
    get finished() {
      return finished;
    },
    next(event: ClientEvent): UiMessageChunk[] {
      if (finished) return [];
      switch (event.type) {
        case 'llm.step.started': {
          const step = event.step as number;
          if (step <= lastStep) return [];
          lastStep = step;
          const chunks = closeStep();
          stepOpen = true;
          chunks.push({ type: 'start-step' });
          return chunks;
        }
        case 'message.delta':
        case 'message.completed':
          return text.next(event).map(textChunk);
        case 'tool.call':
          return [{ type: 'tool-input-available', toolCallId: event.toolCallId as string, toolName: event.toolName as string, input: event.args ?? {} }];
        case 'approval.requested':
          return [{ type: 'tool-approval-request', approvalId: chatApprovalId(runId, event.toolCallId as string), toolCallId: event.toolCallId as string }];
        case 'approval.resolved':
          if (event.approved === true) return [];
          denied.add(event.toolCallId as string);
          return [{ type: 'tool-output-denied', toolCallId: event.toolCallId as string }];
        case 'tool.result': {
          const toolCallId = event.toolCallId as string;
          if (denied.has(toolCallId)) return [];
          const error = event.error as ErrorInfo | undefined;
          if (error) return [{ type: 'tool-output-error', toolCallId, errorText: `${error.code}: ${error.message}` }];
          return [{ type: 'tool-output-available', toolCallId, output: event.result ?? null }];
        }
        case 'run.suspended':
          return closeStep();
        case 'run.completed':
          return end([...closeStep(), { type: 'finish', finishReason: 'stop', messageMetadata: { runId, usage: event.usage as Usage } }]);
        case 'run.failed': {
          const error = event.error as ErrorInfo;
          return end([...closeStep(), { type: 'error', errorText: `${error.code}: ${error.message}` }, { type: 'finish', finishReason: 'error', messageMetadata: { runId } }]);
        }
        case 'run.cancelled':
          return end([
            ...closeStep(),
            { type: 'abort', ...(typeof event.reason === 'string' ? { reason: event.reason } : {}) },
            { type: 'finish', finishReason: 'other', messageMetadata: { runId } },
          ]);
        default:
          return [];
      }
    },
  };
}

/** The `finish` that ends a response while the run waits for approvals (not part of the indexed sequence: the run goes on later). */
export const suspendedFinishChunk = (runId: string): UiMessageChunk => ({ type: 'finish', finishReason: 'tool-calls', messageMetadata: { runId, status: 'suspended' } });

/** A UI message stream answer that is only an error (a refused approval): `error`, `finish`. */
export const errorChunks = (errorText: string): UiMessageChunk[] => [
  { type: 'error', errorText },
  { type: 'finish', finishReason: 'error' },
];

/** One SSE frame of the UI message stream (`json-to-sse-transform-stream.ts`). */
export const formatUiChunk = (chunk: UiMessageChunk): string => `data: ${JSON.stringify(chunk)}\n\n`;
export const uiStreamDone = 'data: [DONE]\n\n';
