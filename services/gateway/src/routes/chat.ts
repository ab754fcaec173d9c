import {
  ApiError,
  chatAgentParamsSchema,
  chatApprovalIdSchema,
  chatParamsSchema,
  chatRequestBodySchema,
  chatStreamQuerySchema,
  hashJson,
  idempotencyKeySchema,
  respondedToolPartSchema,
  runIdHeader,
  conversationIdHeader,
  uiMessageStreamHeaders,
  type ChatRequestBody,
  type UiMessage,
  type UiMessageChunk,
} from '@abide/shared';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Caller } from '../auth.ts';
import { findChatRun, runUiStream, type RunStreamItem } from '../chat-runs.ts';
import { toApiError } from '../http-errors.ts';
import { findTenantRun } from '../run-access.ts';
import { errorChunks, formatUiChunk, suspendedFinishChunk, uiStreamDone } from '../ui-message-stream.ts';
import { parseOr400 } from '../validation.ts';
import type { RouteContext } from './route-context.ts';
import { openStreamingResponse } from './streaming-response.ts';

/** The text of the user message that starts a run (only text parts carry input here). */
function userInput(message: UiMessage): string {
  const unsupported = message.parts.find((part) => part.type !== 'text' && part.type !== 'step-start');
  if (unsupported) throw new ApiError('invalid_request', `body.messages: a user message may only have text parts (got ${unsupported.type})`);
  const text = message.parts.map((part) => (typeof part.text === 'string' ? part.text : '')).join('');
  if (text === '') throw new ApiError('invalid_request', 'body.messages: the last user message has no text');
  return text;
}

/** Which chunks of a run's stream a response writes. */
type Selection = {
  /** Write chunks from this index on (`start` is 0). */
  fromIndex: number;
  /** Skip everything up to and including the first suspension on one of these calls (a continuation after decisions). */
  afterSuspensionOf?: readonly string[];
};

/**
 * Writes a run's UI message stream as SSE and ends it: after `finish`, or at a suspension the run
 * still waits in (with a `finish` of reason `tool-calls`), always with `data: [DONE]`. A
 * continuation (`afterSuspensionOf`) writes `start` first, so its chunks land on the same message.
 */
async function writeRunStream(context: RouteContext, request: FastifyRequest, reply: FastifyReply, caller: Caller, runId: string, selection: Selection, headers: Record<string, string>): Promise<void> {
  const response = openStreamingResponse(context, request, reply, { ...uiMessageStreamHeaders, ...headers });
  let skipping = selection.afterSuspensionOf !== undefined;
  const send = (chunk: UiMessageChunk) => response.write(formatUiChunk(chunk));
  let complete = false;
  try {
    for await (const item of runUiStream(context.services(), { tenantId: caller.tenantId, runId, signal: response.signal }) as AsyncGenerator<RunStreamItem>) {
      if (item.kind === 'chunk') {
        if (item.index === 0 && skipping) await send(item.chunk);
        else if (!skipping && item.index >= selection.fromIndex) await send(item.chunk);
        if (item.chunk.type === 'finish') complete = true;
      } else if (skipping) {
        const pending = (item.event.pendingApprovals as string[] | undefined) ?? [];
        if (pending.some((toolCallId) => selection.afterSuspensionOf!.includes(toolCallId))) skipping = false;
      } else if (item.waiting) {
        await send(suspendedFinishChunk(runId));
        complete = true;
      }
      if (complete || response.signal.aborted) break;
    }
    if (complete) await response.write(uiStreamDone);
  } catch (error) {
    // The relay failed (NATS gone) or the run cannot be read: end without [DONE]; the client resumes with GET …/stream.
    if (!response.signal.aborted) request.log.warn({ runId, err: error }, 'chat stream failed');
  } finally {
    response.end();
  }
}

