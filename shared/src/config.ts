import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { durationSchema, parseDuration } from './durations.ts';
import { invalidEgressEntries } from './egress.ts';
import { tracesSamplers } from './tracing.ts';

/**
 * Environment variables (DESIGN §9), per service. Each service's `config.ts` loads its schema
 * once with `loadConfig`; nothing else reads `process.env`.
 */

const port = (fallback: number) => z.coerce.number().int().min(0).max(65_535).default(fallback);
const positiveInt = (fallback: number, max: number) => z.coerce.number().int().min(1).max(max).default(fallback);
const duration = (fallback: string) => durationSchema.default(parseDuration(fallback));
const byteUnits: Record<string, number> = { '': 1, b: 1, kib: 1024, mib: 1024 ** 2, gib: 1024 ** 3, tib: 1024 ** 4, kb: 1e3, mb: 1e6, gb: 1e9, tb: 1e12 };
/** A size in bytes: an integer, optionally with a unit (`512MiB`, `4GiB`, `10GB`). */
const byteSize = (fallback: number, min: number) =>
  z
    .string()
    .regex(/^\d+\s*([KMGT]i?B|B)?$/i, 'must be a size such as 4GiB, 500MB or 1048576')
    .transform((text) => {
      const [, digits, unit] = /^(\d+)\s*([A-Za-z]*)$/.exec(text)!;
      return Number(digits) * byteUnits[unit!.toLowerCase()]!;
    })
    .pipe(z.number().int().min(min, `must be at least ${min} bytes`).max(Number.MAX_SAFE_INTEGER))
    .default(fallback);
/**
 * `RUN_RETENTION`: how long a finished run's history (its transitions) is kept after it ended,
 * as a duration (`30d`, `12h`; at least 1 s), or `forever` (the default): milliseconds, or null
 * for forever.
 */
const retention = z
  .string()
  .default('forever')
  .transform((text, context) => {
    if (text.trim() === 'forever') return null;
    try {
      const ms = parseDuration(text);
      if (ms >= 1_000) return ms;
      context.addIssue({ code: 'custom', message: 'must be at least 1s, or forever' });
    } catch (error) {
      context.addIssue({ code: 'custom', message: `${(error as Error).message}, or forever` });
    }
    return z.NEVER;
  });
const commaList = z
  .string()
  .default('')
  .transform((text) => text.split(',').map((item) => item.trim()).filter(Boolean));

/** An egress allow list (see `egress.ts` for the rules); an invalid entry stops the process, naming it. */
const egressList = commaList.superRefine((entries, context) => {
  const invalid = invalidEgressEntries(entries);
  if (invalid.length > 0) {
    context.addIssue({ code: 'custom', message: `${invalid.map((entry) => `"${entry}"`).join(', ')} is not host, host:port, host:*, *.domain[:port|:*] or *` });
  }
});

/** `TENANT_SECRETS_DIR`: `<dir>/<tenantId>/<NAME>` files, the secrets agents name (see `tenant-secrets.ts`). */
const tenantSecretsDir = z.string().min(1).optional();

/**
 * `MCP_STDIO_SERVERS`: JSON `{ "<id>": { "command": "…", "args": ["…"], "env": { … } } }`, the
 * only stdio MCP servers an agent may name (issue 13).
 */
const mcpStdioServerSchema = z.object({
  command: z.string().min(1),
  args: z.array(z.string()).default([]),
  env: z.record(z.string(), z.string()).default({}),
});
export type McpStdioServerConfig = z.infer<typeof mcpStdioServerSchema>;
const mcpStdioServers = z
  .string()
  .default('{}')
  .transform((text, context) => {
    try {
      return JSON.parse(text) as unknown;
    } catch {
      // Converted into a configuration issue naming the variable.
      context.addIssue({ code: 'custom', message: 'must be a JSON object of id → { command, args?, env? }' });
      return z.NEVER;
    }
  })
  .pipe(z.record(z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'ids must match [A-Za-z0-9_-]{1,64}'), mcpStdioServerSchema));

const natsFields = {
  NATS_URL: z.string().default('nats://127.0.0.1:4222'),
  NATS_USER: z.string().optional(),
  NATS_PASSWORD: z.string().optional(),
  NATS_CREDS: z.string().optional(),
};

