import {
  approvalMessageSchema,
  buckets,
  buildConversationHeads,
  connectNats,
  consumerPolicies,
  createConsumerRunner,
  createConsumerSupervision,
  createCrashPoints,
  createHealthServer,
  createReadiness,
  createLogger,
  createMetrics,
  watchConsumerBacklog,
  createRunStore,
  exitOnStartupError,
  installShutdown,
  persistCompileCache,
  jetStreamCheck,
  maxDeliveriesAdvisorySchema,
  mongoCheck,
  natsCheck,
  objectStores,
  provisionJetStream,
  runInboxMessageSchema,
  streams,
  type Logger,
  retryWithBackoff,
  startTracing,
  type ConsumerName,
} from '@abide/shared';
import { createMongoClient, ensureIndexes, getCollections } from '@abide/shared/mongo';
import { createAdvisoryHandler } from './advisory-handler.ts';
import { createOrchestratorMetrics } from './orchestrator-metrics.ts';
import { createApprovalLedger } from './approval-ledger.ts';
import { createApprovalsHandler } from './approvals-handler.ts';
import { loadOrchestratorConfig } from './config.ts';
import { createInboxHandler } from './inbox-handler.ts';
import { createKeyedQueue } from './keyed-queue.ts';
import { createRunProcessor } from './run-processor.ts';
import { createDeadlineSweeper, createOutboxSweeper, createRetentionSweeper } from './sweepers.ts';

