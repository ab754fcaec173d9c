import {
  chatAgentParamsSchema,
  chatParamsSchema,
  chatRequestBodySchema,
  chatStreamQuerySchema,
  conversationIdSchema,
  errorBodySchema,
  httpStatusByCode,
  idempotencyKeySchema,
  openAiCompletionRequestSchema,
  openAiCompletionSchema,
  openAiErrorBodySchema,
} from '@abide/shared';
import type { Operation } from './openapi.ts';

const errors = (...statuses: number[]) =>
  Object.fromEntries(
    statuses.map((status) => {
      const codes = Object.entries(httpStatusByCode).filter(([, value]) => value === status).map(([code]) => code);
      return [String(status), { description: `error: ${codes.join(', ')}`, schema: errorBodySchema }];
    }),
  );

/** The client-protocol routes (issue 11) in the OpenAPI document; their bodies are the clients' own. */
export const chatOperations: Operation[] = [
  {
    method: 'post',
    path: '/v1/agents/:agentId/chat',
    summary: "AI SDK useChat (DefaultChatTransport): start a durable run of the chat (the chat id is the conversation) or decide its approvals; answers the UI message stream",
    authenticated: true,
    params: chatAgentParamsSchema,
    body: chatRequestBodySchema,
    bodyRequired: true,
    responses: { '200': { description: 'UI message stream (x-vercel-ai-ui-message-stream: v1)', contentType: 'text/event-stream' }, ...errors(400, 401, 404, 409, 413, 429, 503) },
  },
  {
    method: 'get',
    path: '/v1/agents/:agentId/chat/:chatId/stream',
    summary: "Resume the chat's active run's UI message stream from its start (204: none); ?startIndex=N for WorkflowChatTransport",
    authenticated: true,
    params: chatParamsSchema,
    query: chatStreamQuerySchema,
    responses: { '200': { description: 'UI message stream', contentType: 'text/event-stream' }, '204': { description: 'no active run' }, ...errors(400, 401, 404, 503) },
  },
  {
    method: 'get',
    path: '/v1/agents/:agentId/chat/ws',
    summary: "AI SDK WebSocketChatTransport: many chats over one socket (send, resume with lastSequence, abort cancels the run); ?ticket= or the Authorization header",
    authenticated: true,
    params: chatAgentParamsSchema,
    responses: { '101': { description: 'switching protocols' }, ...errors(400, 401, 403, 426, 429, 503) },
  },
  {
    method: 'post',
    path: '/v1/chat/completions',
    summary: 'OpenAI chat completions over a durable run; model is an agent id; errors in OpenAI shape',
    authenticated: true,
    headers: {
      'x-abide-conversation-id': { schema: conversationIdSchema, description: 'continue this conversation: only the last (user) message is new, the history is Abide\'s' },
      'Idempotency-Key': { schema: idempotencyKeySchema, description: 'a retry with the same key and body answers the same run' },
    },
    body: openAiCompletionRequestSchema,
    bodyRequired: true,
    responses: {
      '200': { description: 'chat.completion, or with stream: true chat.completion.chunk events then data: [DONE]', schema: openAiCompletionSchema },
      '400': { description: 'invalid_request_error', schema: openAiErrorBodySchema },
      '401': { description: 'authentication_error', schema: openAiErrorBodySchema },
      '404': { description: 'model_not_found', schema: openAiErrorBodySchema },
      '409': { description: 'conversation_busy; a cancelled run (run_cancelled)', schema: openAiErrorBodySchema },
      '429': { description: 'rate_limit_error', schema: openAiErrorBodySchema },
      '500': { description: 'server_error: the run failed (code = the run error code)', schema: openAiErrorBodySchema },
      '503': { description: 'server_error: unavailable', schema: openAiErrorBodySchema },
    },
  },
];