/**
 * The standard OpenTelemetry variables Abide honours (issue 10, `tracing.ts`). Tracing is off
 * unless an OTLP endpoint is set. `OTEL_BSP_SCHEDULE_DELAY` is in milliseconds, as the
 * specification has it.
 */
const tracingFields = {
  OTEL_SDK_DISABLED: z.enum(['true', 'false']).default('false').transform((value) => value === 'true'),
  OTEL_SERVICE_NAME: z.string().min(1).optional(),
  OTEL_EXPORTER_OTLP_ENDPOINT: z.url({ protocol: /^https?$/ }).optional(),
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: z.url({ protocol: /^https?$/ }).optional(),
  OTEL_EXPORTER_OTLP_PROTOCOL: z.enum(['http/protobuf', 'http/json']).default('http/protobuf'),
  OTEL_TRACES_SAMPLER: z.enum(tracesSamplers).default('parentbased_always_on'),
  OTEL_TRACES_SAMPLER_ARG: z.coerce.number().min(0).max(1).optional(),
  OTEL_BSP_SCHEDULE_DELAY: z.coerce.number().int().min(1).max(3_600_000).default(5_000),
};

const commonFields = {
  ...natsFields,
  ...tracingFields,
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  JS_REPLICAS: z.coerce.number().int().min(1).max(5).default(1),
  JS_DUPLICATE_WINDOW: duration('10m'),
  EVENTS_MAX_AGE: duration('7d'),
  /** `RUN_EVENTS` `max_bytes`: the events stream's size cap (the oldest events go first when full). */
  EVENTS_MAX_BYTES: byteSize(4 * 1024 ** 3, 64 * 1024 ** 2),
  SHUTDOWN_GRACE: duration('25s'),
  /** Interface the HTTP servers (gateway API, health ports) bind to; images set 0.0.0.0. */
  LISTEN_HOST: z.string().min(1).default('127.0.0.1'),
  /** Test only: `<service>.<point>[@N]`, comma-separated; the process kills itself there (see crash-points.ts). */
  ABIDE_CRASH_POINTS: z.string().optional(),
};

const mongoFields = {
  MONGO_URL: z.string().regex(/^mongodb(\+srv)?:\/\//, 'must be a mongodb:// URL').default('mongodb://127.0.0.1:27017/abide'),
  /**
   * The write concern of every MongoDB write: `majority` = `{ w: 'majority', j: true }` (a step is
   * acknowledged once it is in a majority's journal), `journaled` = `{ w: 1, j: true }`,
   * `acknowledged` = `{ w: 1 }` (in memory only: a crash of mongod may lose acknowledged steps).
   */
  MONGO_WRITE_CONCERN: z.enum(['majority', 'journaled', 'acknowledged']).default('majority'),
};

/**
 * How long a process keeps a tenant's released slot (a worker's model/tool slot,
 * `TENANT_MAX_LLM_CALLS`, `TENANT_MAX_TOOL_CALLS`; a gateway's connection or subscription slot,
 * `TENANT_MAX_CONNECTIONS`, `TENANT_MAX_SUBSCRIPTIONS`) for that tenant's next use on the same
 * replica, which reuses it with no KV write (issue 9); 0 deletes it at release. Meanwhile a tenant
 * at its limit may see other replicas defer its messages, or refuse its stream with 429
 * (docs/decisions.md, "Tenant capacity"). The default is the consumer runner's defer pause.
 */
const tenantLeaseKeepIdle = durationSchema.default(parseDuration('1s')).pipe(z.number().int().min(0).max(60_000));

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
  /** Time to receive a whole request, headers and body (a slow body cannot hold a connection); 0 = none. */
  REQUEST_TIMEOUT: duration('30s'),
  /** Time to receive a request's headers (at most REQUEST_TIMEOUT). */
  HEADERS_TIMEOUT: duration('10s'),
  /** A socket with no traffic either way for this long is closed (SSE heartbeats and WebSockets are unaffected). */
  CONNECTION_TIMEOUT: duration('2m'),
  /** How long an idle keep-alive connection stays open between requests (above a load balancer's idle timeout). */
  KEEP_ALIVE_TIMEOUT: duration('72s'),
  /** How long a WebSocket ticket (`POST /v1/ws/tickets`) may wait for its one use (at most 5m, the bucket's max age). */
  WS_TICKET_TTL: durationSchema.default(parseDuration('30s')).pipe(z.number().int().min(1_000).max(300_000)),
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
  TENANT_LEASE_KEEP_IDLE: tenantLeaseKeepIdle,
});