/** The orchestrator's composition root. */
async function main(): Promise<void> {
  let logger: Logger | undefined;
  try {
    const config = loadOrchestratorConfig(process.env);
    logger = createLogger('orchestrator', config.LOG_LEVEL);
    const log = logger;
    const tracing = await startTracing(config, 'orchestrator', log);
    const metrics = createMetrics();
    let draining = false;

    // Start-up waits for NATS and MongoDB (a replica started before them must not exit);
    // a signal during the wait exits at once.
    const startup = new AbortController();
    const abortStartup = () => startup.abort(new Error('stopped during start-up'));
    process.once('SIGTERM', abortStartup);
    process.once('SIGINT', abortStartup);
    const nats = await retryWithBackoff('connecting to NATS', () => connectNats(config, { service: 'orchestrator' }, log), { logger: log, signal: startup.signal });
    const { js, jsm, kv, objects } = await retryWithBackoff(
      'provisioning JetStream',
      () =>
        provisionJetStream(
          nats,
          config,
          {
            streams: ['RUN_INBOX', 'APPROVALS', 'LLM_REQUESTS', 'TOOL_REQUESTS', 'RUN_EVENTS', 'ADVISORIES'],
            consumers: ['orchestrator', 'orchestrator-approvals', 'orchestrator-advisories'],
            buckets: [buckets.approvalLedger, buckets.runControl],
            objectStores: [objectStores.payloads],
          },
          log,
        ),
      { logger: log, signal: startup.signal },
    );
    const mongo = createMongoClient(config.MONGO_URL, config.MONGO_WRITE_CONCERN);
    const db = mongo.db();
    await retryWithBackoff(
      'connecting to MongoDB',
      async () => {
        await mongo.connect();
        await ensureIndexes(db);
      },
      { logger: log, signal: startup.signal },
    );
    process.off('SIGTERM', abortStartup);
    process.off('SIGINT', abortStartup);
    const collections = getCollections(db);
    const store = createRunStore(collections);
    const deadlineSweeper = createDeadlineSweeper({ store, js, logger: log, metrics });
    const orchestratorMetrics = createOrchestratorMetrics({ metrics, store, deadlines: deadlineSweeper, logger: log });

    const supervision = createConsumerSupervision({ metrics, logger: log });
    const durables: ConsumerName[] = ['orchestrator', 'orchestrator-approvals', 'orchestrator-advisories'];
    // The backlog gauges are read at scrape time.
    watchConsumerBacklog({ metrics, jsm: () => jsm, durables, logger: log });
    /** Creates a durable found deleted again (and its stream, if that is gone too). */
    const provision = (durable: ConsumerName) => () => provisionJetStream(nats, config, { streams: [consumerPolicies[durable].stream], consumers: [durable], buckets: [] }, log);

    const processor = createRunProcessor({
      store,
      publisher: {
        js,
        runControl: kv.get(buckets.runControl)!,
        collections,
        payloads: objects.get(objectStores.payloads)!,
        // Read on every use: after a reconnect the server (and its max_payload) may differ.
        get maxPayloadBytes() {
          return nats.info?.max_payload ?? 1_048_576;
        },
        maxModelRequestBytes: config.LLM_REQUEST_MAX_BYTES,
      },
      queue: createKeyedQueue(),
      logger: log,
      metrics,
      commitLatency: orchestratorMetrics.commitLatency,
      crashPoints: createCrashPoints(config.ABIDE_CRASH_POINTS),
      retentionMs: config.RUN_RETENTION,
      cacheBytes: config.ORCHESTRATOR_CACHE_BYTES,
    });
    const ledger = createApprovalLedger({ kv: kv.get(buckets.approvalLedger)!, processor, logger: log });
    const inbox = createConsumerRunner({
      js,
      policy: consumerPolicies.orchestrator,
      supervision,
      provision: provision('orchestrator'),
      schema: runInboxMessageSchema,
      concurrency: config.ORCHESTRATOR_CONCURRENCY,
      logger: log,
      handle: createInboxHandler({ processor, ledger, logger: log }),
    });
    const approvals = createConsumerRunner({
      js,
      policy: consumerPolicies['orchestrator-approvals'],
      supervision,
      provision: provision('orchestrator-approvals'),
      schema: approvalMessageSchema,
      concurrency: config.ORCHESTRATOR_CONCURRENCY,
      logger: log,
      handle: createApprovalsHandler({ ledger }),
    });
    const advisories = createConsumerRunner({
      js,
      policy: consumerPolicies['orchestrator-advisories'],
      supervision,
      provision: provision('orchestrator-advisories'),
      schema: maxDeliveriesAdvisorySchema,
      concurrency: 8,
      logger: log,
      handle: createAdvisoryHandler({ jsm, processor, logger: log, metrics }),
    });
    const outboxSweeper = createOutboxSweeper({ store, processor, logger: log, metrics });
    // Only with RUN_RETENTION set: `forever` writes no retention items and prunes none (items left
    // by an earlier setting wait until a retention is configured again).
    const retentionSweeper = config.RUN_RETENTION === null ? undefined : createRetentionSweeper({ store, logger: log, metrics });

    const health = createHealthServer({
      port: config.HEALTH_PORT,
      host: config.LISTEN_HOST,
      logger: log,
      metrics,
      readiness: createReadiness({
        logger: log,
        isDraining: () => draining,
        nats: natsCheck(() => nats),
        jetstream: jetStreamCheck(() => jsm, streams.runInbox),
        mongodb: mongoCheck(() => db),
        consumers: supervision.check(durables),
      }),
    });
    await health.start();
    await inbox.start();
    await approvals.start();
    await advisories.start();
    outboxSweeper.start();
    deadlineSweeper.start();
    retentionSweeper?.start();
    // The heads of conversations whose runs ended before heads existed: once per database, in
    // the background (a scan of `runs`); until it is done, a creation reads such a conversation from `runs`.
    const headsBuild = new AbortController();
    const heads = retryWithBackoff('recording the heads of older conversations', () => buildConversationHeads(collections, headsBuild.signal), { logger: log, signal: headsBuild.signal, maxMs: 60_000 })
      .then((recorded) => {
        if (recorded !== null) log.info({ conversations: recorded }, 'recorded the heads of older conversations');
      })
      .catch((error: unknown) => {
        if (!headsBuild.signal.aborted) log.error({ err: error }, 'could not record the heads of older conversations');
      });
    log.info('orchestrator started');
    persistCompileCache();

    installShutdown({
      logger: log,
      hardLimitMs: config.SHUTDOWN_GRACE + 10_000,
      async stop() {
        draining = true;
        headsBuild.abort();
        await Promise.all([outboxSweeper.stop(), deadlineSweeper.stop(), retentionSweeper?.stop(), heads]);
        await Promise.all([inbox.stop(config.SHUTDOWN_GRACE), approvals.stop(config.SHUTDOWN_GRACE), advisories.stop(config.SHUTDOWN_GRACE)]);
        // Read models still waiting out their delay (runs that moved on by themselves), before MongoDB closes.
        await processor.flushReadModels();
        await nats.drain();
        await mongo.close();
        await health.stop();
        await tracing.shutdown();
      },
    });
  } catch (error) {
    exitOnStartupError(logger, error);
  }
}

await main();
