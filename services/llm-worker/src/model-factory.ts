import { createOpenAICompatible } from '@ai-sdk/openai-compatible';
import type { LanguageModelV4 } from '@ai-sdk/provider';
import type { EgressPolicy, ModelConfig, TenantSecrets } from '@abide/shared';
import { createScriptedModel } from './scripted-model.ts';

export type ModelFactoryOptions = {
  /** The step of the run being answered (the scripted model answers `steps[step]`). */
  step: number;
  /** The run's tenant: an `openai-compatible` model's `apiKeyEnv` names one of its secrets. */
  tenantId: string;
  /** `TENANT_SECRETS_DIR`, read at call time (a rotated key is used without a restart). */
  secrets: TenantSecrets;
  /** `LLM_EGRESS_ALLOW`: every request of an `openai-compatible` model goes through its `fetch`. */
  egress: Pick<EgressPolicy, 'assertUrlAllowed' | 'fetch'>;
};

/**
 * The AI SDK language model for an agent's `model` config (DESIGN §8). A `baseURL` the egress
 * policy refuses throws a final `egress_denied`; an `apiKeyEnv` that is not a secret of the
 * calling tenant a final `secret_not_found` (the worker's environment is never consulted).
 */
export async function createLanguageModel(config: ModelConfig, options: ModelFactoryOptions): Promise<LanguageModelV4> {
  switch (config.provider) {
    case 'scripted':
      return createScriptedModel(config, { step: options.step });
    case 'openai-compatible': {
      // Checked before the key is read: a refused destination never gets a secret looked up for it.
      options.egress.assertUrlAllowed(config.baseURL);
      const apiKey = config.apiKeyEnv ? await options.secrets.read(options.tenantId, config.apiKeyEnv) : undefined;
      const provider = createOpenAICompatible({
        name: 'openai-compatible',
        baseURL: config.baseURL,
        includeUsage: true,
        fetch: options.egress.fetch,
        ...(apiKey ? { apiKey } : {}),
      });
      return provider.chatModel(config.model);
    }
  }
}
