import { connect, credsAuthenticator, nanos, type NatsConnection, type ConnectionOptions } from '@nats-io/transport-node';
import {
  AckPolicy,
  DeliverPolicy,
  DiscardPolicy,
  jetstream,
  jetstreamManager,
  RetentionPolicy,
  StorageType,
  type ConsumerConfig,
  type JetStreamClient,
  type JetStreamManager,
  type StreamConfig,
} from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import { Objm, type ObjectStore } from '@nats-io/obj';
import { readFileSync } from 'node:fs';
import type { Logger } from './logger.ts';
import { buckets, consumers, objectStores, streams, subjects, type ConsumerName, type StreamName } from './names.ts';
import { assertFitsDuplicateWindow } from './config.ts';

export type { NatsConnection, JetStreamClient, JetStreamManager, KV, ObjectStore };

/** What every service's config carries for NATS and JetStream. */
export type JetStreamSettings = {
  NATS_URL: string;
  NATS_USER?: string | undefined;
  NATS_PASSWORD?: string | undefined;
  NATS_CREDS?: string | undefined;
  JS_REPLICAS: number;
  JS_DUPLICATE_WINDOW: number;
  EVENTS_MAX_AGE: number;
};

/** Connects and keeps reconnecting forever (a service that loses NATS answers not-ready, it does not exit). */
export async function connectNats(settings: JetStreamSettings, name: string, logger: Logger): Promise<NatsConnection> {
  const options: ConnectionOptions = {
    servers: settings.NATS_URL.split(','),
    name,
    maxReconnectAttempts: -1,
    reconnectTimeWait: 500,
    waitOnFirstConnect: true,
    pingInterval: 10_000,
  };
  if (settings.NATS_USER) options.user = settings.NATS_USER;
  if (settings.NATS_PASSWORD) options.pass = settings.NATS_PASSWORD;
  if (settings.NATS_CREDS) {
    options.authenticator = credsAuthenticator(readFileSync(settings.NATS_CREDS));
  }
  const connection = await connect(options);
  void (async () => {
    for await (const status of connection.status()) {
      if (status.type === 'disconnect' || status.type === 'reconnect' || status.type === 'error') {
        logger.warn({ natsStatus: status.type, server: 'server' in status ? status.server : undefined }, `nats ${status.type}`);
      }
    }
  })();
  return connection;
}

const day = 86_400_000;
/**
 * Max age of `TENANT_LEASES` entries: live leases are rewritten every few seconds, so only the
 * slots of a crashed holder (stale after 30 s, taken over by the next acquirer) and release
 * tombstones ever reach it; the server then removes them.
 */
const tenantLeaseBucketTtlMs = 2 * 60_000;

/** Stream configurations (DESIGN §2). */
export function streamConfigs(settings: JetStreamSettings): Record<StreamName, Partial<StreamConfig> & { name: string; subjects: string[] }> {
  const common = { storage: StorageType.File, num_replicas: settings.JS_REPLICAS, duplicate_window: nanos(settings.JS_DUPLICATE_WINDOW) };
  const workQueue = { ...common, retention: RetentionPolicy.Workqueue, discard: DiscardPolicy.New, max_msgs: 10_000_000 };
  return {
    RUN_INBOX: { ...workQueue, name: streams.runInbox, subjects: [subjects.runInboxAll] },
    APPROVALS: { ...common, name: streams.approvals, subjects: [subjects.approvalsAll], retention: RetentionPolicy.Limits, max_age: nanos(30 * day) },
    LLM_REQUESTS: { ...workQueue, name: streams.llmRequests, subjects: [subjects.llmRequestsAll] },
    TOOL_REQUESTS: { ...workQueue, name: streams.toolRequests, subjects: [subjects.toolRequestsAll] },
    RUN_EVENTS: { ...common, name: streams.runEvents, subjects: [subjects.runEventsAll], retention: RetentionPolicy.Limits, max_age: nanos(settings.EVENTS_MAX_AGE) },
    ADVISORIES: { ...common, name: streams.advisories, subjects: [subjects.maxDeliveriesAdvisoriesAll], retention: RetentionPolicy.Limits, max_age: nanos(7 * day) },
  };
}

/** How a durable consumer retries: ack wait, deliveries, and the nak delays the consumer runner applies. */
export type ConsumerPolicy = {
  stream: StreamName;
  durable: ConsumerName;
  filterSubject: string;
  ackWaitMs: number;
  maxDeliver: number;
  /** Nak delay for delivery n (1-based) is `min(maxNakDelayMs, baseNakDelayMs × 2^(n−1))` with jitter. */
  baseNakDelayMs: number;
  maxNakDelayMs: number;
  /** In-progress ack interval while a message is being handled. */
  heartbeatMs: number;
};

