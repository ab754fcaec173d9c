import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import {
  buckets,
  admitByTenant,
  connectNats,
  consumerPolicies,
  createTenantLeases,
  createConsumerRunner,
  createConsumerSupervision,
  createCrashPoints,
  createEgressPolicy,
  createTenantSecrets,
  createHealthServer,
  createReadiness,
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
  provisionJetStream,
  publishJson,
  subjects,
  toolRequestMessageSchema,
  type ConsumerRunner,
  type KV,
  type Logger,
  type NatsConnection,
  type Provisioning,
  createCancelWatch,
  type CancelWatch,
  type TenantLeases,
  retryWithBackoff,
} from '@abide/shared';
import { createBuiltinTools } from './builtins.ts';
import { loadToolWorkerConfig } from './config.ts';
import { createToolCallHandler } from './execute-call.ts';
import { createHttpTool } from './http-tool.ts';
import { createMcpConnectionPool, type McpConnectionPool } from './mcp/mcp-connection-pool.ts';
import { createMcpListResponder } from './mcp/mcp-list-responder.ts';
import { createLazyMcpTools } from './mcp/lazy-mcp-tools.ts';
import { createToolMetrics } from './tool-metrics.ts';
import { createToolRunner } from './tool-runner.ts';

const provisioning: Provisioning = {
  streams: ['TOOL_REQUESTS', 'RUN_INBOX'],
  consumers: ['tool-worker'],
  buckets: [buckets.toolResults, buckets.runControl, buckets.tenantLeases],
};

async function main(): Promise<void> {
  let logger: Logger | undefined;
  try {
    // The one read of the process environment (STYLE 11).
    const config = loadToolWorkerConfig({ ...process.env });
    const log = createLogger('tool-worker', config.LOG_LEVEL);
    logger = log;
    const tracing = await startTracing(config, 'tool-worker', log);
    const workerId = `tool-worker-${hostname()}-${process.pid}-${randomBytes(3).toString('hex')}`;
    const policy = consumerPolicies['tool-worker'];
    const metrics = createMetrics();
    const toolMetrics = createToolMetrics(metrics);
    const startup = new AbortController();

    let connection: NatsConnection | undefined;
    let runner: ConsumerRunner | undefined;
    let cancelWatch: CancelWatch | undefined;
    let tenantLeases: TenantLeases | undefined;
    let mcpPool: McpConnectionPool | undefined;
    let mcpListResponder: ReturnType<typeof createMcpListResponder> | undefined;
    let draining = false;
    let provisioned: Awaited<ReturnType<typeof provisionJetStream>> | undefined;

    const supervision = createConsumerSupervision({ metrics, logger: log });
    const health = createHealthServer({
      port: config.HEALTH_PORT,
      host: config.LISTEN_HOST,
      logger: log,
      metrics,
      readiness: createReadiness({
        logger: log,
        isDraining: () => draining,
        nats: natsCheck(() => connection),
        jetstream: jetStreamCheck(() => provisioned?.jsm, streams.toolRequests),
        consumers: supervision.check([policy.durable]),
      }),
    });
    await health.start();

    installShutdown({
      logger: log,
      hardLimitMs: config.SHUTDOWN_GRACE + 15_000,
      async stop() {
        draining = true;
        startup.abort(new Error('shutting down'));
        // Stop pulling, let in-flight calls finish within the grace period, then abort them
        // (they are handed back to the stream); only then close the connection.
        await mcpListResponder?.stop();
        await runner?.stop(config.SHUTDOWN_GRACE);
        // Every call has released its slot by now: give back the warm ones while NATS is still open.
        await tenantLeases?.stop();
        await mcpPool?.close();
        await cancelWatch?.stop();
        await health.stop();
        await connection?.drain().catch((error: unknown) => log.warn({ err: ensureError(error) }, 'nats drain failed'));
        await tracing.shutdown();
      },
    });

    // Start-up keeps trying until NATS and JetStream answer (a worker started before NATS waits for it).
    try {
      provisioned = await retryWithBackoff(
        'connecting to NATS and provisioning',
        async () => {
          connection ??= await connectNats(config, { service: 'tool-worker', name: workerId }, log);
          return provisionJetStream(connection, config, provisioning, log);
        },
        { logger: log, signal: startup.signal },
      );
    } catch (error) {
      if (startup.signal.aborted) return;
      throw error;
    }
    const { js, jsm, kv } = provisioned!;
    watchConsumerBacklog({ metrics, jsm: () => jsm, durables: ['tool-worker'], logger: log });
    const nats = connection!;
    const toolResults = kv.get(buckets.toolResults) as KV;
    const runControl = kv.get(buckets.runControl) as KV;
    // In-flight tool calls per tenant, across every tool-worker (issue 8); a released slot stays
    // warm for the tenant's next call on this process (issue 9).
    tenantLeases = createTenantLeases({
      bucket: kv.get(buckets.tenantLeases) as KV,
      kind: 'tool',
      limit: config.TENANT_MAX_TOOL_CALLS,
      holder: workerId,
      logger: log,
      keepIdleMs: config.TENANT_LEASE_KEEP_IDLE,
    });
    tenantLeases.start();

    cancelWatch = createCancelWatch({ bucket: runControl, logger: log });
    await cancelWatch.start();

    const egress = createEgressPolicy({ allow: config.TOOL_EGRESS_ALLOW, variable: 'TOOL_EGRESS_ALLOW' });
    const secrets = createTenantSecrets({ dir: config.TENANT_SECRETS_DIR });
    mcpPool = createMcpConnectionPool({ maxConnections: config.MCP_MAX_CONNECTIONS, idleMs: config.MCP_IDLE_TIMEOUT, logger: log });
    const mcp = createLazyMcpTools({ egress, secrets, pool: mcpPool, stdioServers: config.MCP_STDIO_SERVERS, logger: log });
    const runTool = createToolRunner({
      builtins: createBuiltinTools(),
      http: createHttpTool({ egress, secrets, logger: log, maxRetryAfterMs: policy.maxNakDelayMs }),
      mcp,
    });
    mcpListResponder = createMcpListResponder({ nats: connection!, mcp, logger: log });
    mcpListResponder.start();
    const handler = createToolCallHandler({
      results: toolResults,
      cancellations: cancelWatch,
      runTool,
      workerId,
      logger: log,
      metrics: toolMetrics,
      heartbeatMs: policy.heartbeatMs,
      crashPoints: createCrashPoints(config.ABIDE_CRASH_POINTS),
      async publish(message) {
        await publishJson(js, subjects.runInbox(message.runId, 'tool_result'), message, message.id);
      },
    });

    // The consume loop runs under the process's supervision: restarted when it ends, the consumer
    // provisioned again when it was deleted.
    runner = createConsumerRunner({
      js,
      policy,
      supervision,
      provision: () => provisionJetStream(nats, config, { streams: [policy.stream], consumers: [policy.durable], buckets: [] }, log),
      schema: toolRequestMessageSchema,
      concurrency: config.TOOL_CONCURRENCY,
      logger: log,
      handle: handler.handle,
      onExhausted: handler.onExhausted,
      admit: admitByTenant(tenantLeases),
    });
    await runner.start();
    log.info({ workerId, concurrency: config.TOOL_CONCURRENCY, egressAllow: config.TOOL_EGRESS_ALLOW }, 'tool-worker consuming');
    persistCompileCache();
  } catch (error) {
    exitOnStartupError(logger, error);
  }
}

await main();
