import { z } from 'zod';
import { modelConfigSchema, toolDefinitionSchema, toolInputSchemaSchema } from './agent.ts';
import { envelopeSchema, isoDateSchema, toolCallIdSchema, toolNameSchema, type Envelope } from './envelope.ts';
import { modelMessageSchema } from './model-messages.ts';
import { errorInfoSchema, toolOutcomeSchema, usageSchema, type RunState } from './run-state.ts';

/* ---------- run.in.<runId>.<kind> (RUN_INBOX) ---------- */

/**
 * Version 1 of a run exactly as committed (its whole state), carried by its `start` when small
 * (`startWithStateMaxBytes`): the orchestrator commits version 2 on it without reading it back.
 * Version 1's outbox is always the one `start` message, and the message arriving proves it published.
 */
export const initialTransitionSchema = z.object({
  /** The transition's `at` (ISO time). */
  at: isoDateSchema,
  cause: z.string(),
  /** The run's state at version 1, as committed (loose: taken whole, never reshaped by parsing). */
  state: z.looseObject({ runId: z.string(), tenantId: z.string(), status: z.literal('queued') }),
  traceparent: z.string().optional(),
});
export type InitialTransition = { at: string; cause: string; state: RunState; traceparent?: string };

export const startPayloadSchema = z.object({ initial: initialTransitionSchema.optional() });
export const startMessageSchema = envelopeSchema('start', startPayloadSchema);

export const llmToolCallSchema = z.object({
  providerToolCallId: z.string().min(1).max(256),
  toolName: z.string().min(1).max(256),
  args: z.unknown(),
});
export type LlmToolCall = z.infer<typeof llmToolCallSchema>;

/** A finished model step (or its final failure). */
export const llmResultPayloadSchema = z.discriminatedUnion('ok', [
  z.object({
    ok: z.literal(true),
    step: z.int().min(0),
    attempt: z.int().min(1),
    text: z.string(),
    toolCalls: z.array(llmToolCallSchema),
    finishReason: z.string(),
    usage: usageSchema,
  }),
  z.object({
    ok: z.literal(false),
    step: z.int().min(0),
    attempt: z.int().min(1),
    error: errorInfoSchema,
  }),
]);
export type LlmResultPayload = z.infer<typeof llmResultPayloadSchema>;
export const llmResultMessageSchema = envelopeSchema('llm_result', llmResultPayloadSchema);

export const toolResultPayloadSchema = z.object({
  toolCallId: toolCallIdSchema,
  step: z.int().min(0),
  outcome: toolOutcomeSchema,
});
export type ToolResultPayload = z.infer<typeof toolResultPayloadSchema>;
export const toolResultMessageSchema = envelopeSchema('tool_result', toolResultPayloadSchema);

export const cancelPayloadSchema = z.object({ reason: z.string().max(1000).optional() });
export const cancelMessageSchema = envelopeSchema('cancel', cancelPayloadSchema);

/** A deadline fired (published by an orchestrator's deadline sweeper). */
export const timerPayloadSchema = z.object({ deadlineAt: z.string() });
export const timerMessageSchema = envelopeSchema('timer', timerPayloadSchema);

export const runInboxMessageSchema = z.discriminatedUnion('type', [
  startMessageSchema,
  llmResultMessageSchema,
  toolResultMessageSchema,
  cancelMessageSchema,
  timerMessageSchema,
]);
export type RunInboxMessage = z.infer<typeof runInboxMessageSchema>;
export type StartMessage = z.infer<typeof startMessageSchema>;
export type LlmResultMessage = Envelope<'llm_result', LlmResultPayload>;
export type ToolResultMessage = Envelope<'tool_result', ToolResultPayload>;
export type CancelMessage = z.infer<typeof cancelMessageSchema>;
export type TimerMessage = z.infer<typeof timerMessageSchema>;

/* ---------- llm.request.<runId> (LLM_REQUESTS) ---------- */

export const llmToolSpecSchema = z.object({
  name: toolNameSchema,
  description: z.string(),
  inputSchema: toolInputSchemaSchema,
});

/** A reference to an object in the `PAYLOADS` store, used when a message would pass the server's max payload. */
export const payloadRefSchema = z.object({ store: z.literal('PAYLOADS'), name: z.string().min(1) });

/** The model input of one step; the conversation is inline or, when large, in the object store. */
export const llmRequestBodySchema = z.object({
  system: z.string().optional(),
  messages: z.array(modelMessageSchema),
});
export type LlmRequestBody = z.infer<typeof llmRequestBodySchema>;

