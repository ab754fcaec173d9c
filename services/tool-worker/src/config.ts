import { loadConfig, toolWorkerEnvSchema } from '@abide/shared';

export type ToolWorkerConfig = ReturnType<typeof loadConfig<typeof toolWorkerEnvSchema>>;

/**
 * The tool-worker's configuration, parsed once (STYLE 11). Nothing of the worker's environment
 * reaches a tool: `headersFromEnv` names secrets of the calling tenant (`TENANT_SECRETS_DIR`).
 */
export function loadToolWorkerConfig(env: Readonly<Record<string, string | undefined>>): ToolWorkerConfig {
  return loadConfig(toolWorkerEnvSchema, env);
}
