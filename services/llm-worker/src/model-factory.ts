import { createOpenAICompatible } from '@ai-sdk/openai-compatible';
import type { LanguageModelV4 } from '@ai-sdk/provider';
import { AbideError, type ModelConfig } from '@abide/shared';
import { createScriptedModel } from './scripted-model.ts';

export type ModelFactoryOptions = {
  /** The step of the run being answered (the scripted model answers `steps[step]`). */
  step: number;
  /** The worker's environment; an `openai-compatible` model's key is `env[apiKeyEnv]`. */
  env: Readonly<Record<string, string | undefined>>;
};

/**
 * The AI SDK language model for an agent's `model` config (DESIGN §8). A key variable that is
 * named but not set is a configuration error of this worker: final, with a message naming it.
 */
export function createLanguageModel(config: ModelConfig, options: ModelFactoryOptions): LanguageModelV4 {
  switch (config.provider) {
    case 'scripted':
      return createScriptedModel(config, { step: options.step });
    case 'openai-compatible': {
      let apiKey: string | undefined;
      if (config.apiKeyEnv) {
        apiKey = options.env[config.apiKeyEnv];
        if (!apiKey) {
          throw new AbideError('model_error', `the environment variable ${config.apiKeyEnv} (the model's apiKeyEnv) is not set on the llm-worker`, {
            retryable: false,
          });
        }
      }
      const provider = createOpenAICompatible({
        name: 'openai-compatible',
        baseURL: config.baseURL,
        includeUsage: true,
        ...(apiKey ? { apiKey } : {}),
      });
      return provider.chatModel(config.model);
    }
  }
}
