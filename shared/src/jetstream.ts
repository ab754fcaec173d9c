import { connect, credsAuthenticator, nanos, RequestError, TimeoutError, type ConnectionOptions, type MsgHdrs, type NatsConnection } from '@nats-io/transport-node';
import {
  AckPolicy,
  DeliverPolicy,
  DiscardPolicy,
  JetStreamApiCodes,
  JetStreamApiError,
  jetstream,
  jetstreamManager,
  RetentionPolicy,
  StorageType,
  type ConsumerConfig,
  type JetStreamClient,
  type JetStreamManager,
  type PubAck,
  type StreamConfig,
  type StreamInfo,
} from '@nats-io/jetstream';
import { Kvm, type KV } from '@nats-io/kv';
import { Objm, type ObjectStore } from '@nats-io/obj';
import { readFileSync } from 'node:fs';
import type { Logger } from './logger.ts';
import { buckets, consumers, inboxPrefixes, objectStores, streams, subjects, type ConsumerName, type NatsServiceUser, type StreamName } from './names.ts';
import { assertFitsDuplicateWindow } from './config.ts';
import { context, trace } from '@opentelemetry/api';
import { abideTracer, injectTraceHeaders, publishSpanName, recordSpanError, SpanKind, type TraceContext } from './tracing.ts';

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
  /** `RUN_EVENTS` `max_bytes`. */
  EVENTS_MAX_BYTES: number;
};

/** The largest single event `RUN_EVENTS` stores (`max_msg_size`); the orchestrator checks its events against it before a commit. */
export const eventMaxMessageBytes = 1_048_576;

/**
 * `RUN_EVENTS` `max_consumers`: how many readers the stream serves at once, across every
 * gateway (each live event subscription reads through an ordered consumer of its own). Set
 * explicitly because nats-server 2.15 caps a stream that sets none (or -1) at 1,000 consumers
 * (`default_max_consumers`): past that, every new subscription failed with "maximum consumers
 * limit reached" (the approvals bench, ~4,000 runs followed at once). The tenants' own share is
 * bounded by `TENANT_MAX_SUBSCRIPTIONS`; this bounds the server's memory for all of them.
 */
export const eventsMaxConsumers = 100_000;

/**
 * Connects and keeps reconnecting forever (a service that loses NATS answers not-ready, it does
 * not exit). Replies and pull deliveries use the service's own inbox prefix (`inboxPrefixes`),
 * the only inboxes its NATS user may subscribe to.
 */
