import { jsonSchema, streamText, tool, type LanguageModel, type LanguageModelUsage, type ModelMessage, type ToolSet } from 'ai';
import type { JSONSchema7 } from '@ai-sdk/provider';
import { jsonByteLength, modelOutputLimits, type LlmRequestBody, type LlmRequestPayload, type LlmToolCall, type Usage } from '@abide/shared';

/** A tool as the model sees it: name, description, input schema (no executor). */
export type LlmToolSpec = LlmRequestPayload['tools'][number];

/** How one model call ended. */
export type StreamStepOutcome =
  | { kind: 'finished'; text: string; toolCalls: LlmToolCall[]; finishReason: string; usage: Usage }
  /** The call's signal aborted; the caller knows which of its signals did. */
  | { kind: 'aborted' }
  /** The provider failed, or the model's output cannot be used (e.g. a call of an unknown tool). */
  | { kind: 'failed'; error: unknown }
  /** The output passed a bound of `OutputLimits`; the stream was aborted there. Final. */
  | { kind: 'too_large'; message: string };

/** Bounds on one step's output. @default modelOutputLimits */
export type OutputLimits = { maxTextChars: number; maxToolCalls: number; maxToolArgsBytes: number };

export type StreamStepInput = {
  model: LanguageModel;
  body: LlmRequestBody;
  tools: readonly LlmToolSpec[];
  signal: AbortSignal;
  /** Receives every text delta as it streams; awaited (backpressure). */
  onText(text: string): void | Promise<void>;
  limits?: OutputLimits;
};

/**
 * One model step through the AI SDK's `streamText`, with tools given as schemas only (no
 * `execute`: the tool-worker runs them), a single step and no SDK retries (JetStream
 * redelivery retries, with the attempt visible in the events). Errors arrive as stream parts and
 * are returned, not thrown, so the caller decides what they mean. Output is bounded while it
 * streams (text characters, tool calls, bytes of tool-call arguments): past a bound the stream
 * is aborted at once, so a hostile model server cannot grow the worker's memory.
 */
export async function streamStep(input: StreamStepInput): Promise<StreamStepOutcome> {
  const tools: ToolSet = Object.fromEntries(
    input.tools.map((spec) => [spec.name, tool({ description: spec.description, inputSchema: jsonSchema(spec.inputSchema as JSONSchema7) })]),
  );
  let text = '';
  const toolCalls: LlmToolCall[] = [];
  let finish: { finishReason: string; usage: LanguageModelUsage } | undefined;
  let failure: { error: unknown } | undefined;
  let aborted = false;
  const limits = input.limits ?? modelOutputLimits;
  let tooLarge: string | undefined;
  let argsBytes = 0;
  let streamedArgsBytes = 0;
  const bound = new AbortController();
  try {
    const result = streamText({
      model: input.model,
      ...(input.body.system === undefined ? {} : { instructions: input.body.system }),
      // The shared zod schema is the AI SDK's ModelMessage shape (model-messages.ts).
      messages: input.body.messages as ModelMessage[],
      tools,
      abortSignal: AbortSignal.any([input.signal, bound.signal]),
      maxRetries: 0,
      // Errors are read from the stream's `error` parts below; the default handler would only
      // print them to stderr.
      onError: () => {},
    });
    for await (const part of result.stream) {
      switch (part.type) {
        case 'text-delta':
          if (text.length + part.text.length > limits.maxTextChars) {
            tooLarge = `the model's text passed ${limits.maxTextChars} characters in one step`;
            break;
          }
          text += part.text;
          await input.onText(part.text);
          break;
        case 'tool-input-delta':
          // Arguments stream before the call is complete: bound them as they arrive.
          streamedArgsBytes += Buffer.byteLength(part.delta, 'utf8');
          if (streamedArgsBytes > limits.maxToolArgsBytes) tooLarge = `the model's tool-call arguments passed ${limits.maxToolArgsBytes} bytes in one step`;
          break;
        case 'tool-call':
          if (part.invalid) {
            failure ??= { error: new Error(`the model made an unusable call of tool "${part.toolName}": ${describe(part.error)}`) };
          } else if (toolCalls.length >= limits.maxToolCalls) {
            tooLarge = `the model made more than ${limits.maxToolCalls} tool calls in one step`;
          } else {
            argsBytes += jsonByteLength(part.input);
            if (argsBytes > limits.maxToolArgsBytes) tooLarge = `the model's tool-call arguments passed ${limits.maxToolArgsBytes} bytes in one step`;
            else toolCalls.push({ providerToolCallId: part.toolCallId, toolName: part.toolName, args: part.input });
          }
          break;
        case 'error':
          failure ??= { error: part.error };
          break;
        case 'abort':
          aborted = true;
          break;
        case 'finish':
          finish = { finishReason: part.finishReason, usage: part.totalUsage };
          break;
        default:
          break;
      }
      if (tooLarge) {
        // Stop the provider's stream (and its connection) here; nothing more is read or kept.
        bound.abort(new Error(tooLarge));
        break;
      }
    }
  } catch (error) {
    failure ??= { error };
  }
  if (tooLarge) return { kind: 'too_large', message: tooLarge };
  if (aborted || input.signal.aborted) return { kind: 'aborted' };
  if (failure) return { kind: 'failed', error: failure.error };
  if (!finish) return { kind: 'failed', error: new Error('the model stream ended without finishing') };
  const inputTokens = finish.usage.inputTokens ?? 0;
  const outputTokens = finish.usage.outputTokens ?? 0;
  return {
    kind: 'finished',
    text,
    toolCalls,
    finishReason: finish.finishReason,
    usage: { inputTokens, outputTokens, totalTokens: finish.usage.totalTokens ?? inputTokens + outputTokens },
  };
}

function describe(error: unknown): string {
  if (error instanceof Error) return error.message;
  return String(error);
}
