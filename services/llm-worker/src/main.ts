/**
 * The llm-worker's composition root: configuration, logger, NATS, the `llm.request` consumer,
 * the `RUN_CONTROL` watch, the health server and signal handling. Everything else is built by
 * pure factories.
 */
import { hostname } from 'node:os';
import {
  admitByTenant,
  buckets,
  createTenantLeases,
  ConfigError,
  connectNats,
  consumerPolicies,
  createConsumerRunner,
  createConsumerSupervision,
  createCrashPoints,
  createEgressPolicy,
  createHealthServer,
  createReadiness,
  createTenantSecrets,
  createLogger,
  createMetrics,
  watchConsumerBacklog,
  ensureError,
  exitOnStartupError,
  installShutdown,
  persistCompileCache,
  startTracing,
  jetStreamCheck,
  natsCheck,
  streams,
  type JetStreamManager,
  llmRequestMessageSchema,
  objectStores,
  provisionJetStream,
  type ConsumerRunner,
  type Logger,
  type NatsConnection,
  createCancelWatch,
  type CancelWatch,
  type TenantLeases,
  retryWithBackoff,
} from '@abide/shared';
import { loadLlmWorkerConfig, type LlmWorkerConfig } from './config.ts';
import { createLanguageModel } from './model-factory.ts';
import { createJetStreamPublisher, createLlmResultStore, createRequestBodyReader } from './nats-adapters.ts';
import type { StepMetrics } from './ports.ts';
import { createRunStep } from './run-step.ts';

const service = 'llm-worker';
const policy = consumerPolicies['llm-worker'];
const provisioning = {
  streams: ['LLM_REQUESTS', 'RUN_EVENTS', 'RUN_INBOX'],
  consumers: ['llm-worker'],
  buckets: [buckets.llmResults, buckets.runControl, buckets.tenantLeases],
  objectStores: [objectStores.payloads],
} as const;

