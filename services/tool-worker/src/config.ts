import { ConfigError, loadConfig, serviceEnvironment, toolWorkerEnvSchema } from '@abide/shared';
import { invalidEgressEntries } from './egress.ts';

export type ToolWorkerConfig = ReturnType<typeof loadConfig<typeof toolWorkerEnvSchema>>;

/**
 * The tool-worker's configuration, parsed once (STYLE 11), and the environment HTTP tools'
 * `headersFromEnv` may read. That environment is the worker's own minus the variables that
 * configure the worker (`NATS_PASSWORD`, `NATS_CREDS`, …): an agent definition names variables,
 * and must not be able to send the worker's own credentials to a tool.
 */
export function loadToolWorkerConfig(env: Readonly<Record<string, string | undefined>>): {
  config: ToolWorkerConfig;
  toolEnvironment: Readonly<Record<string, string | undefined>>;
} {
  const config = loadConfig(toolWorkerEnvSchema, env);
  const invalid = invalidEgressEntries(config.TOOL_EGRESS_ALLOW);
  if (invalid.length > 0) {
    throw new ConfigError(`invalid configuration:\n  TOOL_EGRESS_ALLOW: ${invalid.map((entry) => `"${entry}"`).join(', ')} is not host, host:port, *.domain or *`);
  }
  const own = new Set(serviceEnvironment['tool-worker'].variables);
  const toolEnvironment = Object.freeze(Object.fromEntries(Object.entries(env).filter(([name]) => !own.has(name))));
  return { config, toolEnvironment };
}
