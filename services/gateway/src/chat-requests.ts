import {
  ApiError,
  chatApprovalIdSchema,
  createRunBodySchema,
  hashJson,
  idempotencyKeySchema,
  respondedToolPartSchema,
  type ChatRequestBody,
  type UiMessage,
  type UiMessageChunk,
} from '@abide/shared';
import type { Caller } from './auth.ts';
import { runUiStream } from './chat-runs.ts';
import { toApiError } from './http-errors.ts';
import { findTenantRun } from './run-access.ts';
import type { Services } from './services.ts';
import { errorChunks, suspendedFinishChunk } from './ui-message-stream.ts';
import { parseOr400 } from './validation.ts';

/** Which chunks of a run's stream a response carries. */
export type ChunkSelection = {
  /** Chunks from this index on (`start` is 0). */
  fromIndex: number;
  /** A continuation after decisions: `start`, then what follows the first suspension on one of these calls. */
  afterSuspensionOf?: readonly string[];
  /** Leave out the first chunks of the selection (a reconnect into a continuation counts from its own start). */
  skipFirst?: number;
};

/** What a chat request (HTTP POST or WebSocket `send`) answers with. */
export type ChatPlan =
  /** `created`: this request created the run a moment ago (`openRunEvents`). */
  | { kind: 'run'; runId: string; conversationId: string; selection: ChunkSelection; created: boolean }
  | { kind: 'refused'; errorText: string };

/** A chunk of a response, with its index in the run's stream (the suspension's `finish` comes last, unindexed in the run). */
export type ResponseChunk = { index: number; chunk: UiMessageChunk };

/** The text of the user message that starts a run (only text parts carry input). */
function userInput(message: UiMessage): string {
  const unsupported = message.parts.find((part) => part.type !== 'text' && part.type !== 'step-start');
  if (unsupported) throw new ApiError('invalid_request', `body.messages: a user message may only have text parts (got ${unsupported.type})`);
  const text = message.parts.map((part) => (typeof part.text === 'string' ? part.text : '')).join('');
  if (text === '') throw new ApiError('invalid_request', 'body.messages: the last user message has no text');
  return text;
}

/**
 * Records the decisions carried by an assistant message's `approval-responded` tool parts
 * (`CLIENTS.md` §3) through the approval service: same ledger, same rules, source `chat`. An
 * approval id that is not one of this chat's runs (another tenant's, agent's or chat's, or made
 * up) and a refused decision (404/409/400) become the text of an error chunk, never a 5xx.
 */
async function decideFromChat(services: Services, maxBodyBytes: number, caller: Caller, agentId: string, chatId: string, message: UiMessage): Promise<ChatPlan> {
  const parts = message.parts.filter((part) => (part as { state?: unknown }).state === 'approval-responded');
  if (parts.length === 0) throw new ApiError('invalid_request', 'body.messages: the last message is an assistant message without approval responses');
  let runId: string | undefined;
  const toolCallIds: string[] = [];
  const problems: string[] = [];
  for (const raw of parts) {
    const part = parseOr400(respondedToolPartSchema, raw, 'body.messages.parts');
    const approvalId = chatApprovalIdSchema.safeParse(part.approval.id);
    const run = approvalId.success && approvalId.data.toolCallId === part.toolCallId ? await findTenantRun(services.store, caller.tenantId, approvalId.data.runId) : null;
    if (!run || run.state.agentId !== agentId || run.state.conversationId !== chatId || (runId !== undefined && runId !== run.state.runId)) {
      problems.push(`approval ${part.approval.id} is not an approval of this chat`);
      continue;
    }
    runId = run.state.runId;
    const call = run.state.toolCalls.find((candidate) => candidate.toolCallId === part.toolCallId);
    const input = part.input;
    // The client's `input` is the approved arguments: edited ones go through the tool's schema like `args` over HTTP.
    const edited = part.approval.approved && call !== undefined && typeof input === 'object' && input !== null && !Array.isArray(input) && hashJson(input) !== hashJson(call.args);
    try {
      await services.approvals.decide(
        caller,
        {
          runId,
          toolCallId: part.toolCallId,
          approved: part.approval.approved,
          source: 'chat',
          ...(part.approval.reason === undefined ? {} : { reason: part.approval.reason }),
          ...(edited ? { args: input as Record<string, unknown> } : {}),
        },
        // The whole run, read above to check the approval is of this chat.
        { summary: run, whole: async () => run },
      );
      toolCallIds.push(part.toolCallId);
    } catch (error) {
      const apiError = toApiError(error, { maxBodyBytes });
      // A dependency failure fails the request (503); a refused decision is answered in the stream.
      if (apiError.status >= 500) throw error;
      problems.push(`${apiError.code}: ${apiError.message}`);
    }
  }
  if (problems.length > 0 || runId === undefined) return { kind: 'refused', errorText: problems.join('; ') || 'no approval to decide' };
  return { kind: 'run', runId, conversationId: chatId, selection: { fromIndex: 0, afterSuspensionOf: toolCallIds }, created: false };
}

