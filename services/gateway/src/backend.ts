import { hostname } from 'node:os';
import {
  buckets,
  createTenantLeases,
  connectNats,
  createAgentCache,
  createRunStore,
  provisionJetStream,
  streams,
  type JetStreamManager,
  type Logger,
  type NatsConnection,
  retryWithBackoff,
} from '@abide/shared';
import { createMongoClient, ensureIndexes, getCollections } from '@abide/shared/mongo';
import type { MongoClient } from 'mongodb';
import type { GatewayConfig } from './config.ts';
import { createMongoStore } from './mongo-store.ts';
import { createNatsBus } from './nats-bus.ts';
import { createNatsEventSource } from './nats-event-source.ts';
import type { Backend } from './ports.ts';

export type ConnectedBackend = { backend: Backend; nats: NatsConnection; jsm: JetStreamManager; mongo: MongoClient };

/** Logs every `intervalMs` while `promise` is pending (NATS's first connect retries silently). */
async function logWhilePending<T>(promise: Promise<T>, log: () => void, intervalMs: number): Promise<T> {
  const timer = setInterval(log, intervalMs);
  try {
    return await promise;
  } finally {
    clearInterval(timer);
  }
}

/**
 * Connects to NATS and MongoDB, retrying with backoff until both answer (the gateway listens
 * meanwhile and answers 503): provisions what the gateway publishes to and reads (streams
 * `RUN_INBOX`, `APPROVALS`, `RUN_EVENTS`, buckets `APPROVAL_LEDGER` and `WS_TICKETS`; no durable consumers) and
 * the MongoDB indexes (the gateway may be the first service to start).
 */
export async function connectBackend(config: GatewayConfig, logger: Logger, signal: AbortSignal): Promise<ConnectedBackend> {
  const connectToNats = async () => {
    // connectNats keeps trying until the first connect succeeds (and reconnects forever after).
    const connection = await logWhilePending(connectNats(config, { service: 'gateway', name: 'abide-gateway' }, logger), () => logger.warn({ url: config.NATS_URL }, 'waiting for NATS'), 5_000);
    const { js, jsm, kv } = await retryWithBackoff(
      'provisioning JetStream',
      () =>
        provisionJetStream(
          connection,
          config,
          { streams: [streams.runInbox, streams.approvals, streams.runEvents], consumers: [], buckets: [buckets.approvalLedger, buckets.wsTickets, buckets.tenantLeases] },
          logger,
        ),
      { logger, signal },
    );
    const approvalLedger = kv.get(buckets.approvalLedger);
    const wsTickets = kv.get(buckets.wsTickets);
    const tenantLeases = kv.get(buckets.tenantLeases);
    if (!approvalLedger || !wsTickets || !tenantLeases) throw new Error('APPROVAL_LEDGER, WS_TICKETS or TENANT_LEASES was not provisioned');
    logger.info('connected to NATS');
    return { connection, js, jsm, approvalLedger, wsTickets, tenantLeases };
  };

  const connectToMongo = async () => {
    const client = createMongoClient(config.MONGO_URL, config.MONGO_WRITE_CONCERN);
    await retryWithBackoff('connecting to MongoDB', () => client.connect(), { logger, signal });
    const db = client.db();
    await retryWithBackoff('creating MongoDB indexes', () => ensureIndexes(db), { logger, signal });
    logger.info({ database: db.databaseName }, 'connected to MongoDB');
    return { client, db };
  };

  const [nats, mongo] = await Promise.all([connectToNats(), connectToMongo()]);
  const collections = getCollections(mongo.db);
  // Open SSE streams + WebSockets and event subscriptions per tenant, across every gateway (issue 8).
  const holder = `gateway/${hostname()}/${process.pid}`;
  // A released slot stays warm for the tenant's next stream here (`TENANT_LEASE_KEEP_IDLE`): a
  // client that follows one run after another takes no KV create or delete per run.
  const keepIdleMs = config.TENANT_LEASE_KEEP_IDLE;
  const connections = createTenantLeases({ bucket: nats.tenantLeases, kind: 'connection', limit: config.TENANT_MAX_CONNECTIONS, holder, logger, keepIdleMs });
  const subscriptions = createTenantLeases({ bucket: nats.tenantLeases, kind: 'subscription', limit: config.TENANT_MAX_SUBSCRIPTIONS, holder, logger, keepIdleMs });
  connections.start();
  subscriptions.start();
  const agentCache = createAgentCache();
  const backend: Backend = {
    capacity: { connections, subscriptions },
    // One cache of agent versions for lookups at creation and for cold loads (a run's base names its agent's version).
    store: createMongoStore({ db: mongo.db, collections, runStore: createRunStore(collections, { agentCache }), agentCache }),
    bus: createNatsBus({ connection: nats.connection, js: nats.js, approvalLedger: nats.approvalLedger, wsTickets: nats.wsTickets, logger }),
    events: createNatsEventSource({ js: nats.js, jsm: nats.jsm, logger }),
  };
  return { backend, nats: nats.connection, jsm: nats.jsm, mongo: mongo.client };
}
