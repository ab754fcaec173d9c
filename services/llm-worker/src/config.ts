import { llmWorkerEnvSchema, loadConfig } from '@abide/shared';

export type LlmWorkerSettings = ReturnType<typeof loadConfig<typeof llmWorkerEnvSchema>>;

/** The llm-worker's configuration, plus the environment model API keys are read from. */
export type LlmWorkerConfig = LlmWorkerSettings & {
  /**
   * A frozen snapshot of the environment: an `openai-compatible` model's `apiKeyEnv` names a
   * variable of it (keys never live in MongoDB or on the bus). Never log it.
   */
  secrets: Readonly<Record<string, string | undefined>>;
};

/**
 * Parses the llm-worker's environment once (DESIGN §9); a bad value throws a `ConfigError`
 * naming the variable. The only place that reads `process.env`.
 */
export function loadLlmWorkerConfig(env: Record<string, string | undefined> = process.env): Readonly<LlmWorkerConfig> {
  const settings = loadConfig(llmWorkerEnvSchema, env);
  const secrets = Object.freeze({ ...env });
  // `secrets` is not enumerable so that logging the config never prints the environment.
  return Object.freeze(Object.defineProperty({ ...settings }, 'secrets', { value: secrets, enumerable: false }) as LlmWorkerConfig);
}
