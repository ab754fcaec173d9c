import { z } from 'zod';
import { agentIdSchema } from './agent.ts';
import { conversationIdSchema, idempotencyKeySchema } from './api.ts';
import { runIdSchema, toolCallIdSchema } from './envelope.ts';

/**
 * The client protocols the gateway speaks besides its own (issue 11, `CLIENTS.md`): the AI SDK's
 * UI message stream (`useChat`), its WebSocket transport, and OpenAI chat completions. Request
 * bodies are validated here; the chunks the gateway writes are typed here.
 */

export const chatLimits = {
  maxMessages: 1_000,
  maxParts: 1_000,
  maxIdLength: 256,
  maxTextChars: 1_000_000,
} as const;

/** A part of a `UIMessage` (`ui/ui-messages.ts`): only `type` is looked at for most of them. */
export const uiMessagePartSchema = z.looseObject({ type: z.string().min(1).max(200) });

/** A tool part in state `approval-responded`: the user's decision on a call (`CLIENTS.md` §3). */
export const respondedToolPartSchema = z.looseObject({
  type: z.string().regex(/^(tool-.+|dynamic-tool)$/),
  toolCallId: z.string().min(1).max(chatLimits.maxIdLength),
  state: z.literal('approval-responded'),
  input: z.unknown(),
  approval: z.looseObject({
    id: z.string().min(1).max(chatLimits.maxIdLength),
    approved: z.boolean(),
    reason: z.string().max(10_000).optional(),
  }),
});
export type RespondedToolPart = z.infer<typeof respondedToolPartSchema>;

export const uiMessageSchema = z.looseObject({
  id: z.string().min(1).max(chatLimits.maxIdLength),
  role: z.enum(['system', 'user', 'assistant']),
  parts: z.array(uiMessagePartSchema).max(chatLimits.maxParts),
});
export type UiMessage = z.infer<typeof uiMessageSchema>;

/**
 * The body `DefaultChatTransport` POSTs (`http-chat-transport.ts`): `{ ...body, id, messages,
 * trigger, messageId }`. Extra fields (the transport's `body` option) are tolerated and ignored.
 */
export const chatRequestBodySchema = z.looseObject({
  /**
   * The chat id: Abide's `conversationId`. `WorkflowChatTransport` sends no id by default
   * (`{ messages, ...body }`): without one, each message starts a new conversation.
   */
  id: conversationIdSchema.optional(),
  messages: z.array(uiMessageSchema).min(1).max(chatLimits.maxMessages),
  trigger: z
    .enum(['submit-message', 'regenerate-message'])
    .default('submit-message')
    // The gateway refuses regenerate-message (400, with a message saying why): the document says so.
    .meta({ enum: ['submit-message'] }),
  messageId: z.string().max(chatLimits.maxIdLength).optional(),
});
export type ChatRequestBody = z.infer<typeof chatRequestBodySchema>;

export const chatAgentParamsSchema = z.object({ agentId: agentIdSchema }).strict();
export const chatParamsSchema = z.object({ agentId: agentIdSchema, chatId: conversationIdSchema }).strict();
/** The query of `GET /v1/agents/:agentId/chat/ws`: a single-use ticket (browsers cannot set headers). */
export const chatWebSocketQuerySchema = z.object({
  ticket: z.string().optional().meta({ description: 'a single-use ticket from POST /v1/ws/tickets, instead of the Authorization header' }),
});

/** `?startIndex=N` of `WorkflowChatTransport`'s reconnect (negative: from the end). */
export const chatStreamQuerySchema = z
  .object({
    startIndex: z
      .string()
      .regex(/^-?(0|[1-9]\d{0,8})$/, 'must be an integer')
      .transform(Number)
      .optional(),
  })
  .strict();

/** An approval id as the gateway hands it out in `tool-approval-request`: `<runId>:<toolCallId>`. */
export const chatApprovalIdSchema = z
  .string()
  .transform((value, context) => {
    const at = value.lastIndexOf(':');
    const runId = runIdSchema.safeParse(value.slice(0, at));
    const toolCallId = toolCallIdSchema.safeParse(value.slice(at + 1));
    if (at <= 0 || !runId.success || !toolCallId.success) {
      context.addIssue({ code: 'custom', message: 'not an approval id of this service' });
      return z.NEVER;
    }
    return { runId: runId.data, toolCallId: toolCallId.data };
  });