async function main(): Promise<void> {
  let config: Readonly<LlmWorkerConfig>;
  try {
    config = loadLlmWorkerConfig();
  } catch (error) {
    exitOnStartupError(undefined, error);
  }
  const logger = createLogger(service, config.LOG_LEVEL);
  const tracing = await startTracing(config, service, logger);
  const metrics = createMetrics();
  const started = metrics.counter('llm_steps_started_total', 'Model steps started (model calls).');
  const completed = metrics.counter('llm_steps_completed_total', 'Model steps finished and published.');
  const failed = metrics.counter('llm_steps_failed_total', 'Model calls that failed, by code (transient ones are retried).', ['code']);
  const replayed = metrics.counter('llm_steps_replayed_total', 'Redelivered steps answered from LLM_RESULTS without calling the model.');
  const cancelled = metrics.counter('llm_steps_cancelled_total', 'Model requests dropped or aborted because their run was cancelled.');
  const modelCalls = metrics.histogram(
    'model_call_duration_seconds',
    'Model calls (the stream from request to its last chunk) by provider and outcome (finished, failed, aborted, too_large)',
    ['provider', 'outcome'],
  );
  const stepMetrics: StepMetrics = {
    started: () => started.inc(),
    completed: () => completed.inc(),
    failed: (code) => failed.inc({ code }),
    replayed: () => replayed.inc(),
    cancelled: () => cancelled.inc(),
    modelCall: (provider, outcome, seconds) => modelCalls.observe({ provider, outcome }, seconds),
  };

  let connection: NatsConnection | undefined;
  let jetStreamManager: JetStreamManager | undefined;
  let draining = false;
  let runner: ConsumerRunner | undefined;
  let watch: CancelWatch | undefined;
  let tenantLeases: TenantLeases | undefined;
  const startup = new AbortController();
  metrics.gauge('llm_steps_in_flight', 'Model requests being handled by this process.', () => runner?.inFlight ?? 0);
  const supervision = createConsumerSupervision({ metrics, logger });

  const health = createHealthServer({
    port: config.HEALTH_PORT,
    host: config.LISTEN_HOST,
    logger,
    metrics,
    readiness: createReadiness({
      logger,
      isDraining: () => draining,
      nats: natsCheck(() => connection),
      jetstream: jetStreamCheck(() => jetStreamManager, streams.llmRequests),
      consumers: supervision.check([policy.durable]),
    }),
  });
  try {
    await health.start();
  } catch (error) {
    exitOnStartupError(logger, error);
  }

  installShutdown({
    logger,
    hardLimitMs: config.SHUTDOWN_GRACE + 15_000,
    async stop() {
      draining = true;
      startup.abort(new Error('shutting down'));
      // Stop pulling; in-flight steps finish within the grace period or are aborted and handed back.
      await runner?.stop(config.SHUTDOWN_GRACE);
      // Every step has released its slot by now: give back the warm ones while NATS is still open.
      await tenantLeases?.stop();
      await watch?.stop();
      await connection?.drain().catch((error: unknown) => {
        // Already closed (e.g. lost for good): nothing left to flush.
        logger.warn({ err: ensureError(error) }, 'nats drain failed');
      });
      await health.stop();
      await tracing.shutdown();
    },
  });

  const jetStream = await connectWithRetry(config, logger, startup.signal, (opened) => {
    connection = opened;
  });
  if (!jetStream || draining) return;
  jetStreamManager = jetStream.jsm;

  const publisher = createJetStreamPublisher(jetStream.js);
  watchConsumerBacklog({ metrics, jsm: () => jetStream.jsm, durables: ['llm-worker'], logger });
  const secrets = createTenantSecrets({ dir: config.TENANT_SECRETS_DIR });
  const egress = createEgressPolicy({ allow: config.LLM_EGRESS_ALLOW, variable: 'LLM_EGRESS_ALLOW' });
  watch = createCancelWatch({ bucket: jetStream.kv.get(buckets.runControl)!, logger });
  await watch.start();
  // In-flight model calls per tenant, across every llm-worker (issue 8); a released slot stays
  // warm for the tenant's next step on this process (issue 9).
  tenantLeases = createTenantLeases({
    bucket: jetStream.kv.get(buckets.tenantLeases)!,
    kind: 'llm',
    limit: config.TENANT_MAX_LLM_CALLS,
    holder: `${service}/${hostname()}/${process.pid}`,
    logger,
    keepIdleMs: config.TENANT_LEASE_KEEP_IDLE,
  });
  tenantLeases.start();
  const handler = createRunStep({
    publisher,
    results: createLlmResultStore(jetStream.kv.get(buckets.llmResults)!),
    bodies: createRequestBodyReader(jetStream.objects.get(objectStores.payloads)!),
    cancellations: watch,
    createModel: (model, { step, tenantId }) => createLanguageModel(model, { step, tenantId, secrets, egress }),
    logger,
    metrics: stepMetrics,
    maxRetryAfterMs: policy.maxNakDelayMs,
    crashPoints: createCrashPoints(config.ABIDE_CRASH_POINTS),
  });

  // The consume loop runs under the process's supervision: restarted when it ends, the consumer
  // provisioned again when it was deleted.
  const nats = connection!;
  runner = createConsumerRunner({
    js: jetStream.js,
    policy,
    supervision,
    provision: () => provisionJetStream(nats, config, { streams: [policy.stream], consumers: [policy.durable], buckets: [] }, logger),
    schema: llmRequestMessageSchema,
    concurrency: config.LLM_CONCURRENCY,
    logger,
    handle: handler.handle,
    onExhausted: handler.onExhausted,
    admit: admitByTenant(tenantLeases),
  });
  await runner.start();
  logger.info({ concurrency: config.LLM_CONCURRENCY }, 'consuming llm requests');
  persistCompileCache();
}

/**
 * Connects to NATS and provisions what the worker uses, retrying with backoff while the server
 * is unreachable or JetStream is not ready (a worker started before NATS waits for it). A
 * configuration that can never work (`ConfigError`) stops the process.
 */
async function connectWithRetry(
  config: Readonly<LlmWorkerConfig>,
  logger: Logger,
  signal: AbortSignal,
  onConnected: (connection: NatsConnection) => void,
): Promise<Awaited<ReturnType<typeof provisionJetStream>> | undefined> {
  let connection: NatsConnection | undefined;
  try {
    return await retryWithBackoff(
      'connecting to NATS and provisioning',
      async () => {
        if (!connection) {
          logger.info({ servers: config.NATS_URL }, 'connecting to nats');
          connection = await connectNats(config, { service }, logger);
          onConnected(connection);
        }
        return provisionJetStream(connection, config, provisioning, logger);
      },
      { logger, signal },
    );
  } catch (error) {
    if (error instanceof ConfigError) exitOnStartupError(logger, error);
    // Aborted: the worker is shutting down before it ever started.
    return undefined;
  }
}

main().catch((error: unknown) => exitOnStartupError(undefined, error));