export const llmRequestPayloadSchema = z.object({
  step: z.int().min(0),
  model: modelConfigSchema,
  tools: z.array(llmToolSpecSchema),
  timeoutMs: z.int().min(1),
  body: llmRequestBodySchema.optional(),
  bodyRef: payloadRefSchema.optional(),
});
export type LlmRequestPayload = z.infer<typeof llmRequestPayloadSchema>;
export const llmRequestMessageSchema = envelopeSchema('llm.request', llmRequestPayloadSchema);
export type LlmRequestMessage = z.infer<typeof llmRequestMessageSchema>;

/* ---------- tool.request.<toolName> (TOOL_REQUESTS) ---------- */

export const toolRequestPayloadSchema = z.object({
  toolCallId: toolCallIdSchema,
  step: z.int().min(0),
  tool: toolDefinitionSchema,
  args: z.unknown(),
  timeoutMs: z.int().min(1),
});
export type ToolRequestPayload = z.infer<typeof toolRequestPayloadSchema>;
export const toolRequestMessageSchema = envelopeSchema('tool.request', toolRequestPayloadSchema);
export type ToolRequestMessage = z.infer<typeof toolRequestMessageSchema>;

/* ---------- approvals.<tenantId>.<runId> (APPROVALS) ---------- */

/**
 * A decision on a pending tool call. The gateway publishes it after creating the ledger entry;
 * an internal service may publish it straight to `approvals.<tenantId>.<runId>` (the
 * orchestrator then creates the ledger entry itself). The ledger's first entry wins.
 */
export const approvalPayloadSchema = z.object({
  toolCallId: toolCallIdSchema,
  approved: z.boolean(),
  reason: z.string().max(10_000).optional(),
  /** Approve with edited arguments (validated against the tool's input schema). */
  args: z.record(z.string(), z.unknown()).optional(),
  /** `user` for the public API, `timeout` for a deadline, else the publishing service's name. */
  source: z.string().min(1).max(128),
  decidedBy: z.string().max(256).optional(),
});
export type ApprovalPayload = z.infer<typeof approvalPayloadSchema>;
export const approvalMessageSchema = envelopeSchema('approval', approvalPayloadSchema);
export type ApprovalMessage = z.infer<typeof approvalMessageSchema>;

/** A value in KV `APPROVAL_LEDGER` (key `<runId>.<toolCallId>`), written with an atomic create. */
export const approvalLedgerEntrySchema = z.object({
  decisionId: z.string(),
  approved: z.boolean(),
  argsHash: z.string(),
  args: z.record(z.string(), z.unknown()).optional(),
  reason: z.string().optional(),
  source: z.string(),
  decidedBy: z.string().optional(),
  at: z.string(),
});
export type ApprovalLedgerEntry = z.infer<typeof approvalLedgerEntrySchema>;

/* ---------- KV values ---------- */

/** `TOOL_RESULTS` `<runId>.<toolCallId>`: a finished call. */
export const toolResultRecordSchema = toolResultPayloadSchema;
/** `TOOL_RESULTS` `<runId>.<toolCallId>.started`: a call being executed, refreshed as a heartbeat. */
export const toolStartedMarkerSchema = z.object({ worker: z.string(), attempt: z.int().min(1), heartbeatAt: z.string() });
export type ToolStartedMarker = z.infer<typeof toolStartedMarkerSchema>;
/** `LLM_RESULTS` `<runId>.<step>`: a finished model step. */
export const llmResultRecordSchema = llmResultPayloadSchema;
/** `RUN_CONTROL` `<runId>`: the run was cancelled. */
export const runControlEntrySchema = z.object({ cancelled: z.literal(true), at: z.string(), reason: z.string().optional() });
export type RunControlEntry = z.infer<typeof runControlEntrySchema>;

/* ---------- $JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer> (ADVISORIES) ---------- */

/** A NATS max-deliveries advisory (not an envelope: the server publishes it). */
export const maxDeliveriesAdvisorySchema = z.looseObject({
  type: z.string(),
  id: z.string(),
  stream: z.string(),
  consumer: z.string(),
  stream_seq: z.number().int().min(1),
  deliveries: z.number().int().min(1),
});
export type MaxDeliveriesAdvisory = z.infer<typeof maxDeliveriesAdvisorySchema>;

export { modelMessageSchema };