/** Answers a refused approval as a UI message stream: `error` (with the reason), `finish`, `[DONE]`. */
async function writeErrorStream(context: RouteContext, request: FastifyRequest, reply: FastifyReply, errorText: string): Promise<void> {
  const response = openStreamingResponse(context, request, reply, { ...uiMessageStreamHeaders });
  try {
    for (const chunk of errorChunks(errorText)) await response.write(formatUiChunk(chunk));
    await response.write(uiStreamDone);
  } finally {
    response.end();
  }
}

/**
 * The decisions carried by an assistant message's `approval-responded` tool parts (`CLIENTS.md`
 * §3), recorded through the approval service (same ledger, same rules, source `chat`). Returns
 * the run they belong to, or the text of the error chunk to answer with.
 */
async function decideFromChat(context: RouteContext, caller: Caller, agentId: string, body: ChatRequestBody, message: UiMessage): Promise<{ runId: string; toolCallIds: string[] } | { errorText: string }> {
  const parts = message.parts.filter((part) => (part as { state?: unknown }).state === 'approval-responded');
  if (parts.length === 0) throw new ApiError('invalid_request', 'body.messages: the last message is an assistant message without approval responses');
  const { approvals, store } = context.services();
  let runId: string | undefined;
  const toolCallIds: string[] = [];
  const problems: string[] = [];
  for (const raw of parts) {
    const part = parseOr400(respondedToolPartSchema, raw, 'body.messages.parts');
    const approvalId = chatApprovalIdSchema.safeParse(part.approval.id);
    if (!approvalId.success || approvalId.data.toolCallId !== part.toolCallId || (runId !== undefined && runId !== approvalId.data.runId)) {
      problems.push(`approval ${part.approval.id} is not an approval of this chat`);
      continue;
    }
    const run = await findTenantRun(store, caller.tenantId, approvalId.data.runId);
    // Another tenant's run, another agent's or another chat's: answered like an unknown approval.
    if (!run || run.state.agentId !== agentId || run.state.conversationId !== body.id) {
      problems.push(`approval ${part.approval.id} is not an approval of this chat`);
      continue;
    }
    runId = run.state.runId;
    const call = run.state.toolCalls.find((candidate) => candidate.toolCallId === part.toolCallId);
    const input = part.input;
    const edited = part.approval.approved && call !== undefined && typeof input === 'object' && input !== null && !Array.isArray(input) && hashJson(input) !== hashJson(call.args);
    try {
      await approvals.decide(
        caller,
        {
          runId: run.state.runId,
          toolCallId: part.toolCallId,
          approved: part.approval.approved,
          source: 'chat',
          ...(part.approval.reason === undefined ? {} : { reason: part.approval.reason }),
          ...(edited ? { args: input as Record<string, unknown> } : {}),
        },
        run,
      );
      toolCallIds.push(part.toolCallId);
    } catch (error) {
      const apiError = toApiError(error, { maxBodyBytes: context.maxBodyBytes });
      // A dependency failure fails the request (503); a refused decision is answered in the stream.
      if (apiError.status >= 500) throw error;
      problems.push(`${apiError.code}: ${apiError.message}`);
    }
  }
  if (problems.length > 0 || runId === undefined) return { errorText: problems.join('; ') || 'no approval to decide' };
  return { runId, toolCallIds };
}

/**
 * The AI SDK's `useChat` protocols over durable runs (`CLIENTS.md` §1–3):
 * `POST /v1/agents/:agentId/chat` and `GET /v1/agents/:agentId/chat/:chatId/stream`.
 */
