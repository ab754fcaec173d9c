import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { durationSchema, parseDuration } from './durations.ts';

/**
 * Environment variables (DESIGN §9), per service. Each service's `config.ts` loads its schema
 * once with `loadConfig`; nothing else reads `process.env`.
 */

const port = (fallback: number) => z.coerce.number().int().min(0).max(65_535).default(fallback);
const positiveInt = (fallback: number, max: number) => z.coerce.number().int().min(1).max(max).default(fallback);
const duration = (fallback: string) => durationSchema.default(parseDuration(fallback));
const commaList = z
  .string()
  .default('')
  .transform((text) => text.split(',').map((item) => item.trim()).filter(Boolean));

const natsFields = {
  NATS_URL: z.string().default('nats://127.0.0.1:4222'),
  NATS_USER: z.string().optional(),
  NATS_PASSWORD: z.string().optional(),
  NATS_CREDS: z.string().optional(),
};

const commonFields = {
  ...natsFields,
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  JS_REPLICAS: z.coerce.number().int().min(1).max(5).default(1),
  JS_DUPLICATE_WINDOW: duration('10m'),
  EVENTS_MAX_AGE: duration('7d'),
  SHUTDOWN_GRACE: duration('25s'),
  /** Interface the HTTP servers (gateway API, health ports) bind to; images set 0.0.0.0. */
  LISTEN_HOST: z.string().min(1).default('127.0.0.1'),
  /** Test only: `<service>.<point>[@N]`, comma-separated; the process kills itself there (see crash-points.ts). */
  ABIDE_CRASH_POINTS: z.string().optional(),
};

