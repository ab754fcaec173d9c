import {
  ApiError,
  type ApiError as ApiErrorType,
  type ClientEvent,
  type ErrorInfo,
  type ModelMessage,
  type OpenAiChunk,
  type OpenAiErrorBody,
  type OpenAiMessage,
  type OpenAiUsage,
  type Usage,
} from '@abide/shared';
import { createRunTextTracker } from './run-text.ts';

/** How a completion's run ended, as far as the completion is concerned. */
export type CompletionEnd =
  | { kind: 'completed'; usage: Usage }
  | { kind: 'failed'; error: ErrorInfo }
  | { kind: 'cancelled'; reason?: string | undefined };

/**
 * A run's events as OpenAI completion content, as a pure translator: the text of every model
 * step, in order, steps separated by a blank line (the run's own tools are executed by Abide
 * and are not shown as `tool_calls`: a client would try to run them). The same events give the
 * same content, so streaming and non-streaming answers agree.
 */
export function createOpenAiTranslator() {
  const text = createRunTextTracker();
  let wroteText = false;
  return {
    next(event: ClientEvent): { content: string[]; end?: CompletionEnd } {
      if (event.type === 'message.delta' || event.type === 'message.completed') {
        const content: string[] = [];
        for (const piece of text.next(event)) {
          if (piece.kind === 'open' && wroteText) content.push('\n\n');
          if (piece.kind === 'delta') {
            content.push(piece.text);
            wroteText = true;
          }
        }
        return { content };
      }
      if (event.type === 'run.completed') return { content: [], end: { kind: 'completed', usage: event.usage as Usage } };
      if (event.type === 'run.failed') return { content: [], end: { kind: 'failed', error: event.error as ErrorInfo } };
      if (event.type === 'run.cancelled') return { content: [], end: { kind: 'cancelled', reason: event.reason as string | undefined } };
      return { content: [] };
    },
  };
}

export const toOpenAiUsage = (usage: Usage): OpenAiUsage => ({ prompt_tokens: usage.inputTokens, completion_tokens: usage.outputTokens, total_tokens: usage.totalTokens });

/** The chunk of `choices[0]` with `delta` and `finish_reason`. */
export function openAiChunk(fields: { id: string; created: number; model: string }, delta: OpenAiChunk['choices'][number]['delta'], finishReason: OpenAiChunk['choices'][number]['finish_reason'] = null): OpenAiChunk {
  return { id: fields.id, object: 'chat.completion.chunk', created: fields.created, model: fields.model, choices: [{ index: 0, delta, finish_reason: finishReason }] };
}

/** OpenAI's error `type` for an HTTP status (openai-node maps statuses to error classes the same way). */
function openAiErrorType(status: number): string {
  if (status === 401) return 'authentication_error';
  if (status === 403) return 'permission_error';
  if (status === 429) return 'rate_limit_error';
  if (status >= 500) return 'server_error';
  return 'invalid_request_error';
}

/** An Abide error in OpenAI's shape: `{ error: { message, type, code, param } }` (an unknown agent is `model_not_found` on `model`). */
export function toOpenAiError(error: ApiErrorType): OpenAiErrorBody {
  const modelMissing = error.code === 'agent_not_found';
  const param = modelMissing ? 'model' : (/^body\.([A-Za-z_.0-9]+)/.exec(error.message)?.[1] ?? null);
  return { error: { message: error.message, type: openAiErrorType(error.status), code: modelMissing ? 'model_not_found' : error.code, param } };
}

/** A run's end as an OpenAI error object (a failed or cancelled run; sent as an SSE `data:` mid-stream). */
export function runEndError(end: Exclude<CompletionEnd, { kind: 'completed' }>): OpenAiErrorBody {
  if (end.kind === 'failed') return { error: { message: end.error.message, type: 'server_error', code: end.error.code, param: null } };
  return { error: { message: `the run was cancelled${end.reason ? `: ${end.reason}` : ''}`, type: 'server_error', code: 'run_cancelled', param: null } };
}

function textOf(message: OpenAiMessage, index: number): string {
  const { content } = message;
  if (content === null || content === undefined) return '';
  if (typeof content === 'string') return content;
  return content
    .map((part, partIndex) => {
      if (part.type !== 'text' || typeof part.text !== 'string') throw new ApiError('invalid_request', `body.messages.${index}.content.${partIndex}: only text parts are supported`);
      return part.text;
    })
    .join('');
}

/**
 * The run input of a completion request. With a conversation (header), only the last message,
 * which must be the user's, is new: the history is Abide's. Without one, the messages (user and
 * assistant text) are the input of a new conversation. System and developer messages are
 * refused: the agent's `system` is the system prompt; tool messages too: Abide runs the tools.
 */
export function completionInput(messages: readonly OpenAiMessage[], inConversation: boolean): ModelMessage[] {
  const selected = inConversation ? messages.slice(-1) : messages;
  const offset = messages.length - selected.length;
  const input = selected.map((message, position): ModelMessage => {
    const index = offset + position;
    if (message.role === 'user') return { role: 'user', content: textOf(message, index) };
    if (message.role === 'assistant' && (message.tool_calls?.length ?? 0) === 0) return { role: 'assistant', content: textOf(message, index) };
    throw new ApiError('invalid_request', `body.messages.${index}.role: ${message.role} messages are not accepted (the agent's system prompt and tools are used)`);
  });
  const last = input.at(-1);
  if (!last || last.role !== 'user' || last.content === '') throw new ApiError('invalid_request', 'body.messages: the last message must be a user message with text');
  return input;
}