export function registerChatRoutes(app: FastifyInstance, context: RouteContext): void {
  app.post('/v1/agents/:agentId/chat', async (request, reply) => {
    const { agentId } = parseOr400(chatAgentParamsSchema, request.params, 'params');
    const body = parseOr400(chatRequestBodySchema, request.body, 'body');
    const caller = context.caller(request);
    if (body.trigger === 'regenerate-message') {
      throw new ApiError('invalid_request', 'body.trigger: regenerate-message is not supported: the conversation\'s history is kept by Abide');
    }
    const last = body.messages.at(-1)!;
    if (last.role === 'assistant') {
      const outcome = await decideFromChat(context, caller, agentId, body, last);
      if ('errorText' in outcome) return writeErrorStream(context, request, reply, outcome.errorText);
      return writeRunStream(context, request, reply, caller, outcome.runId, { fromIndex: 0, afterSuspensionOf: outcome.toolCallIds }, {
        [runIdHeader]: outcome.runId,
        [conversationIdHeader]: body.id,
      });
    }
    if (last.role !== 'user') throw new ApiError('invalid_request', 'body.messages: the last message must be a user message or an assistant message with approval responses');
    const input = userInput(last);
    // The user message id makes a retried POST (a network glitch) find its run instead of a busy conversation.
    const key = idempotencyKeySchema.safeParse(`chat:${body.id}:${last.id}`);
    const created = await context.services().createRun({
      tenantId: caller.tenantId,
      body: { agentId, input, conversationId: body.id },
      idempotencyKey: key.success ? key.data : undefined,
      requestId: request.id,
    });
    return writeRunStream(context, request, reply, caller, created.runId, { fromIndex: 0 }, {
      'x-workflow-run-id': created.runId,
      [runIdHeader]: created.runId,
      [conversationIdHeader]: created.conversationId,
    });
  });

  app.get('/v1/agents/:agentId/chat/:chatId/stream', async (request, reply) => {
    const { agentId, chatId } = parseOr400(chatParamsSchema, request.params, 'params');
    const { startIndex } = parseOr400(chatStreamQuerySchema, request.query, 'query', 'invalid_cursor');
    const caller = context.caller(request);
    const services = context.services();
    if (startIndex === undefined) {
      // DefaultChatTransport's resume: the active run replayed from `start`, or 204.
      const run = await findChatRun(services, { tenantId: caller.tenantId, agentId, chatId, latest: false });
      if (!run) return reply.code(204).send();
      return writeRunStream(context, request, reply, caller, run.state.runId, { fromIndex: 0 }, { [runIdHeader]: run.state.runId, [conversationIdHeader]: chatId });
    }
    // WorkflowChatTransport reconnects to `…/chat/<x-workflow-run-id>/stream?startIndex=N`: a run id
    // of this agent, else a chat id (its active or latest run). Never 204: nothing is 404.
    const byId = await findTenantRun(services.store, caller.tenantId, chatId);
    const run = byId && byId.state.agentId === agentId ? byId : await findChatRun(services, { tenantId: caller.tenantId, agentId, chatId, latest: true });
    if (!run) throw new ApiError('run_not_found', `chat or run ${chatId} not found`);
    const runId = run.state.runId;
    let fromIndex = startIndex;
    if (startIndex < 0) {
      fromIndex = Math.max(0, (await countIndexedChunks(context, caller, runId)) + startIndex);
    }
    return writeRunStream(context, request, reply, caller, runId, { fromIndex }, {
      'x-workflow-run-id': runId,
      'x-workflow-stream-tail-index': String(fromIndex),
      [runIdHeader]: runId,
      [conversationIdHeader]: run.state.conversationId,
    });
  });
}

/** How many chunks the run's stream has now: those of every event stored when asked. */
async function countIndexedChunks(context: RouteContext, caller: Caller, runId: string): Promise<number> {
  const services = context.services();
  const lastSeq = await services.lastEventSeq(runId);
  if (lastSeq === null) return 1;
  const controller = new AbortController();
  let count = 0;
  try {
    for await (const item of runUiStream(services, { tenantId: caller.tenantId, runId, signal: controller.signal, untilSeq: lastSeq })) {
      if (item.kind === 'chunk') count = item.index + 1;
    }
  } finally {
    controller.abort();
  }
  return count;
}