const mongoFields = { MONGO_URL: z.string().regex(/^mongodb(\+srv)?:\/\//, 'must be a mongodb:// URL').default('mongodb://127.0.0.1:27017/abide') };

export const gatewayEnvSchema = z.object({
  ...commonFields,
  ...mongoFields,
  GATEWAY_PORT: port(8080),
  /** `key:tenant,key:tenant` */
  ABIDE_API_KEYS: z.string().optional(),
  /** A file with one `key:tenant` per line (or comma-separated). */
  ABIDE_API_KEYS_FILE: z.string().optional(),
  MAX_BODY_BYTES: positiveInt(1_048_576, 64 * 1_048_576),
  WS_MAX_FRAME_BYTES: positiveInt(1_048_576, 64 * 1_048_576),
  /** Allowed `Origin`s of browser WebSocket connections; empty allows only connections without an Origin. `*` allows all. */
  WS_ALLOWED_ORIGINS: commaList,
  /**
   * Runs a tenant may have between creation and their end, suspended ones included, across every
   * gateway (issue 8). The TENANT_MAX_* limits are slots probed one by one: a refusal costs a few
   * operations per slot, hence at most 1,000.
   */
  TENANT_MAX_ACTIVE_RUNS: positiveInt(100, 1_000),
  /** SSE streams plus WebSockets a tenant may hold open at once, across every gateway. */
  TENANT_MAX_CONNECTIONS: positiveInt(100, 1_000),
  /** Run event subscriptions (SSE streams, WebSocket `subscribe`s) a tenant may hold at once, across every gateway. */
  TENANT_MAX_SUBSCRIPTIONS: positiveInt(500, 1_000),
});

export const orchestratorEnvSchema = z.object({
  ...commonFields,
  ...mongoFields,
  HEALTH_PORT: port(8081),
  /** Messages a replica processes at once (its pull batch size). */
  ORCHESTRATOR_CONCURRENCY: positiveInt(64, 4096),
});

export const llmWorkerEnvSchema = z.object({
  ...commonFields,
  HEALTH_PORT: port(8082),
  LLM_CONCURRENCY: positiveInt(16, 1024),
  /** Model calls of one tenant in flight at once, across every llm-worker (issue 8). */
  TENANT_MAX_LLM_CALLS: positiveInt(32, 1_000),
});

export const toolWorkerEnvSchema = z.object({
  ...commonFields,
  HEALTH_PORT: port(8083),
  TOOL_CONCURRENCY: positiveInt(16, 1024),
  /** Tool calls of one tenant in flight at once, across every tool-worker (issue 8). */
  TENANT_MAX_TOOL_CALLS: positiveInt(32, 1_000),
  /** Hosts HTTP tools may call (`host`, `host:port`, `*.domain`, or `*`); empty allows none. */
  TOOL_EGRESS_ALLOW: commaList,
});

export const serviceEnvSchemas = {
  gateway: gatewayEnvSchema,
  orchestrator: orchestratorEnvSchema,
  'llm-worker': llmWorkerEnvSchema,
  'tool-worker': toolWorkerEnvSchema,
} as const;
export type ServiceName = keyof typeof serviceEnvSchemas;

/** The environment variables each service reads, and those it cannot start without. */
export const serviceEnvironment: Record<ServiceName, { variables: string[]; required: string[][] }> = {
  gateway: { variables: Object.keys(gatewayEnvSchema.shape), required: [['ABIDE_API_KEYS', 'ABIDE_API_KEYS_FILE']] },
  orchestrator: { variables: Object.keys(orchestratorEnvSchema.shape), required: [] },
  'llm-worker': { variables: Object.keys(llmWorkerEnvSchema.shape), required: [] },
  'tool-worker': { variables: Object.keys(toolWorkerEnvSchema.shape), required: [] },
};

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

/**
 * Parses `env` with `schema`; a bad value throws a `ConfigError` whose message names every
 * offending variable. Cross-field rules (DESIGN §2, §4) are checked here too.
 */
export function loadConfig<Schema extends z.ZodObject>(schema: Schema, env: Record<string, string | undefined>): Readonly<z.infer<Schema>> {
  const blankToUndefined = Object.fromEntries(Object.entries(env).map(([name, value]) => [name, value === '' ? undefined : value]));
  const parsed = schema.safeParse(blankToUndefined);
  if (!parsed.success) {
    const lines = parsed.error.issues.map((issue) => `  ${issue.path.join('.') || '(environment)'}: ${issue.message}`);
    throw new ConfigError(`invalid configuration:\n${lines.join('\n')}`);
  }
  const config = parsed.data as Record<string, unknown>;
  if (typeof config.EVENTS_MAX_AGE === 'number' && config.EVENTS_MAX_AGE < 2 * 86_400_000) {
    throw new ConfigError('invalid configuration:\n  EVENTS_MAX_AGE: must be at least 2d (deadlines must fit inside it minus a day)');
  }
  return Object.freeze(parsed.data);
}

/** Parses `key:tenant,key:tenant` (and lines of a keys file) into key → tenant. */
export function parseApiKeys(inline: string | undefined, file: string | undefined): Map<string, string> {
  const text = [inline ?? '', file ? readFileSync(file, 'utf8') : ''].join(',');
  const keys = new Map<string, string>();
  for (const entry of text.split(/[,\n]/).map((item) => item.trim()).filter((item) => item && !item.startsWith('#'))) {
    const separator = entry.lastIndexOf(':');
    const key = entry.slice(0, separator);
    const tenant = entry.slice(separator + 1);
    if (separator <= 0 || !/^[A-Za-z0-9_-]{1,64}$/.test(tenant) || key.length < 4) {
      throw new ConfigError(`invalid configuration:\n  ABIDE_API_KEYS: entry "${entry.slice(0, 8)}…" must be key:tenant (key ≥ 4 chars, tenant [A-Za-z0-9_-])`);
    }
    keys.set(key, tenant);
  }
  if (keys.size === 0) throw new ConfigError('invalid configuration:\n  ABIDE_API_KEYS: no API keys configured (set ABIDE_API_KEYS or ABIDE_API_KEYS_FILE)');
  return keys;
}

/** Startup guard (DESIGN §2): a consumer's `ack_wait` plus all its backoff delays must fit inside the duplicate window. */
export function assertFitsDuplicateWindow(consumer: string, ackWaitMs: number, backoffMs: readonly number[], duplicateWindowMs: number): void {
  const total = ackWaitMs + backoffMs.reduce((sum, delay) => sum + delay, 0);
  if (total > duplicateWindowMs) {
    throw new ConfigError(
      `invalid configuration:\n  JS_DUPLICATE_WINDOW: consumer "${consumer}" needs ack_wait + backoff = ${total} ms, more than the duplicate window (${duplicateWindowMs} ms)`,
    );
  }
}
