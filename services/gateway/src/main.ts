import { createLogger, createMetrics, createReadiness, exitOnStartupError, installShutdown, jetStreamCheck, mongoCheck, natsCheck, persistCompileCache, startTracing, streams, type Logger } from '@abide/shared';
import { createApp } from './app.ts';
import { connectBackend, type ConnectedBackend } from './backend.ts';
import { loadGatewayConfig } from './config.ts';

/** The gateway's composition root: config, logger, app, connections, signal handling. */
async function main(): Promise<void> {
  let logger: Logger | undefined;
  const stopping = new AbortController();
  try {
    const config = loadGatewayConfig(process.env);
    logger = createLogger('gateway', config.LOG_LEVEL);
    const log = logger;
    const tracing = await startTracing(config, 'gateway', log);
    const metrics = createMetrics();
    let connected: ConnectedBackend | undefined;
    let draining = false;

    const { app, live } = createApp({
      config,
      logger,
      metrics,
      backend: () => connected?.backend,
      isDraining: () => draining,
      // The gateway consumes no durable: its event readers are per-request ordered consumers the
      // relay resumes itself (event-relay.ts), so it has no `consumers` check.
      readiness: createReadiness({
        logger: log,
        isDraining: () => draining,
        nats: natsCheck(() => connected?.nats),
        jetstream: jetStreamCheck(() => connected?.jsm, streams.runInbox),
        mongodb: mongoCheck(() => connected?.mongo.db()),
      }),
    });

    installShutdown({
      logger,
      hardLimitMs: config.SHUTDOWN_GRACE + 5_000,
      async stop() {
        draining = true;
        stopping.abort(new Error('shutting down'));
        // Streams first (SSE ended, WebSockets closed with 1001), then in-flight requests, then connections.
        live.closeAll();
        let graceTimer: NodeJS.Timeout | undefined;
        const graceOver = new Promise<void>((resolve) => {
          graceTimer = setTimeout(() => {
            log.warn('requests still in flight after SHUTDOWN_GRACE; closing anyway');
            resolve();
          }, config.SHUTDOWN_GRACE);
        });
        await Promise.race([app.close(), graceOver]);
        clearTimeout(graceTimer);
        if (connected) {
          // The tenants' warm slots back (their streams are closed), so they do not count against
          // the tenants' limits on other gateways until they turn stale.
          const { capacity } = connected.backend;
          await Promise.all([capacity?.connections.stop(), capacity?.subscriptions.stop()]).catch((error: unknown) => log.warn({ err: error }, 'releasing tenant slots failed'));
          await connected.nats.drain().catch((error: unknown) => log.warn({ err: error }, 'NATS drain failed'));
          await connected.mongo.close().catch((error: unknown) => log.warn({ err: error }, 'MongoDB close failed'));
        }
        await tracing.shutdown();
      },
    });

    await app.listen({ host: config.LISTEN_HOST, port: config.GATEWAY_PORT });
    connected = await connectBackend(config, logger, stopping.signal);
    logger.info({ port: config.GATEWAY_PORT }, 'gateway ready');
    persistCompileCache();
  } catch (error) {
    // A signal during start-up aborts the connecting; the shutdown handler exits (0) by itself.
    if (stopping.signal.aborted) return;
    exitOnStartupError(logger, error);
  }
}

await main();
