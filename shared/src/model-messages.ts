import { z } from 'zod';
import { storedJsonValueSchema } from './stored-json.ts';

/**
 * The conversation, in the AI SDK's `ModelMessage` shape (system prompt excluded: it is the
 * agent's `system`), built for two readers from one definition:
 * - `modelMessageSchema`, for messages Abide wrote (run state, `llm.request`): tolerant, unknown
 *   fields of a part kept, any JSON in tool inputs and outputs;
 * - `inputMessageSchema`, for messages a client sends (`POST /v1/runs` `input`): unknown fields of
 *   a part dropped, tool inputs and outputs limited to JSON MongoDB stores as is (`stored-json.ts`).
 */
function buildModelMessageSchema(options: { value: z.ZodType; part: typeof z.looseObject | typeof z.object }) {
  const { value, part } = options;
  const textPart = part({ type: z.literal('text'), text: z.string() });
  const toolCallPart = part({
    type: z.literal('tool-call'),
    toolCallId: z.string().min(1).max(256),
    toolName: z.string().min(1).max(64),
    input: value,
  });
  const toolResultOutput = z.discriminatedUnion('type', [
    z.object({ type: z.literal('json'), value }),
    z.object({ type: z.literal('text'), value: z.string() }),
    z.object({ type: z.literal('error-text'), value: z.string() }),
    z.object({ type: z.literal('error-json'), value }),
    z.object({ type: z.literal('execution-denied'), reason: z.string().optional() }),
  ]);
  const toolResultPart = part({
    type: z.literal('tool-result'),
    toolCallId: z.string().min(1).max(256),
    toolName: z.string().min(1).max(64),
    output: toolResultOutput,
  });
  const user = z.object({
    role: z.literal('user'),
    content: z.union([z.string(), z.array(textPart).min(1)]),
  });
  const assistant = z.object({
    role: z.literal('assistant'),
    content: z.union([z.string(), z.array(z.discriminatedUnion('type', [textPart, toolCallPart]))]),
  });
  const tool = z.object({
    role: z.literal('tool'),
    content: z.array(toolResultPart).min(1),
  });
  return { toolResultOutput, user, assistant, tool, message: z.discriminatedUnion('role', [user, assistant, tool]) };
}

const written = buildModelMessageSchema({ value: z.unknown(), part: z.looseObject });

export const toolResultOutputSchema = written.toolResultOutput;
export type ToolResultOutput = z.infer<typeof toolResultOutputSchema>;
export const userMessageSchema = written.user;
export const assistantMessageSchema = written.assistant;
export const toolMessageSchema = written.tool;
export const modelMessageSchema = written.message;
export type ModelMessage = z.infer<typeof modelMessageSchema>;
export type AssistantMessage = z.infer<typeof assistantMessageSchema>;
export type ToolMessage = z.infer<typeof toolMessageSchema>;

/** A message of a run's `input` as a client sends it (see above); parses to a `ModelMessage`. */
export const inputMessageSchema = buildModelMessageSchema({ value: storedJsonValueSchema, part: z.object }).message;
