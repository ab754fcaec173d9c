import {
  ApiError,
  chatAgentParamsSchema,
  chatApprovalId,
  chatApprovalIdSchema,
  chatParamsSchema,
  chatRequestBodySchema,
  chatStreamQuerySchema,
  conversationIdHeader,
  runIdHeader,
  uiMessageStreamHeaders,
} from '@abide/shared';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { emptyResponse, errorResponses, textResponse } from '../openapi.ts';
import type { Caller } from '../auth.ts';
import { planChatRequest, refusalChunks, responseChunks, type ChatPlan, type ChunkSelection, type ResponseChunk } from '../chat-requests.ts';
import { findChatRun, runUiStream } from '../chat-runs.ts';
import { findTenantRun } from '../run-access.ts';
import { formatUiChunk, uiStreamDone } from '../ui-message-stream.ts';
import type { RouteConfig, RouteContext } from './route-context.ts';
import { holdStreamLeases, openStreamingResponse } from './streaming-response.ts';

/**
 * Writes response chunks as the UI message stream (`data: <json>` frames, `data: [DONE]` once
 * the last chunk is written) and ends the response. Cut short (the client left, the relay
 * failed), it ends without `[DONE]`: the client resumes with `GET …/stream`.
 */
async function writeUiStream(context: RouteContext, request: FastifyRequest, reply: FastifyReply, releaseLeases: () => Promise<void>, headers: Record<string, string>, chunks: (signal: AbortSignal) => AsyncIterable<ResponseChunk & { last: boolean }> | Iterable<ResponseChunk & { last: boolean }>): Promise<void> {
  const response = openStreamingResponse(context, request, reply, { ...uiMessageStreamHeaders, ...headers }, releaseLeases);
  try {
    for await (const { chunk, last } of chunks(response.signal)) {
      await response.write(formatUiChunk(chunk));
      if (last) await response.write(uiStreamDone);
      if (last || response.signal.aborted) break;
    }
  } catch (error) {
    if (!response.signal.aborted) request.log.warn({ err: error }, 'chat stream failed');
  } finally {
    await response.end();
  }
}

/** `created`: this request created the run a moment ago (`openRunEvents`). */
function writeRunStream(context: RouteContext, request: FastifyRequest, reply: FastifyReply, caller: Caller, releaseLeases: () => Promise<void>, runId: string, selection: ChunkSelection, headers: Record<string, string>, created = false): Promise<void> {
  return writeUiStream(context, request, reply, releaseLeases, headers, (signal) => responseChunks(context.services(), { tenantId: caller.tenantId, runId, selection, signal, created }));
}

/**
 * The AI SDK's `useChat` protocols over durable runs (`CLIENTS.md` §1–3):
 * `POST /v1/agents/:agentId/chat` and `GET /v1/agents/:agentId/chat/:chatId/stream`.
 */