export async function connectNats(settings: JetStreamSettings, client: { service: NatsServiceUser; name?: string }, logger: Logger): Promise<NatsConnection> {
  const options: ConnectionOptions = {
    servers: settings.NATS_URL.split(','),
    name: client.name ?? client.service,
    inboxPrefix: inboxPrefixes[client.service],
    maxReconnectAttempts: -1,
    reconnectTimeWait: 500,
    waitOnFirstConnect: true,
    pingInterval: 10_000,
    // nats.js otherwise builds an Error (a stack capture) for every request and its timer in
    // advance, so a failure can show the caller's stack: 7% of a worker's CPU under load, for
    // every JetStream publish and KV operation (issue 9). Failures are logged with their context.
    noAsyncTraces: true,
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
    // Limits stream, bounded in age and bytes. DiscardOld when full (docs/decisions.md): the oldest
    // events (of long-finished runs) go, instead of every run stalling on a refused publish.
    RUN_EVENTS: {
      ...common,
      name: streams.runEvents,
      subjects: [subjects.runEventsAll],
      retention: RetentionPolicy.Limits,
      max_age: nanos(settings.EVENTS_MAX_AGE),
      max_bytes: settings.EVENTS_MAX_BYTES,
      max_msg_size: eventMaxMessageBytes,
      max_consumers: eventsMaxConsumers,
      discard: DiscardPolicy.Old,
    },
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

/** Max age of `WS_TICKETS` entries: tickets live seconds (`WS_TICKET_TTL`, at most this); the bucket forgets them soon after. */
export const wsTicketsMaxAgeMs = 5 * 60_000;

export type Provisioning = {
  streams: readonly StreamName[];
  consumers: readonly ConsumerName[];
  buckets: readonly (typeof buckets)[keyof typeof buckets][];
  objectStores?: readonly (typeof objectStores)[keyof typeof objectStores][];
};

/** True for the JetStream API's answer `code` (nats.js v3 `JetStreamApiError`). */
export function isApiError(error: unknown, code: number): boolean {
  return error instanceof JetStreamApiError && error.code === code;
}

/** True when the JetStream API answered that the stream holds no message at that sequence (`NoMessageFound`). */
export function isNoMessageFound(error: unknown): boolean {
  return isApiError(error, JetStreamApiCodes.NoMessageFound);
}

/** The fields of `wanted` whose values differ from the existing configuration. */
function changedFields(existing: object, wanted: object): string[] {
  const current = existing as Record<string, unknown>;
  return Object.entries(wanted)
    .filter(([field, value]) => value !== undefined && JSON.stringify(current[field]) !== JSON.stringify(value))
    .map(([field]) => field);
}

/**
 * Creates a stream, or updates an existing one whose settings differ from `config` (a changed
 * `EVENTS_MAX_AGE`, `EVENTS_MAX_BYTES` or `JS_REPLICAS` applies on the next start). Safe when
 * replicas start at once: a lost create race reads the winner and compares.
 */
async function ensureStream(jsm: JetStreamManager, config: Partial<StreamConfig> & { name: string }, logger: Logger): Promise<void> {
  let info: StreamInfo;
  try {
    info = await jsm.streams.info(config.name);
  } catch (error) {
    if (!isApiError(error, JetStreamApiCodes.StreamNotFound)) throw error;
    try {
      await jsm.streams.add(config);
      return;
    } catch (addError) {
      // Another replica created it meanwhile (stream name in use): compare with the winner below.
      if (!(addError instanceof JetStreamApiError)) throw addError;
      info = await jsm.streams.info(config.name);
    }
  }
  const changed = changedFields(info.config, config);
  if (changed.length === 0) return;
  try {
    await jsm.streams.update(config.name, { ...info.config, ...config });
    logger.info({ stream: config.name, changed }, 'stream settings updated');
  } catch (error) {
    // An immutable field (retention, storage) differs: keep the existing stream, say so loudly.
    if (!(error instanceof JetStreamApiError)) throw error;
    logger.warn({ stream: config.name, changed, err: error }, 'stream exists with settings that cannot be updated; keeping it');
  }
}

/** Creates a durable consumer, or updates it when its settings differ. */
async function ensureConsumer(jsm: JetStreamManager, stream: string, config: Partial<ConsumerConfig> & { durable_name: string }, logger: Logger): Promise<void> {
  try {
    const info = await jsm.consumers.info(stream, config.durable_name);
    const changed = changedFields(info.config, config);
    if (changed.length === 0) return;
    await jsm.consumers.update(stream, config.durable_name, config);
    logger.info({ stream, consumer: config.durable_name, changed }, 'consumer settings updated');
  } catch (error) {
    if (!isApiError(error, JetStreamApiCodes.ConsumerNotFound)) throw error;
    // Created by add; a replica that created it first with the same settings makes this a no-op.
    await jsm.consumers.add(stream, config);
  }
}

/**
 * Creates or updates what a service uses. Idempotent and safe when replicas start at once;
 * refuses a consumer whose redelivery span does not fit the duplicate window (DESIGN §2).
 * KV buckets and object stores are streams too: their age and replicas are reconciled the same way.
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
  for (const name of wanted.streams) await ensureStream(jsm, configs[name], logger);
  for (const durable of wanted.consumers) {
    const policy = consumerPolicies[durable];
    assertFitsDuplicateWindow(durable, policy.ackWaitMs, [worstCaseRedeliveryMs(policy) - policy.ackWaitMs], settings.JS_DUPLICATE_WINDOW);
    await ensureConsumer(jsm, policy.stream, consumerConfig(policy), logger);
  }
  const kvm = new Kvm(js);
  const kv = new Map<string, KV>();
  for (const bucket of wanted.buckets) {
    const ttl =
      bucket === buckets.approvalLedger ? 30 * day
      : bucket === buckets.wsTickets ? wsTicketsMaxAgeMs
      : bucket === buckets.tenantLeases ? tenantLeaseBucketTtlMs
      : settings.EVENTS_MAX_AGE;
    kv.set(bucket, await kvm.create(bucket, { replicas: settings.JS_REPLICAS, history: 1, ttl, storage: StorageType.File }));
    // `create` opens an existing bucket as it is: apply changed settings to its stream.
    await ensureStream(jsm, { name: `KV_${bucket}`, max_age: nanos(ttl), num_replicas: settings.JS_REPLICAS }, logger);
  }
  const objects = new Map<string, ObjectStore>();
  if (wanted.objectStores?.length) {
    const objm = new Objm(js);
    for (const store of wanted.objectStores) {
      objects.set(store, await objm.create(store, { replicas: settings.JS_REPLICAS, ttl: nanos(settings.EVENTS_MAX_AGE), storage: StorageType.File }));
      await ensureStream(jsm, { name: `OBJ_${store}`, max_age: nanos(settings.EVENTS_MAX_AGE), num_replicas: settings.JS_REPLICAS }, logger);
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

/** How long a publish keeps trying through timeouts and missing responders (a stream leader election takes seconds). */
export const publishRetryWindowMs = 20_000;

/** True for a publish that may succeed if sent again: no PubAck in time, or no stream leader listening yet. */
function isTransientPublishError(error: unknown): boolean {
  if (error instanceof TimeoutError) return true;
  if (error instanceof RequestError && error.isNoResponders()) return true;
  // The client reports "no responders" on a JetStream subject as JetStreamNotEnabled, with the RequestError as cause.
  const cause = (error as { cause?: unknown } | null)?.cause;
  return cause instanceof RequestError && cause.isNoResponders();
}

/**
 * Publishes `data` and waits for its PubAck, trying again with the **same** `Nats-Msg-Id` while
 * the request times out or finds no responder (a stream leader election in a cluster), for up to
 * `publishRetryWindowMs`, waiting 0.25 s doubled up to 2 s between attempts. An attempt whose
 * PubAck was lost but whose message was stored is dropped as a duplicate by the server (inside
 * `JS_DUPLICATE_WINDOW`, minutes). Anything else, or a publish still failing at the end of the
 * window, throws: the caller's own message is then redelivered and published again, same id.
 *
 * Traced (issue 10): a producer span, child of `options.trace` (default: the active context),
 * whose W3C trace context goes in the message's headers; the consumer side continues from it
 * (`createConsumerRunner`). With tracing off the span is the API's no-op and no header is added.
 */
export async function publishRetrying(
  js: JetStreamClient,
  subject: string,
  data: Uint8Array,
  msgId: string,
  options: { timeoutMs?: number; headers?: MsgHdrs; trace?: TraceContext } = {},
): Promise<PubAck> {
  const parent = options.trace ?? context.active();
  // Events (`run.events.*`, a step's deltas among them) carry the context but get no span of
  // their own: nothing continues a trace from them, and a span per delta would drown the trace.
  const span = subject.startsWith(eventSubjectPrefix)
    ? undefined
    : abideTracer().startSpan(
        publishSpanName(subject),
        { kind: SpanKind.PRODUCER, attributes: { 'messaging.system': 'nats', 'messaging.destination.name': subject, 'messaging.message.id': msgId } },
        parent,
      );
  const headers = injectTraceHeaders(span ? trace.setSpan(parent, span) : parent, options.headers);
  const deadline = Date.now() + publishRetryWindowMs;
  try {
    for (let attempt = 0; ; attempt += 1) {
      try {
        return await js.publish(subject, data, { msgID: msgId, timeout: options.timeoutMs ?? 5_000, ...(headers ? { headers } : {}) });
      } catch (error) {
        const wait = Math.min(2_000, 250 * 2 ** attempt);
        if (!isTransientPublishError(error) || Date.now() + wait >= deadline) throw error;
        span?.addEvent('publish retried', { attempt });
        await new Promise((resolve) => setTimeout(resolve, wait));
      }
    }
  } catch (error) {
    if (span) recordSpanError(span, error);
    throw error;
  } finally {
    span?.end();
  }
}

const eventSubjectPrefix = subjects.runEvents('');

/** Publishes a JSON message, waits for its PubAck, and dedupes on `msgId` inside the duplicate window (see `publishRetrying`). */
export async function publishJson(js: JetStreamClient, subject: string, value: unknown, msgId: string, options: { timeoutMs?: number; trace?: TraceContext } = {}) {
  return publishRetrying(js, subject, encodeJson(value), msgId, options);
}