export const consumerPolicies: Record<ConsumerName, ConsumerPolicy> = {
  orchestrator: {
    stream: streams.runInbox,
    durable: consumers.orchestrator,
    filterSubject: subjects.runInboxAll,
    ackWaitMs: 30_000,
    maxDeliver: 10,
    baseNakDelayMs: 200,
    maxNakDelayMs: 30_000,
    heartbeatMs: 10_000,
  },
  'orchestrator-approvals': {
    stream: streams.approvals,
    durable: consumers.orchestratorApprovals,
    filterSubject: subjects.approvalsAll,
    ackWaitMs: 30_000,
    maxDeliver: 10,
    baseNakDelayMs: 200,
    maxNakDelayMs: 30_000,
    heartbeatMs: 10_000,
  },
  'orchestrator-advisories': {
    stream: streams.advisories,
    durable: consumers.orchestratorAdvisories,
    filterSubject: subjects.maxDeliveriesAdvisoriesAll,
    ackWaitMs: 30_000,
    maxDeliver: 10,
    baseNakDelayMs: 1_000,
    maxNakDelayMs: 30_000,
    heartbeatMs: 10_000,
  },
  'llm-worker': {
    stream: streams.llmRequests,
    durable: consumers.llmWorker,
    filterSubject: subjects.llmRequestsAll,
    ackWaitMs: 30_000,
    maxDeliver: 6,
    baseNakDelayMs: 1_000,
    maxNakDelayMs: 60_000,
    heartbeatMs: 10_000,
  },
  'tool-worker': {
    stream: streams.toolRequests,
    durable: consumers.toolWorker,
    filterSubject: subjects.toolRequestsAll,
    ackWaitMs: 30_000,
    maxDeliver: 6,
    baseNakDelayMs: 1_000,
    maxNakDelayMs: 60_000,
    heartbeatMs: 10_000,
  },
};

/** The longest time a message may live between its first and last delivery under `policy`. */
export function worstCaseRedeliveryMs(policy: ConsumerPolicy): number {
  return policy.maxDeliver * Math.max(policy.ackWaitMs, policy.maxNakDelayMs);
}

/** Consumer configuration for a durable. `maxAckPending` must be ≥ replicas × per-process concurrency. */
export function consumerConfig(policy: ConsumerPolicy, maxAckPending = 20_000): Partial<ConsumerConfig> & { durable_name: string } {
  return {
    durable_name: policy.durable,
    name: policy.durable,
    filter_subject: policy.filterSubject,
    ack_policy: AckPolicy.Explicit,
    deliver_policy: DeliverPolicy.All,
    ack_wait: nanos(policy.ackWaitMs),
    max_deliver: policy.maxDeliver,
    max_ack_pending: maxAckPending,
  };
}

export type Provisioning = {
  streams: readonly StreamName[];
  consumers: readonly ConsumerName[];
  buckets: readonly (typeof buckets)[keyof typeof buckets][];
  objectStores?: readonly (typeof objectStores)[keyof typeof objectStores][];
};

const streamInUseCode = 10058;
const consumerExistsCodes = [10013, 10148, 10105];

/**
 * Creates or updates what a service uses. Idempotent and safe when replicas start at once;
 * refuses a consumer whose redelivery span does not fit the duplicate window (DESIGN §2).
 */
export async function provisionJetStream(
  connection: NatsConnection,
  settings: JetStreamSettings,
  wanted: Provisioning,
  logger: Logger,
): Promise<{ js: JetStreamClient; jsm: JetStreamManager; kv: Map<string, KV>; objects: Map<string, ObjectStore> }> {
  const jsm = await jetstreamManager(connection);
  const js = jetstream(connection);
  const configs = streamConfigs(settings);
  for (const name of wanted.streams) {
    const config = configs[name];
    try {
      await jsm.streams.add(config);
    } catch (error) {
      if ((error as { api_error?: { err_code?: number } }).api_error?.err_code !== streamInUseCode) throw error;
      await jsm.streams.update(name, config).catch((updateError: unknown) => {
        // An immutable field (retention, storage) differs: keep the existing stream, say so loudly.
        logger.warn({ stream: name, err: updateError }, 'stream exists with a configuration that cannot be updated; keeping it');
      });
    }
  }
  for (const durable of wanted.consumers) {
    const policy = consumerPolicies[durable];
    assertFitsDuplicateWindow(durable, policy.ackWaitMs, [worstCaseRedeliveryMs(policy) - policy.ackWaitMs], settings.JS_DUPLICATE_WINDOW);
    const config = consumerConfig(policy);
    try {
      await jsm.consumers.add(policy.stream, config);
    } catch (error) {
      const code = (error as { api_error?: { err_code?: number } }).api_error?.err_code;
      if (code === undefined || !consumerExistsCodes.includes(code)) throw error;
      await jsm.consumers.update(policy.stream, policy.durable, config);
    }
  }
  const kvm = new Kvm(js);
  const kv = new Map<string, KV>();
  for (const bucket of wanted.buckets) {
    const ttl = bucket === buckets.approvalLedger ? 30 * day : bucket === buckets.tenantLeases ? tenantLeaseBucketTtlMs : settings.EVENTS_MAX_AGE;
    kv.set(bucket, await kvm.create(bucket, { replicas: settings.JS_REPLICAS, history: 1, ttl, storage: StorageType.File }));
  }
  const objects = new Map<string, ObjectStore>();
  if (wanted.objectStores?.length) {
    const objm = new Objm(js);
    for (const store of wanted.objectStores) {
      objects.set(store, await objm.create(store, { replicas: settings.JS_REPLICAS, ttl: settings.EVENTS_MAX_AGE, storage: StorageType.File }));
    }
  }
  logger.info({ streams: wanted.streams, consumers: wanted.consumers, buckets: wanted.buckets }, 'jetstream provisioned');
  return { js, jsm, kv, objects };
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export function encodeJson(value: unknown): Uint8Array {
  return encoder.encode(JSON.stringify(value));
}

export function decodeJson(data: Uint8Array): unknown {
  return JSON.parse(decoder.decode(data));
}

/** Publishes a JSON message, waits for its PubAck, and dedupes on `msgId` inside the duplicate window. */
export async function publishJson(js: JetStreamClient, subject: string, value: unknown, msgId: string, options: { timeoutMs?: number } = {}) {
  return js.publish(subject, encodeJson(value), { msgID: msgId, timeout: options.timeoutMs ?? 10_000 });
}
