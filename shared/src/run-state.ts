import { z } from 'zod';
import { agentSchema } from './agent.ts';
import { toolCallIdSchema } from './envelope.ts';
import { modelMessageSchema } from './model-messages.ts';

export const runStatuses = ['queued', 'running', 'suspended', 'completed', 'failed', 'cancelled'] as const;
export const runStatusSchema = z.enum(runStatuses);
export type RunStatus = z.infer<typeof runStatusSchema>;
export const terminalStatuses: readonly RunStatus[] = ['completed', 'failed', 'cancelled'];
export const isTerminalStatus = (status: RunStatus) => terminalStatuses.includes(status);

export const usageSchema = z.object({
  inputTokens: z.number().min(0),
  outputTokens: z.number().min(0),
  totalTokens: z.number().min(0),
});
export type Usage = z.infer<typeof usageSchema>;
export const zeroUsage: Usage = { inputTokens: 0, outputTokens: 0, totalTokens: 0 };

export const errorInfoSchema = z.object({ code: z.string(), message: z.string() });
export type ErrorInfo = z.infer<typeof errorInfoSchema>;

/** How a tool call ended. */
export const toolOutcomeSchema = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('success'), value: z.unknown() }),
  z.object({ kind: z.literal('error'), error: errorInfoSchema }),
  z.object({ kind: z.literal('denied'), reason: z.string().optional() }),
  z.object({ kind: z.literal('cancelled') }),
]);
export type ToolOutcome = z.infer<typeof toolOutcomeSchema>;

export const approvalRecordSchema = z.object({
  decisionId: z.string(),
  approved: z.boolean(),
  reason: z.string().optional(),
  argsHash: z.string(),
  /** Edited arguments the call was approved with, if any. */
  args: z.record(z.string(), z.unknown()).optional(),
  source: z.string(),
  decidedBy: z.string().optional(),
  at: z.string(),
});
export type ApprovalRecord = z.infer<typeof approvalRecordSchema>;

export const toolCallStates = ['awaiting_approval', 'requested', 'completed'] as const;

export const toolCallRecordSchema = z.object({
  toolCallId: toolCallIdSchema,
  providerToolCallId: z.string(),
  step: z.int().min(0),
  toolName: z.string(),
  args: z.unknown(),
  needsApproval: z.boolean(),
  state: z.enum(toolCallStates),
  approval: approvalRecordSchema.optional(),
  /** When the pending approval expires (ISO time). */
  approvalExpiresAt: z.string().optional(),
  outcome: toolOutcomeSchema.optional(),
});
export type ToolCallRecord = z.infer<typeof toolCallRecordSchema>;

export const awaitingSchema = z.object({
  kind: z.enum(['llm', 'tools', 'approvals']).nullable(),
  step: z.int().min(0),
});
export type Awaiting = z.infer<typeof awaitingSchema>;

/**
 * The state of a run after a transition (DESIGN §3). Stored whole only in a base transition
 * (version 1, every `snapshotEvery`-th); other transitions store what changed (`run-delta.ts`),
 * and the `runs` read model a summary (`run-summary.ts`).
 */
export const runStateSchema = z.looseObject({
  schemaVersion: z.literal(1),
  runId: z.string(),
  tenantId: z.string(),
  agentId: z.string(),
  agentSnapshot: agentSchema,
  conversationId: z.string(),
  status: runStatusSchema,
  /** The current model step (0-based). */
  step: z.int().min(0),
  awaiting: awaitingSchema,
  /** The whole conversation so far: earlier runs of the conversation, this run's input, and this run's steps. */
  messages: z.array(modelMessageSchema),
  /** How many of `messages` came from earlier runs of the conversation. */
  historyLength: z.int().min(0),
  toolCalls: z.array(toolCallRecordSchema),
  pendingApprovals: z.array(z.string()),
  /** The attempt of the model step whose result was recorded, per step. */
  llmAttempts: z.array(z.int().min(1)),
  usage: usageSchema,
  output: z.string().nullable(),
  error: errorInfoSchema.nullable(),
  cancelReason: z.string().nullable(),
  requestHash: z.string(),
  metadata: z.record(z.string(), z.unknown()).nullable(),
  nextDeadlineAt: z.string().nullable(),
  /** The tenant's active-run slot the run holds until it ends (issue 8); absent on runs created before the limit existed. */
  runSlot: z.int().min(0).optional(),
  createdAt: z.string(),
  updatedAt: z.string(),
});
export type RunState = z.infer<typeof runStateSchema>;
