import { z } from 'zod';

/**
 * The conversation, in the AI SDK's `ModelMessage` shape (system prompt excluded: it is the
 * agent's `system`). Stored in the run state and sent to the llm-worker as is.
 */
const textPart = z.looseObject({ type: z.literal('text'), text: z.string() });
const toolCallPart = z.looseObject({
  type: z.literal('tool-call'),
  toolCallId: z.string().min(1).max(256),
  toolName: z.string().min(1).max(64),
  input: z.unknown(),
});
export const toolResultOutputSchema = z.discriminatedUnion('type', [
  z.object({ type: z.literal('json'), value: z.unknown() }),
  z.object({ type: z.literal('text'), value: z.string() }),
  z.object({ type: z.literal('error-text'), value: z.string() }),
  z.object({ type: z.literal('error-json'), value: z.unknown() }),
  z.object({ type: z.literal('execution-denied'), reason: z.string().optional() }),
]);
export type ToolResultOutput = z.infer<typeof toolResultOutputSchema>;
const toolResultPart = z.looseObject({
  type: z.literal('tool-result'),
  toolCallId: z.string().min(1).max(256),
  toolName: z.string().min(1).max(64),
  output: toolResultOutputSchema,
});

export const userMessageSchema = z.object({
  role: z.literal('user'),
  content: z.union([z.string(), z.array(textPart).min(1)]),
});
export const assistantMessageSchema = z.object({
  role: z.literal('assistant'),
  content: z.union([z.string(), z.array(z.discriminatedUnion('type', [textPart, toolCallPart]))]),
});
export const toolMessageSchema = z.object({
  role: z.literal('tool'),
  content: z.array(toolResultPart).min(1),
});
export const modelMessageSchema = z.discriminatedUnion('role', [userMessageSchema, assistantMessageSchema, toolMessageSchema]);
export type ModelMessage = z.infer<typeof modelMessageSchema>;
export type AssistantMessage = z.infer<typeof assistantMessageSchema>;
export type ToolMessage = z.infer<typeof toolMessageSchema>;
