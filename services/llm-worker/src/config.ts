import { llmWorkerEnvSchema, loadConfig } from '@abide/shared';

export type LlmWorkerConfig = ReturnType<typeof loadConfig<typeof llmWorkerEnvSchema>>;

/**
 * Parses the llm-worker's environment once (DESIGN §9); a bad value throws a `ConfigError`
 * naming the variable. The only place that reads `process.env`. Model keys are not taken from
 * the environment: `apiKeyEnv` names a secret of the calling tenant (`TENANT_SECRETS_DIR`).
 */
export function loadLlmWorkerConfig(env: Record<string, string | undefined> = process.env): Readonly<LlmWorkerConfig> {
  return loadConfig(llmWorkerEnvSchema, env);
}