export const chatApprovalId = (runId: string, toolCallId: string) => `${runId}:${toolCallId}`;

/** The assistant message id of a run's UI stream: derived from the run id, so every replay and replica agrees. */
export const chatMessageId = (runId: string) => `msg-${runId}`;

/** The UI message chunks the gateway writes (`ui-message-stream/ui-message-chunks.ts`, v7), one schema each. */
export const uiMessageChunkSchema = z.discriminatedUnion('type', [
  z.object({ type: z.literal('start'), messageId: z.string().optional(), messageMetadata: z.unknown().optional() }),
  z.object({ type: z.literal('start-step') }),
  z.object({ type: z.literal('finish-step') }),
  z.object({ type: z.literal('text-start'), id: z.string() }),
  z.object({ type: z.literal('text-delta'), id: z.string(), delta: z.string() }),
  z.object({ type: z.literal('text-end'), id: z.string() }),
  z.object({ type: z.literal('tool-input-available'), toolCallId: z.string(), toolName: z.string(), input: z.unknown() }),
  z.object({ type: z.literal('tool-approval-request'), approvalId: z.string(), toolCallId: z.string() }),
  z.object({ type: z.literal('tool-output-available'), toolCallId: z.string(), output: z.unknown() }),
  z.object({ type: z.literal('tool-output-error'), toolCallId: z.string(), errorText: z.string() }),
  z.object({ type: z.literal('tool-output-denied'), toolCallId: z.string() }),
  z.object({ type: z.literal('error'), errorText: z.string() }),
  z.object({ type: z.literal('abort'), reason: z.string().optional() }),
  z.object({
    type: z.literal('finish'),
    finishReason: z.enum(['stop', 'length', 'content-filter', 'tool-calls', 'error', 'other']).optional(),
    messageMetadata: z.unknown().optional(),
  }),
]);
export type UiMessageChunk = z.infer<typeof uiMessageChunkSchema>;

/** Response headers of a UI message stream (`ui-message-stream-headers.ts`) plus Abide's. */
export const uiMessageStreamHeaders = {
  'content-type': 'text/event-stream',
  'cache-control': 'no-cache',
  connection: 'keep-alive',
  'x-vercel-ai-ui-message-stream': 'v1',
  'x-accel-buffering': 'no',
} as const;
/** The header naming the Abide run behind a chat or completion response. */
export const runIdHeader = 'x-abide-run-id';
export const conversationIdHeader = 'x-abide-conversation-id';

// ---- OpenAI chat completions (openai-node `resources/chat/completions/completions.ts`) ----

const openAiTextContentSchema = z.union([
  z.string().max(chatLimits.maxTextChars),
  z.array(z.looseObject({ type: z.string(), text: z.string().max(chatLimits.maxTextChars).optional() })).max(chatLimits.maxParts),
]);
export const openAiMessageSchema = z.looseObject({
  role: z.enum(['developer', 'system', 'user', 'assistant', 'tool']),
  content: openAiTextContentSchema.nullish(),
  tool_call_id: z.string().optional(),
  tool_calls: z.array(z.unknown()).optional(),
});
export type OpenAiMessage = z.infer<typeof openAiMessageSchema>;

/**
 * `POST /v1/chat/completions`. `model` is an agent id of the caller's tenant. Sampling
 * parameters (`temperature`, `max_tokens`, …) are accepted and ignored: the agent decides.
 */
export const openAiCompletionRequestSchema = z.looseObject({
  model: z.string().min(1).max(64),
  messages: z.array(openAiMessageSchema).min(1).max(chatLimits.maxMessages),
  stream: z.boolean().nullish(),
  stream_options: z.looseObject({ include_usage: z.boolean().optional() }).nullish(),
  tools: z.array(z.unknown()).max(0, 'the agent\'s own tools are used: send no tools').nullish(),
  tool_choice: z.unknown().optional(),
});
export type OpenAiCompletionRequest = z.infer<typeof openAiCompletionRequestSchema>;
/** The request headers of `POST /v1/chat/completions` (lower case: as Node hands them over). */
export const openAiCompletionHeadersSchema = z.looseObject({
  [conversationIdHeader]: conversationIdSchema.optional().meta({ description: "continue this conversation: only the last (user) message is new, the history is Abide's" }),
  'idempotency-key': idempotencyKeySchema.optional().meta({ description: 'a retry with the same key and body answers the same run' }),
});

