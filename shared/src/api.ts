import { z } from 'zod';
import { agentIdSchema } from './agent.ts';
import { runIdSchema, toolCallIdSchema } from './envelope.ts';
import { inputMessageSchema } from './model-messages.ts';
import { runStatusSchema } from './run-state.ts';
import { storedJsonMemberSchema, storedJsonObjectSchema, storedKeySchema } from './stored-json.ts';

/** Public API shapes (DESIGN §7). */

export const apiLimits = {
  maxInputMessages: 1_000,
  maxInputChars: 1_000_000,
  maxMetadataKeys: 64,
  maxListLimit: 100,
  defaultListLimit: 20,
  maxIdempotencyKeyLength: 256,
} as const;

export const conversationIdSchema = z.string().regex(/^[A-Za-z0-9_.:-]{1,128}$/, 'must match [A-Za-z0-9_.:-]{1,128}');

export const runInputSchema = z.union([
  z.string().min(1).max(apiLimits.maxInputChars),
  z.array(inputMessageSchema).min(1).max(apiLimits.maxInputMessages),
]);

/** Run metadata: up to 64 keys of at most 128 characters; values are JSON MongoDB stores as is. */
export const runMetadataSchema = z
  .record(storedKeySchema.max(128), storedJsonMemberSchema)
  .refine((value) => Object.keys(value).length <= apiLimits.maxMetadataKeys, `at most ${apiLimits.maxMetadataKeys} keys`);

/** Edited tool call arguments of an approval (validated against the tool's schema afterwards). */
export const approvalArgsSchema = storedJsonObjectSchema;
export type RunInput = z.infer<typeof runInputSchema>;

export const createRunBodySchema = z
  .object({
    agentId: agentIdSchema,
    input: runInputSchema,
    conversationId: conversationIdSchema.optional(),
    metadata: runMetadataSchema.optional(),
  })
  .strict();
export type CreateRunBody = z.infer<typeof createRunBodySchema>;

export const idempotencyKeySchema = z.string().min(1).max(apiLimits.maxIdempotencyKeyLength).regex(/^[\x21-\x7e]+$/, 'printable ASCII without spaces');
/** The request headers of `POST /v1/runs` (lower case: as Node hands them over). */
export const createRunHeadersSchema = z.looseObject({
  'idempotency-key': idempotencyKeySchema.optional().meta({ description: 'a repeat with the same key and body answers the same run' }),
});

/**
 * The cursor of `GET /v1/runs` (the page's last run, `<createdAt>~<runId>`; clients pass
 * `nextCursor` back as is). Every string of this form is a position, so the schema is the whole rule.
 */
export const listCursorSchema = z
  .string()
  .regex(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z~[A-Za-z0-9_-]{1,64}$/, 'must be a nextCursor of an earlier page');

export const listRunsQuerySchema = z
  .object({
    conversationId: conversationIdSchema.optional(),
    status: runStatusSchema.optional(),
    limit: z.coerce.number().int().min(1).max(apiLimits.maxListLimit).default(apiLimits.defaultListLimit),
    cursor: listCursorSchema.optional(),
  })
  .strict();

/** A resume cursor: the `seq` of the last event the client holds (a non-negative integer). */
export const cursorSchema = z.string().regex(/^(0|[1-9]\d{0,15})$/, 'must be a non-negative integer').transform(Number);
/** A query parameter of the routes a browser opens without headers (SSE, WebSocket): the API key. */
export const accessTokenQueryField = z.string().optional().meta({ description: 'the API key, for clients that cannot set headers' });
export const eventsQuerySchema = z.object({ after: cursorSchema.optional(), access_token: accessTokenQueryField }).strict();
/** The request headers of `GET /v1/runs/:runId/events` (lower case: as Node hands them over). */
export const eventsHeadersSchema = z.looseObject({
  'last-event-id': cursorSchema.optional().meta({ description: 'the seq of the last event held (wins over `after`)' }),
});

export const runIdParamsSchema = z.object({ runId: runIdSchema }).strict();
export const agentIdParamsSchema = z.object({ agentId: agentIdSchema }).strict();
export const approvalParamsSchema = z.object({ runId: runIdSchema, toolCallId: toolCallIdSchema }).strict();

export const approvalDecisionBodySchema = z
  .object({
    approved: z.boolean(),
    reason: z.string().max(10_000).optional(),
    args: approvalArgsSchema.optional(),
  })
  .strict();
export const batchApprovalBodySchema = z
  .object({ decisions: z.array(approvalDecisionBodySchema.extend({ toolCallId: toolCallIdSchema })).min(1).max(100) })
  .strict();

export const cancelRunBodySchema = z.object({ reason: z.string().max(1000).optional() }).strict();

/** The HTTP error body (`id`: its name among the OpenAPI document's components). */
export const errorBodySchema = z.object({ error: z.object({ code: z.string(), message: z.string() }) }).meta({ id: 'ErrorBody' });
/** The HTTP error body; also the `data:` of an SSE `error` event. */
export type ErrorBody = z.infer<typeof errorBodySchema>;