/**
 * A chat request (`DefaultChatTransport`'s POST body, or a WebSocket `send` frame): a user
 * message starts a run of the conversation through `createRun` (rate and capacity limits apply;
 * the user message id is the idempotency key, so a retried request finds its run); an assistant
 * message with approval responses decides them and continues the same run.
 */
export async function planChatRequest(services: Services, maxBodyBytes: number, request: { caller: Caller; agentId: string; body: ChatRequestBody; requestId: string }): Promise<ChatPlan> {
  const { caller, agentId, body } = request;
  if (body.trigger === 'regenerate-message') {
    throw new ApiError('invalid_request', "body.trigger: regenerate-message is not supported: the conversation's history is kept by Abide");
  }
  const last = body.messages.at(-1)!;
  if (last.role === 'assistant') {
    if (body.id === undefined) throw new ApiError('invalid_request', 'body.id: approval responses need the chat id');
    return decideFromChat(services, maxBodyBytes, caller, agentId, body.id, last);
  }
  if (last.role !== 'user') throw new ApiError('invalid_request', 'body.messages: the last message must be a user message or an assistant message with approval responses');
  const key = body.id === undefined ? undefined : idempotencyKeySchema.safeParse(`chat:${body.id}:${last.id}`);
  const created = await services.createRun({
    tenantId: caller.tenantId,
    // The same limits as `POST /v1/runs` (input size, ids).
    body: parseOr400(createRunBodySchema, { agentId, input: userInput(last), ...(body.id === undefined ? {} : { conversationId: body.id }) }, 'body'),
    idempotencyKey: key?.success ? key.data : undefined,
    requestId: request.requestId,
  });
  return { kind: 'run', runId: created.runId, conversationId: created.conversationId, selection: { fromIndex: 0 }, created: created.created };
}

/**
 * The chunks of a response: the run's stream per `selection`, ending after `finish` or at a
 * suspension the run still waits in (then a `finish` of reason `tool-calls`). `complete()` tells
 * whether the end was reached (not cut by the client leaving or the relay failing).
 */
export async function* responseChunks(services: Services, request: { tenantId: string; runId: string; selection: ChunkSelection; signal: AbortSignal; created?: boolean }): AsyncGenerator<ResponseChunk & { last: boolean }, void, undefined> {
  const { selection } = request;
  let skipping = selection.afterSuspensionOf !== undefined;
  let lastIndex = 0;
  let toSkip = selection.skipFirst ?? 0;
  for await (const item of runUiStream(services, request)) {
    if (item.kind === 'chunk') {
      lastIndex = item.index;
      const last = item.chunk.type === 'finish';
      if ((skipping && item.index === 0) || (!skipping && item.index >= selection.fromIndex) || (skipping && last)) {
        if (toSkip > 0) toSkip -= 1;
        else yield { index: item.index, chunk: item.chunk, last };
      }
      if (last) return;
    } else if (skipping) {
      const pending = (item.event.pendingApprovals as string[] | undefined) ?? [];
      if (pending.some((toolCallId) => selection.afterSuspensionOf!.includes(toolCallId))) skipping = false;
    } else if (item.waiting) {
      if (toSkip > 0) return;
      yield { index: lastIndex + 1, chunk: suspendedFinishChunk(request.runId), last: true };
      return;
    }
  }
}

/** The chunks of a refused chat request: `error`, `finish`. */
export const refusalChunks = (errorText: string): Array<ResponseChunk & { last: boolean }> =>
  errorChunks(errorText).map((chunk, index, all) => ({ index, chunk, last: index === all.length - 1 }));