export const openAiUsageSchema = z.object({ prompt_tokens: z.number(), completion_tokens: z.number(), total_tokens: z.number() });
export type OpenAiUsage = z.infer<typeof openAiUsageSchema>;
export const openAiFinishReasonSchema = z.enum(['stop', 'length', 'tool_calls', 'content_filter']);

/**
 * Abide's addition to a completion that ended without an answer because the run waits for an
 * approval: where the approvals are and how to decide them (clients ignore unknown fields).
 */
export const openAiAbideExtensionSchema = z.object({
  runId: z.string(),
  status: z.string(),
  pendingApprovals: z.array(z.object({ toolCallId: z.string(), toolName: z.string(), decide: z.string() })),
});

export const openAiChunkSchema = z.object({
  id: z.string(),
  object: z.literal('chat.completion.chunk'),
  created: z.int(),
  model: z.string(),
  choices: z.array(
    z.object({
      index: z.int(),
      delta: z.object({ role: z.literal('assistant').optional(), content: z.string().optional() }),
      finish_reason: openAiFinishReasonSchema.nullable(),
    }),
  ),
  usage: openAiUsageSchema.nullable().optional(),
  abide: openAiAbideExtensionSchema.optional(),
});
export type OpenAiChunk = z.infer<typeof openAiChunkSchema>;

export const openAiCompletionSchema = z.object({
  id: z.string(),
  object: z.literal('chat.completion'),
  created: z.int(),
  model: z.string(),
  choices: z.array(
    z.object({
      index: z.int(),
      message: z.object({ role: z.literal('assistant'), content: z.string(), refusal: z.null() }),
      finish_reason: openAiFinishReasonSchema,
    }),
  ),
  usage: openAiUsageSchema,
  abide: openAiAbideExtensionSchema.optional(),
});
export type OpenAiCompletion = z.infer<typeof openAiCompletionSchema>;

export const openAiErrorBodySchema = z.object({
  error: z.object({ message: z.string(), type: z.string(), code: z.string().nullable(), param: z.string().nullable() }),
});
export type OpenAiErrorBody = z.infer<typeof openAiErrorBodySchema>;

// ---- The AI SDK's WebSocketChatTransport (`ui/websocket-chat-transport.ts`, ai 7) ----

const wsChatRequestIdSchema = z.string().min(1).max(128);
const wsChatRequestFields = {
  requestId: wsChatRequestIdSchema,
  id: conversationIdSchema,
  headers: z.record(z.string(), z.string()).optional(),
  body: z.record(z.string(), z.unknown()).optional(),
  metadata: z.unknown().optional(),
};

/** Client → server frames of `WebSocketChatTransport` (`CLIENTS.md` §2b). */
export const wsChatClientFrameSchema = z.discriminatedUnion('type', [
  z.looseObject({
    type: z.literal('send'),
    ...wsChatRequestFields,
    trigger: z.enum(['submit-message', 'regenerate-message']),
    messageId: z.string().max(chatLimits.maxIdLength).optional(),
    messages: z.array(uiMessageSchema).min(1).max(chatLimits.maxMessages),
  }),
  /** `lastSequence`: the last chunk the client holds (omitted: replay the whole message). */
  z.looseObject({ type: z.literal('resume'), ...wsChatRequestFields, lastSequence: z.int().min(0).optional() }),
  z.looseObject({ type: z.literal('abort'), requestId: wsChatRequestIdSchema }),
]);
export type WsChatClientFrame = z.infer<typeof wsChatClientFrameSchema>;

/** Server → client frames: `chunk.sequence` counts from 0 within a request (a `resume` counts the run's chunk indexes). */
export const wsChatServerFrameSchema = z.discriminatedUnion('type', [
  z.object({ type: z.literal('start'), requestId: z.string() }),
  z.object({ type: z.literal('chunk'), requestId: z.string(), sequence: z.int().min(0), chunk: uiMessageChunkSchema }),
  z.object({ type: z.literal('end'), requestId: z.string() }),
  z.object({ type: z.literal('error'), requestId: z.string(), errorText: z.string().optional() }),
  z.object({ type: z.literal('no-active'), requestId: z.string() }),
]);
export type WsChatServerFrame = z.infer<typeof wsChatServerFrameSchema>;
