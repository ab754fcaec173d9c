import { hostname } from 'node:os';
import { randomBytes } from 'node:crypto';
import {
  buckets,
  admitByTenant,
  connectNats,
  consumerPolicies,
  createTenantLeases,
  createConsumerRunner,
  createCrashPoints,
  createEgressPolicy,
  createTenantSecrets,
  createHealthServer,
  createLogger,
  createMetrics,
  watchConsumerBacklog,
  ensureError,
  exitOnStartupError,
  installShutdown,
  startTracing,
  jetStreamCheck,
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
  retryWithBackoff,
  sleep,
} from '@abide/shared';
import { createBuiltinTools } from './builtins.ts';
import { loadToolWorkerConfig } from './config.ts';
import { createToolCallHandler } from './execute-call.ts';
import { createHttpTool } from './http-tool.ts';
import { createMcpConnectionPool, type McpConnectionPool } from './mcp/mcp-connection-pool.ts';
import { createMcpListResponder } from './mcp/mcp-list-responder.ts';
import { createMcpTools } from './mcp/mcp-tool.ts';
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
    let mcpPool: McpConnectionPool | undefined;
    let mcpListResponder: ReturnType<typeof createMcpListResponder> | undefined;
    let draining = false;
    let provisioned: Awaited<ReturnType<typeof provisionJetStream>> | undefined;

    const health = createHealthServer({
      port: config.HEALTH_PORT,
      host: config.LISTEN_HOST,
      logger: log,
      metrics,
      isDraining: () => draining,
      checks: [
        { name: 'nats', check: async () => connection !== undefined && !connection.isClosed() && (await withTimeout(connection.rtt(), 2_000)) },
        { name: 'consumer', check: async () => runner !== undefined },
        jetStreamCheck(() => provisioned?.jsm, streams.toolRequests),
      ],
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
    // In-flight tool calls per tenant, across every tool-worker (issue 8).
    const tenantLeases = createTenantLeases({ bucket: kv.get(buckets.tenantLeases) as KV, kind: 'tool', limit: config.TENANT_MAX_TOOL_CALLS, holder: workerId, logger: log });
    tenantLeases.start();

    cancelWatch = createCancelWatch({ bucket: runControl, logger: log });
    await cancelWatch.start();

    const egress = createEgressPolicy({ allow: config.TOOL_EGRESS_ALLOW, variable: 'TOOL_EGRESS_ALLOW' });
    const secrets = createTenantSecrets({ dir: config.TENANT_SECRETS_DIR });
    mcpPool = createMcpConnectionPool({ maxConnections: config.MCP_MAX_CONNECTIONS, idleMs: config.MCP_IDLE_TIMEOUT, logger: log });
    const mcp = createMcpTools({ egress, secrets, pool: mcpPool, stdioServers: config.MCP_STDIO_SERVERS, logger: log });
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

    // A consumer loop that ends on its own (the consumer was deleted, a server-side failure) is
    // rebuilt, re-provisioning the consumer first; the process does not exit for it.
    while (!startup.signal.aborted) {
      const current = createConsumerRunner({
        js,
        policy,
        schema: toolRequestMessageSchema,
        concurrency: config.TOOL_CONCURRENCY,
        logger: log,
        handle: handler.handle,
        onExhausted: handler.onExhausted,
        admit: admitByTenant(tenantLeases),
      });
      runner = current;
      await current.start();
      log.info({ workerId, concurrency: config.TOOL_CONCURRENCY, egressAllow: config.TOOL_EGRESS_ALLOW }, 'tool-worker consuming');
      const error = await current.closed;
      if (startup.signal.aborted) break;
      log.error({ err: error }, 'consumer loop ended; restarting it');
      await sleep(1_000, startup.signal).catch(() => undefined);
      if (startup.signal.aborted) break;
      await provisionJetStream(nats, config, { ...provisioning, buckets: [] }, log).catch((provisionError: unknown) =>
        log.warn({ err: ensureError(provisionError) }, 'could not re-provision the consumer; retrying with the existing one'),
      );
    }
  } catch (error) {
    exitOnStartupError(logger, error);
  }
}

async function withTimeout(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), ms)));
  try {
    return await Promise.race([promise.then(() => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

await main();