export const orchestratorEnvSchema = z.object({
  ...commonFields,
  ...mongoFields,
  HEALTH_PORT: port(8081),
  /** Messages a replica processes at once (its pull batch size). */
  ORCHESTRATOR_CONCURRENCY: positiveInt(64, 4096),
  /** The bytes of run states a replica keeps in memory (its latest-transition cache); a run not kept is read from the store for each of its inputs. */
  ORCHESTRATOR_CACHE_BYTES: byteSize(64 * 1024 ** 2, 1024 ** 2),
  /**
   * The largest model request (system prompt + conversation, as JSON): one over the server's
   * `max_payload` goes through the `PAYLOADS` object store; one over this fails its run with
   * `message_too_large`.
   */
  LLM_REQUEST_MAX_BYTES: byteSize(16 * 1024 ** 2, 1024 ** 2),
  /** How long a finished run's transitions are kept (`30d`), or `forever`; the `runs` summary stays (docs/decisions.md, issue 9). */
  RUN_RETENTION: retention,
});

export const llmWorkerEnvSchema = z.object({
  ...commonFields,
  HEALTH_PORT: port(8082),
  LLM_CONCURRENCY: positiveInt(16, 1024),
  /** Destinations `openai-compatible` models may reach (same rules as `TOOL_EGRESS_ALLOW`); empty allows none. */
  LLM_EGRESS_ALLOW: egressList,
  TENANT_SECRETS_DIR: tenantSecretsDir,
  /** Model calls of one tenant in flight at once, across every llm-worker (issue 8). */
  TENANT_MAX_LLM_CALLS: positiveInt(32, 1_000),
  TENANT_LEASE_KEEP_IDLE: tenantLeaseKeepIdle,
});

export const toolWorkerEnvSchema = z.object({
  ...commonFields,
  HEALTH_PORT: port(8083),
  TOOL_CONCURRENCY: positiveInt(16, 1024),
  /** Destinations HTTP tools may call (`host`, `host:port`, `host:*`, `*.domain`, or `*`); empty allows none. */
  TOOL_EGRESS_ALLOW: egressList,
  TENANT_SECRETS_DIR: tenantSecretsDir,
  /** Tool calls of one tenant in flight at once, across every tool-worker (issue 8). */
  TENANT_MAX_TOOL_CALLS: positiveInt(32, 1_000),
  TENANT_LEASE_KEEP_IDLE: tenantLeaseKeepIdle,
  /** Open MCP connections (per tenant, server and credentials) a worker keeps at most. */
  MCP_MAX_CONNECTIONS: positiveInt(64, 10_000),
  /** An MCP connection unused this long is closed. */
  MCP_IDLE_TIMEOUT: duration('5m'),
  /** Operator-configured stdio MCP servers, by id (agents name the id, never a command). */
  MCP_STDIO_SERVERS: mcpStdioServers,
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

/** Shortest API key the gateway accepts (a key is a bearer secret: guessable keys are refused at start-up). */
export const minApiKeyLength = 16;

/**
 * Parses `key:tenant,key:tenant` (and lines of a keys file) into key → tenant. A malformed entry
 * is named by its variable and position, never by any part of its text (it may hold a key).
 */
export function parseApiKeys(inline: string | undefined, file: string | undefined): Map<string, string> {
  const sources: [variable: string, text: string][] = [
    ['ABIDE_API_KEYS', inline ?? ''],
    ['ABIDE_API_KEYS_FILE', file ? readFileSync(file, 'utf8') : ''],
  ];
  const keys = new Map<string, string>();
  for (const [variable, text] of sources) {
    const entries = text.split(/[,\n]/).map((item) => item.trim()).filter((item) => item && !item.startsWith('#'));
    entries.forEach((entry, index) => {
      const separator = entry.lastIndexOf(':');
      const key = entry.slice(0, separator);
      const tenant = entry.slice(separator + 1);
      if (separator <= 0 || !/^[A-Za-z0-9_-]{1,64}$/.test(tenant) || key.length < minApiKeyLength) {
        throw new ConfigError(
          `invalid configuration:\n  ${variable}: entry ${index + 1} must be key:tenant (key at least ${minApiKeyLength} characters, tenant [A-Za-z0-9_-]{1,64})`,
        );
      }
      keys.set(key, tenant);
    });
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