export const runViewSchema = z.object({
  runId: z.string(),
  agentId: z.string(),
  agentVersion: z.int(),
  conversationId: z.string(),
  status: runStatusSchema,
  step: z.int(),
  pendingApprovals: z.array(z.object({ toolCallId: z.string(), toolName: z.string(), args: z.unknown(), expiresAt: z.string().optional() })),
  output: z.string().nullable(),
  error: z.object({ code: z.string(), message: z.string() }).nullable(),
  usage: z.object({ inputTokens: z.number(), outputTokens: z.number(), totalTokens: z.number() }),
  metadata: z.record(z.string(), z.unknown()).nullable(),
  lastSeq: z.int().nullable(),
  version: z.int(),
  createdAt: z.string(),
  updatedAt: z.string(),
}).meta({ id: 'RunView' });
export type RunView = z.infer<typeof runViewSchema>;
/** 410 `cursor_expired`: the error, with the run's current state attached so the client can resync. */
export const cursorExpiredBodySchema = errorBodySchema.extend({ run: runViewSchema });

/* ---------- responses (added for the gateway's OpenAPI document and clients) ---------- */

export const createRunResponseSchema = z.object({ runId: z.string(), status: runStatusSchema, conversationId: z.string() });
export const listRunsResponseSchema = z.object({ runs: z.array(runViewSchema), nextCursor: z.string().nullable() });
export const acceptedResponseSchema = z.object({ status: z.enum(['accepted', 'already_decided']) });
export const approvalDecisionResultSchema = z.object({
  toolCallId: z.string(),
  status: z.enum(['accepted', 'already_decided', 'error']),
  error: z.object({ code: z.string(), message: z.string() }).optional(),
});
export const batchApprovalResponseSchema = z.object({ results: z.array(approvalDecisionResultSchema) });
export const pendingApprovalsQuerySchema = z
  .object({
    status: z.literal('pending').default('pending'),
    /** Suspended runs looked at per page (each may hold several pending approvals). */
    limit: z.coerce.number().int().min(1).max(apiLimits.maxListLimit).default(apiLimits.defaultListLimit),
    cursor: listCursorSchema.optional(),
  })
  .strict();
export const pendingApprovalsResponseSchema = z.object({
  approvals: z.array(z.object({ runId: z.string(), toolCallId: z.string(), toolName: z.string(), args: z.unknown(), expiresAt: z.string().optional() })),
  /** The next page (older suspended runs), or null when this is the last. */
  nextCursor: z.string().nullable(),
});

/* ---------- WebSocket frames ---------- */

export const wsClientFrameSchema = z.discriminatedUnion('type', [
  z.object({ type: z.literal('subscribe'), runId: runIdSchema, after: z.int().min(0).max(Number.MAX_SAFE_INTEGER).optional() }).strict(),
  z.object({ type: z.literal('unsubscribe'), runId: runIdSchema }).strict(),
  z
    .object({
      type: z.literal('run.create'),
      requestId: z.string().min(1).max(128),
      agentId: agentIdSchema,
      input: runInputSchema,
      conversationId: conversationIdSchema.optional(),
      metadata: runMetadataSchema.optional(),
      idempotencyKey: idempotencyKeySchema.optional(),
    })
    .strict(),
  z
    .object({
      type: z.literal('approval'),
      requestId: z.string().min(1).max(128),
      runId: runIdSchema,
      toolCallId: toolCallIdSchema,
      approved: z.boolean(),
      reason: z.string().max(10_000).optional(),
      args: approvalArgsSchema.optional(),
    })
    .strict(),
  z.object({ type: z.literal('cancel'), requestId: z.string().min(1).max(128), runId: runIdSchema, reason: z.string().max(1000).optional() }).strict(),
  z.object({ type: z.literal('ping') }).strict(),
]);
export type WsClientFrame = z.infer<typeof wsClientFrameSchema>;

/** The query of `GET /v1/ws`: the API key (browsers cannot set headers) or a single-use ticket instead. */
export const webSocketQuerySchema = z.object({
  access_token: accessTokenQueryField,
  ticket: z.string().optional().meta({ description: 'a single-use ticket from POST /v1/ws/tickets, instead of the API key' }),
});

/** `POST /v1/ws/tickets` takes no body (or an empty object). */
export const createWsTicketBodySchema = z.object({}).strict();
/** A single-use ticket for `GET /v1/ws?ticket=`; `expiresAt` is when it stops being accepted. */
export const wsTicketResponseSchema = z.object({ ticket: z.string(), expiresAt: z.string() });
export type WsTicketResponse = z.infer<typeof wsTicketResponseSchema>;
/** What `WS_TICKETS` holds under a ticket's hash: the tenant and the key's short id, never the key. */
export const wsTicketEntrySchema = z.object({ tenantId: z.string(), keyId: z.string(), expiresAt: z.string() });
export type WsTicketEntry = z.infer<typeof wsTicketEntrySchema>;

export type WsServerFrame =
  | { type: 'event'; runId: string; event: Record<string, unknown> }
  | { type: 'run.created'; requestId: string; runId: string; status: string; conversationId: string }
  | { type: 'ack'; requestId: string; status: string }
  | { type: 'error'; requestId?: string; runId?: string; code: string; message: string; run?: RunView }
  | { type: 'pong' };
