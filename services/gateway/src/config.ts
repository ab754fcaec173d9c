import { ConfigError, gatewayEnvSchema, loadConfig, parseApiKeys } from '@abide/shared';

type GatewayEnvironment = ReturnType<typeof loadConfig<typeof gatewayEnvSchema>>;

/** The gateway's configuration (DESIGN §9), parsed once and frozen. */
export type GatewayConfig = Readonly<
  GatewayEnvironment & {
    /** API key → tenant. */
    apiKeys: ReadonlyMap<string, string>;
  }
>;

/**
 * Loads the gateway's environment: every variable of `gatewayEnvSchema` plus the API keys
 * (`ABIDE_API_KEYS` and/or `ABIDE_API_KEYS_FILE`). Throws a `ConfigError` naming the variable.
 */
export function loadGatewayConfig(env: Record<string, string | undefined>): GatewayConfig {
  const config = loadConfig(gatewayEnvSchema, env);
  let apiKeys: Map<string, string>;
  try {
    apiKeys = parseApiKeys(config.ABIDE_API_KEYS, config.ABIDE_API_KEYS_FILE);
  } catch (error) {
    if (error instanceof ConfigError) throw error;
    // The keys file could not be read: name the variable, not the keys.
    throw new ConfigError(`invalid configuration:\n  ABIDE_API_KEYS_FILE: cannot read "${config.ABIDE_API_KEYS_FILE}" (${(error as Error).message})`, { cause: error });
  }
  if (config.REQUEST_TIMEOUT > 0 && config.HEADERS_TIMEOUT > config.REQUEST_TIMEOUT) {
    throw new ConfigError('invalid configuration:\n  HEADERS_TIMEOUT: must be at most REQUEST_TIMEOUT');
  }
  return Object.freeze({ ...config, apiKeys });
}
