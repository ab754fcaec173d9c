import type {
  LanguageModelV4,
  LanguageModelV4CallOptions,
  LanguageModelV4Content,
  LanguageModelV4GenerateResult,
  LanguageModelV4StreamPart,
  LanguageModelV4StreamResult,
  LanguageModelV4Usage,
} from '@ai-sdk/provider';
import { AbideError, type ScriptedModelConfig } from '@abide/shared';

/** Characters per streamed text chunk when the config names none. */
export const defaultScriptedChunkSize = 16;

type ScriptedStep = ScriptedModelConfig['steps'][number];

/**
 * A deterministic model (DESIGN §8) implementing the AI SDK's `LanguageModelV4` spec, for demos,
 * tests and benchmarks. Step `i` of a run answers `config.steps[i]`: its text streamed in chunks
 * of `chunkSize` characters, each after `delayMs` (abortable through the call's `abortSignal`),
 * then its tool calls (provider ids `call_<step>_<index>`), then `finish` with `tool-calls` or
 * `stop` and a usage of about one token per four characters.
 *
 * A step past the end of the script is an error, not a repeat: a script that runs out is a
 * misconfigured agent, and failing the run with `model_error` says so loudly (a silent repeat
 * could loop on tool calls until `maxSteps`, or end the run with text nobody wrote for it).
 */
export function createScriptedModel(config: ScriptedModelConfig, options: { step: number }): LanguageModelV4 {
  const chunkSize = config.chunkSize ?? defaultScriptedChunkSize;
  const delayMs = config.delayMs ?? 0;
  const { step } = options;
  const modelId = `scripted-${config.steps.length}-steps`;

  function scriptedStep(): ScriptedStep {
    const answer = config.steps[step];
    if (!answer) {
      throw new AbideError('model_error', `the scripted model has ${config.steps.length} step(s); step ${step} was requested`, { retryable: false });
    }
    return answer;
  }

  function toolCallsOf(answer: ScriptedStep) {
    return (answer.toolCalls ?? []).map((call, index) => ({
      type: 'tool-call' as const,
      toolCallId: `call_${step}_${index}`,
      toolName: call.toolName,
      input: JSON.stringify(call.args),
    }));
  }

  function finishOf(answer: ScriptedStep, callOptions: LanguageModelV4CallOptions) {
    const toolCalls = toolCallsOf(answer);
    const text = answer.text ?? '';
    const reason = toolCalls.length > 0 ? 'tool-calls' : 'stop';
    return {
      finishReason: { unified: reason, raw: reason } as const,
      usage: usageFor(JSON.stringify(callOptions.prompt).length, text.length + toolCalls.reduce((sum, call) => sum + call.input.length, 0)),
    };
  }

  return {
    specificationVersion: 'v4',
    provider: 'scripted',
    modelId,
    supportedUrls: {},

    async doGenerate(callOptions: LanguageModelV4CallOptions): Promise<LanguageModelV4GenerateResult> {
      callOptions.abortSignal?.throwIfAborted();
      const answer = scriptedStep();
      const content: LanguageModelV4Content[] = [];
      if (answer.text) content.push({ type: 'text', text: answer.text });
      content.push(...toolCallsOf(answer));
      return { content, ...finishOf(answer, callOptions), warnings: [] };
    },

    async doStream(callOptions: LanguageModelV4CallOptions): Promise<LanguageModelV4StreamResult> {
      const signal = callOptions.abortSignal;
      signal?.throwIfAborted();
      const answer = scriptedStep();
      const text = answer.text ?? '';
      let cancelled = false;
      const stream = new ReadableStream<LanguageModelV4StreamPart>({
        async start(controller) {
          try {
            controller.enqueue({ type: 'stream-start', warnings: [] });
            controller.enqueue({ type: 'response-metadata', id: `scripted_${step}`, modelId, timestamp: new Date(0) });
            if (text.length > 0) {
              controller.enqueue({ type: 'text-start', id: 'txt-0' });
              for (let offset = 0; offset < text.length && !cancelled; offset += chunkSize) {
                if (delayMs > 0) await sleep(delayMs, signal);
                if (cancelled) return;
                controller.enqueue({ type: 'text-delta', id: 'txt-0', delta: text.slice(offset, offset + chunkSize) });
              }
              controller.enqueue({ type: 'text-end', id: 'txt-0' });
            }
            if (cancelled) return;
            for (const call of toolCallsOf(answer)) controller.enqueue(call);
            controller.enqueue({ type: 'finish', ...finishOf(answer, callOptions) });
            controller.close();
          } catch (error) {
            // An abort while waiting between chunks ends the stream with the abort's reason.
            if (!cancelled) controller.error(error);
          }
        },
        cancel() {
          cancelled = true;
        },
      });
      return { stream };
    },
  };
}

function usageFor(promptChars: number, outputChars: number): LanguageModelV4Usage {
  const input = Math.ceil(promptChars / 4);
  const output = Math.ceil(outputChars / 4);
  return {
    inputTokens: { total: input, noCache: input, cacheRead: undefined, cacheWrite: undefined },
    outputTokens: { total: output, text: output, reasoning: undefined },
  };
}

/** Waits `ms`, rejecting with the signal's reason if it aborts first. */
function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal!.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