export function registerChatRoutes(app: FastifyInstance, context: RouteContext): void {
  const routes = app.withTypeProvider<ZodTypeProvider>();
  const chatSchema = {
    summary: 'AI SDK useChat (DefaultChatTransport): start a durable run of the chat (the chat id is the conversation) or decide its approvals; answers the UI message stream',
    params: chatAgentParamsSchema,
    body: chatRequestBodySchema,
    response: { 200: textResponse('UI message stream (x-vercel-ai-ui-message-stream: v1)', 'text/event-stream'), ...errorResponses(400, 401, 404, 409, 413, 429, 503) },
  };
  routes.post('/v1/agents/:agentId/chat', { schema: chatSchema }, async (request, reply) => {
    const { agentId } = request.params;
    const body = request.body;
    const caller = context.caller(request);
    // The stream's leases first: a tenant over its cap gets 429 and no run is created.
    const release = await holdStreamLeases(context, caller.tenantId, request.id, { connection: true });
    let plan: ChatPlan;
    try {
      plan = await planChatRequest(context.services(), context.maxBodyBytes, { caller, agentId, body, requestId: request.id });
    } catch (error) {
      await release();
      throw error;
    }
    if (plan.kind === 'refused') return writeUiStream(context, request, reply, release, {}, () => refusalChunks(plan.errorText));
    return writeRunStream(context, request, reply, caller, release, plan.runId, plan.selection, {
      // A continuation counts its chunks from its own start: WorkflowChatTransport reconnects to it by its approval id.
      'x-workflow-run-id': plan.selection.afterSuspensionOf === undefined ? plan.runId : chatApprovalId(plan.runId, plan.selection.afterSuspensionOf[0]!),
      [runIdHeader]: plan.runId,
      [conversationIdHeader]: plan.conversationId,
    }, plan.created);
  });

  const streamSchema = {
    summary: "Resume the chat's active run's UI message stream from its start (204: none); ?startIndex=N for WorkflowChatTransport",
    params: chatParamsSchema,
    querystring: chatStreamQuerySchema,
    response: { 200: textResponse('UI message stream', 'text/event-stream'), 204: emptyResponse('no active run'), ...errorResponses(400, 401, 404, 503) },
  };
  // The whole query string is the resume position: any fault in it is 400 `invalid_cursor`.
  routes.get('/v1/agents/:agentId/chat/:chatId/stream', { config: { cursorFields: ['query'] } satisfies RouteConfig, schema: streamSchema }, async (request, reply) => {
    const { agentId, chatId } = request.params;
    const { startIndex } = request.query;
    const caller = context.caller(request);
    const services = context.services();
    if (startIndex === undefined) {
      // DefaultChatTransport's resume: the active run replayed from `start`, or 204.
      const run = await findChatRun(services, { tenantId: caller.tenantId, agentId, chatId, latest: false });
      if (!run) return reply.code(204).send();
      const release = await holdStreamLeases(context, caller.tenantId, request.id, { connection: true });
      return writeRunStream(context, request, reply, caller, release, run.state.runId, { fromIndex: 0 }, { [runIdHeader]: run.state.runId, [conversationIdHeader]: chatId });
    }
    // WorkflowChatTransport reconnects to `…/chat/<x-workflow-run-id>/stream?startIndex=N`: a run id
    // of this agent, an approval id (a continuation's stream), else a chat id (its active or
    // latest run). Never 204: nothing found is 404.
    const approval = chatApprovalIdSchema.safeParse(chatId);
    const byId = await findTenantRun(services.store, caller.tenantId, approval.success ? approval.data.runId : chatId);
    const run = byId && byId.state.agentId === agentId ? byId : approval.success ? null : await findChatRun(services, { tenantId: caller.tenantId, agentId, chatId, latest: true });
    if (!run) throw new ApiError('run_not_found', `chat or run ${chatId} not found`);
    const runId = run.state.runId;
    const headers = { 'x-workflow-run-id': chatId, [runIdHeader]: runId, [conversationIdHeader]: run.state.conversationId };
    if (approval.success) {
      if (startIndex < 0) throw new ApiError('invalid_cursor', 'query.startIndex: a continuation is resumed from a non-negative index');
      const release = await holdStreamLeases(context, caller.tenantId, request.id, { connection: true });
      return writeRunStream(context, request, reply, caller, release, runId, { fromIndex: 0, afterSuspensionOf: [approval.data.toolCallId], skipFirst: startIndex }, headers);
    }
    let fromIndex = startIndex;
    const release = await holdStreamLeases(context, caller.tenantId, request.id, { connection: true });
    if (startIndex < 0) {
      // The tail is the last chunk the run has now; the transport counts on from `tail + 1 + startIndex`.
      let tail: number;
      try {
        tail = (await countIndexedChunks(context, caller, runId)) - 1;
      } catch (error) {
        await release();
        throw error;
      }
      fromIndex = Math.max(0, tail + 1 + startIndex);
      return writeRunStream(context, request, reply, caller, release, runId, { fromIndex }, { ...headers, 'x-workflow-stream-tail-index': String(tail) });
    }
    return writeRunStream(context, request, reply, caller, release, runId, { fromIndex }, headers);
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
