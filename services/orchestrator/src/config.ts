import { loadConfig, orchestratorEnvSchema } from '@abide/shared';

/** The orchestrator's configuration, parsed once from the environment. */
export function loadOrchestratorConfig(env: Record<string, string | undefined>) {
  return loadConfig(orchestratorEnvSchema, env);
}
export type OrchestratorConfig = ReturnType<typeof loadOrchestratorConfig>;
