import {
  ApiError,
  agentIdSchema,
  createRunBodySchema,
  conversationIdHeader,
  openAiCompletionHeadersSchema,
  openAiCompletionRequestSchema,
  openAiCompletionSchema,
  openAiErrorBodySchema,
  runIdHeader,
  zeroUsage,
  type OpenAiChunk,
  type OpenAiCompletion,
  type Usage,
} from '@abide/shared';
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { toApiError } from '../http-errors.ts';
import { completionInput, createOpenAiTranslator, openAiChunk, runEndError, toOpenAiError, toOpenAiUsage, type CompletionEnd } from '../openai-chunks.ts';
import { findTenantRun } from '../run-access.ts';
import { pendingApprovalsOf } from '../run-views.ts';
import type { Services } from '../services.ts';
import { jsonResponse } from '../openapi.ts';
import { parseOr400 } from '../validation.ts';
import type { RouteContext } from './route-context.ts';
import { holdStreamLeases, openStreamingResponse } from './streaming-response.ts';

/** How a completion's run stopped: ended, or waiting for approvals (with where to decide them). */
type CompletionStop = { end: CompletionEnd } | { suspended: NonNullable<OpenAiCompletion['abide']>; usage: Usage };

/**
 * Follows the run, calling `onContent` with each piece of text, until it ends or suspends for
 * approvals it still waits on. Null when the client went away first.
 */
async function followCompletion(services: Services, tenantId: string, runId: string, created: boolean, signal: AbortSignal, onContent: (text: string) => Promise<void>): Promise<CompletionStop | null> {
  const translator = createOpenAiTranslator();
  // `created`: this request created the run a moment ago (`openRunEvents`).
  const events = await services.openRunEvents({ tenantId, runId, after: undefined, signal, created });
  if (!events) return null;
  for await (const event of events) {
    const step = translator.next(event);
    for (const text of step.content) await onContent(text);
    if (step.end) return { end: step.end };
    if (event.type === 'run.suspended') {
      const run = await findTenantRun(services.store, tenantId, runId);
      if (run && run.state.status === 'suspended') {
        const approvals = pendingApprovalsOf(run.state);
        return {
          usage: run.state.usage,
          suspended: {
            runId,
            status: 'suspended',
            pendingApprovals: approvals.map((approval) => ({ toolCallId: approval.toolCallId, toolName: approval.toolName, decide: `/v1/runs/${runId}/approvals/${approval.toolCallId}` })),
          },
        };
      }
    }
    if (signal.aborted) return null;
  }
  return null;
}

/** Errors on this route are answered in OpenAI's shape (`{ error: { message, type, code, param } }`), with the same statuses as elsewhere. */
function openAiErrorHandler(context: RouteContext) {
  return (error: FastifyError, request: FastifyRequest, reply: FastifyReply) => {
    const apiError = toApiError(error, { maxBodyBytes: context.maxBodyBytes });
    if (apiError.code === 'internal') request.log.error({ err: error }, 'request failed');
    else request.log.debug({ code: apiError.code, message: apiError.message }, 'request refused');
    return reply.code(apiError.status).headers(apiError.headers).send(toOpenAiError(apiError));
  };
}

/** `POST /v1/chat/completions`: OpenAI chat completions over a durable run (`CLIENTS.md` §4); `model` is an agent id. */
export function registerOpenAiRoutes(app: FastifyInstance, context: RouteContext): void {
  const routes = app.withTypeProvider<ZodTypeProvider>();
  const openAiError = (description: string) => jsonResponse(description, openAiErrorBodySchema);
  const schema = {
    summary: 'OpenAI chat completions over a durable run; model is an agent id; errors in OpenAI shape',
    headers: openAiCompletionHeadersSchema,
    body: openAiCompletionRequestSchema,
    response: {
      200: {
        description: 'chat.completion, or with stream: true chat.completion.chunk events then data: [DONE]',
        content: { 'application/json': { schema: openAiCompletionSchema }, 'text/event-stream': { schema: z.string() } },
      },
      400: openAiError('invalid_request_error'),
      401: openAiError('authentication_error'),
      404: openAiError('model_not_found'),
      409: openAiError('conversation_busy; a cancelled run (run_cancelled)'),
      413: openAiError('invalid_request_error: the body is larger than MAX_BODY_BYTES'),
      415: openAiError('invalid_request_error: send application/json'),
      422: openAiError('invalid_request_error: idempotency_key_reused'),
      429: openAiError('rate_limit_error'),
      500: openAiError('server_error: the run failed (code = the run error code)'),
      503: openAiError('server_error: unavailable'),
    },
  };
  routes.post('/v1/chat/completions', { errorHandler: openAiErrorHandler(context), schema }, async (request, reply) => {
    const body = request.body;
    const caller = context.caller(request);
    const conversationId = request.headers[conversationIdHeader];
    const idempotencyKey = request.headers['idempotency-key'];
    if (!agentIdSchema.safeParse(body.model).success) throw new ApiError('agent_not_found', `model ${body.model} is not an agent of this tenant`);
    const input = completionInput(body.messages, conversationId !== undefined);
    const services = context.services();
    const streaming = body.stream === true;
    // Leases first (a stream is a connection and a subscription; waiting for the answer a
    // subscription): a tenant over its cap gets 429 and no run is created.
    const release = await holdStreamLeases(context, caller.tenantId, request.id, { connection: streaming });
    let created: Awaited<ReturnType<typeof services.createRun>>;
    try {
      created = await services.createRun({
        tenantId: caller.tenantId,
        // The same limits as `POST /v1/runs` (input size, ids); a model name that cannot be an agent id is not found.
        body: parseOr400(createRunBodySchema, { agentId: body.model, input, ...(conversationId === undefined ? {} : { conversationId }) }, 'body'),
        idempotencyKey,
        requestId: request.id,
      });
    } catch (error) {
      await release();
      throw error;
    }
    const { runId } = created;
    const fields = { id: `chatcmpl-${runId}`, created: Math.floor(Date.now() / 1000), model: body.model };
    const headers = { [runIdHeader]: runId, [conversationIdHeader]: created.conversationId };

    if (!streaming) {
      const controller = new AbortController();
      reply.raw.on('close', () => controller.abort());
      let content = '';
      let stop: CompletionStop | null;
      try {
        stop = await followCompletion(services, caller.tenantId, runId, created.created, controller.signal, async (text) => {
          content += text;
        });
      } finally {
        await release();
      }
      if (!stop) throw new ApiError('unavailable', 'the run\'s events could not be followed to the end; read it with GET /v1/runs/' + runId, { headers: { 'retry-after': '1' } });
      if ('end' in stop && stop.end.kind !== 'completed') {
        const status = stop.end.kind === 'failed' ? 500 : 409;
        return reply.code(status).headers(headers).send(runEndError(stop.end));
      }
      const completion: OpenAiCompletion = {
        ...fields,
        object: 'chat.completion',
        choices: [{ index: 0, message: { role: 'assistant', content, refusal: null }, finish_reason: 'stop' }],
        usage: toOpenAiUsage('end' in stop && stop.end.kind === 'completed' ? stop.end.usage : 'usage' in stop ? stop.usage : zeroUsage),
        ...('suspended' in stop ? { abide: stop.suspended } : {}),
      };
      return reply.code(200).headers(headers).send(completion);
    }

    const includeUsage = body.stream_options?.include_usage === true;
    const response = openStreamingResponse(context, request, reply, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no', ...headers }, release);
    const send = (value: unknown) => response.write(`data: ${JSON.stringify(value)}\n\n`);
    try {
      await send(openAiChunk(fields, { role: 'assistant', content: '' }));
      const stop = await followCompletion(services, caller.tenantId, runId, created.created, response.signal, (text) => send(openAiChunk(fields, { content: text })));
      if (!stop) return; // The client left, or the relay ended early: no [DONE], the client resumes from GET /v1/runs/:runId/events.
      if ('end' in stop && stop.end.kind !== 'completed') {
        // openai-node throws on an SSE event whose data has `error`: the protocol's way to fail mid-stream.
        await send(runEndError(stop.end));
      } else {
        const finish: OpenAiChunk = { ...openAiChunk(fields, {}, 'stop'), ...('suspended' in stop ? { abide: stop.suspended } : {}) };
        await send(finish);
        if (includeUsage) {
          const usage = 'end' in stop && stop.end.kind === 'completed' ? stop.end.usage : 'usage' in stop ? stop.usage : zeroUsage;
          await send({ ...fields, object: 'chat.completion.chunk', choices: [], usage: toOpenAiUsage(usage) } satisfies OpenAiChunk);
        }
      }
      await response.write('data: [DONE]\n\n');
    } catch (error) {
      // The relay failed (NATS gone): end without [DONE]; the run id header lets the client resume from the events route.
      if (!response.signal.aborted) request.log.warn({ runId, err: error }, 'completion stream failed');
    } finally {
      await response.end();
    }
  });
}
