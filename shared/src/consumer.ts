import type { ConsumerMessages, JetStreamClient, JsMsg } from '@nats-io/jetstream';
import { headers as natsHeaders } from '@nats-io/transport-node';
import type { z } from 'zod';
import { ackDecisionFor, ensureError, InvalidMessageError } from './errors.ts';
import { JetStreamApiCodes } from '@nats-io/jetstream';
import type { ConsumerSupervision, SupervisedHealth, Supervisor } from './consumer-supervisor.ts';
import { decodeJson, isApiError, publishRetrying, type ConsumerPolicy } from './jetstream.ts';
import type { Logger } from './logger.ts';
import { sleep } from './retry.ts';
import { context } from '@opentelemetry/api';
import { extractTraceContext } from './tracing.ts';

/** Headers of a deferred copy (issue 8): the msg id of the message first deferred, how many times, and when last. */
export const deferHeaders = { origin: 'Abide-Deferred-From', count: 'Abide-Defer-Count', at: 'Abide-Deferred-At' } as const;

/** What a handler learns about the message it handles. */
export type Delivery<Message> = {
  message: Message;
  subject: string;
  /** 1 on first delivery. */
  deliveryCount: number;
  /** True when no redelivery will follow a failure (`max_deliver` reached). */
  isLastDelivery: boolean;
  streamSequence: number;
  /** Aborted when the consumer stops past its grace period. */
  signal: AbortSignal;
  /** Extends the ack deadline (the runner also does this every `heartbeatMs`). */
  working(): void;
};

export type ConsumerRunnerOptions<Schema extends z.ZodType> = {
  js: JetStreamClient;
  policy: ConsumerPolicy;
  schema: Schema;
  /** Messages handled at once by this process (its pull batch size). */
  concurrency: number;
  logger: Logger;
  /** Handles one message; resolve to ack, throw to let the error decide (term or nak). */
  handle(delivery: Delivery<z.infer<Schema>>): Promise<void>;
  /** Called when a handler fails on the last delivery, before the message is terminated. */
  onExhausted?(delivery: Delivery<z.infer<Schema>>, error: Error): Promise<void>;
  /**
   * Per-tenant capacity (issue 8): called before `handle`. Resolves to a release function (called
   * once `handle` settled) when the message may be worked on now, or to undefined when its tenant
   * has no free slot: the message is then deferred (see `defer` below), never nakked, so waiting
   * for capacity spends none of its deliveries.
   */
  admit?(delivery: Delivery<z.infer<Schema>>): Promise<(() => Promise<void>) | undefined>;
  /** A message deferred less than this long ago waits out the rest (then asks `admit` once more) before it is deferred again. @default 1000 */
  deferPauseMs?: number;
  /** The process's supervision: the consume loop runs under it (restarted, counted, reported to `/readyz`). */
  supervision: ConsumerSupervision;
  /**
   * Creates the durable again (provisioning is idempotent). Called before a restart when the
   * consumer or its stream was found missing: deleted by an operator, or lost with its stream.
   */
  provision?(): Promise<unknown>;
  now?: () => number;
};

export type ConsumerRunner = {
  start(): Promise<void>;
  /** Stops pulling, waits up to `graceMs` for in-flight handlers, then aborts them. */
  stop(graceMs: number): Promise<void>;
  readonly inFlight: number;
  /** Resolves (with undefined) once stopped: the supervisor restarts a loop that ends on its own. */
  readonly closed: Promise<Error | undefined>;
  /** The consume loop's supervision state. */
  health(): SupervisedHealth;
};

/** A pull's consumer was deleted on the server (the library would go on pulling from nothing). */
export class ConsumerDeletedError extends Error {
  override readonly name = 'ConsumerDeletedError';
}

/** True when fetching the consumer answered that it or its stream does not exist. */
function isNotFound(error: Error | undefined): boolean {
  return isApiError(error, JetStreamApiCodes.ConsumerNotFound) || isApiError(error, JetStreamApiCodes.StreamNotFound);
}

/**
 * How long fetching the consumer must keep answering not-found before it is provisioned again: a
 * leader election answers so for a moment, and provisioning then is harmless (idempotent) but
 * pointless. A deletion seen on the pull itself (`consumer_deleted`) is provisioned at once.
 */
const notFoundBeforeProvisioningMs = 3_000;

/** A durable pull's expiry and idle heartbeat (see `consumeOnce`). */
const pullExpiresMs = 10_000;
const pullHeartbeatMs = 5_000;

/** Nak delay for delivery `n`: exponential with full jitter, capped. */
export function nakDelayFor(policy: ConsumerPolicy, deliveryCount: number): number {
  const ceiling = Math.min(policy.maxNakDelayMs, policy.baseNakDelayMs * 2 ** Math.max(0, deliveryCount - 1));
  return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
}

/**
 * A pull consumer with bounded concurrency. Every message is decoded and validated; one that
 * does not parse is terminated and logged (never retried, never crashes the process). The
 * message is acked only after its handler resolved (its effects are durable); an error
 * decides between `term` and `nak` (`ackDecisionFor`).
 */
export function createConsumerRunner<Schema extends z.ZodType>(options: ConsumerRunnerOptions<Schema>): ConsumerRunner {
  const { js, policy, schema, concurrency, logger, handle, onExhausted, admit, supervision } = options;
  const deferPauseMs = options.deferPauseMs ?? 1_000;
  const now = options.now ?? Date.now;
  const log = logger.child({ consumer: policy.durable });
  const abort = new AbortController();
  const running = new Set<Promise<void>>();
  let messages: ConsumerMessages | undefined;
  let stopping = false;
  let resolveClosed: (error: Error | undefined) => void = () => {};
  const closed = new Promise<Error | undefined>((resolve) => (resolveClosed = resolve));

  /**
   * Puts a message its tenant has no capacity for behind the queue without spending a delivery:
   * republishes the same data and headers to the same subject with the deterministic msg id
   * `<first msg id>:defer:<n>`, then acks the original. A redelivered original deferred again
   * yields the same id, which the duplicate window drops.
   * Crash window: dying between the publish and the ack leaves both copies (the original comes
   * back after ack_wait). Both are handled, and the second is harmless by the workers' existing
   * idempotency: the llm-worker answers a step found in `LLM_RESULTS` from there without calling
   * the model (two copies at the same moment call it twice; the result stored first is the one
   * published); the tool-worker answers a call found in `TOOL_RESULTS` from there, naks while
   * another worker's `.started` marker is fresh (and drops, without a result, a copy that runs out
   * of deliveries that way), and treats a stale marker without a result as the outcome-unknown
   * case with the same idempotency key; the orchestrator records a step's or call's first result only.
   */
  async function defer(raw: JsMsg): Promise<void> {
    const original = raw.headers;
    const count = Number(original?.get(deferHeaders.count) || '0') + 1;
    const origin = original?.get(deferHeaders.origin) || original?.get('Nats-Msg-Id') || `${policy.stream}:${raw.seq}`;
    const copyHeaders = natsHeaders();
    for (const key of original?.keys() ?? []) {
      if (key === 'Nats-Msg-Id' || Object.values(deferHeaders).includes(key as never)) continue;
      for (const value of original!.values(key)) copyHeaders.append(key, value);
    }
    copyHeaders.set(deferHeaders.origin, origin);
    copyHeaders.set(deferHeaders.count, String(count));
    copyHeaders.set(deferHeaders.at, String(now()));
    await publishRetrying(js, raw.subject, raw.data, `${origin}:defer:${count}`, { headers: copyHeaders });
    await raw.ackAck();
    log.debug({ subject: raw.subject, deferCount: count }, 'tenant at capacity; message deferred');
  }

  /** How long a message waits before it may be deferred again: the rest of `deferPauseMs` since its last deferral. */
  function pauseBeforeDeferring(raw: JsMsg): number {
    const at = Number(raw.headers?.get(deferHeaders.at) || 'NaN');
    if (!Number.isFinite(at)) return 0;
    return Math.min(deferPauseMs, Math.max(0, deferPauseMs - (now() - at)));
  }

  /** Admits the message (resolving to its release) or defers it (resolving to undefined). */
  async function admitOrDefer(raw: JsMsg, delivery: Delivery<unknown>): Promise<(() => Promise<void>) | undefined> {
    if (!admit) return async () => {};
    const release = await admit(delivery as never);
    if (release) return release;
    const pause = pauseBeforeDeferring(raw);
    if (pause > 0 && !stopping) {
      // A lone tenant's few messages would otherwise circle the queue as fast as NATS allows.
      await sleep(pause, abort.signal);
      const retried = await admit(delivery as never);
      if (retried) return retried;
    }
    await defer(raw);
    return undefined;
  }

  async function process(raw: JsMsg): Promise<void> {
    const deliveryCount = raw.info.deliveryCount;
    let parsed: z.infer<Schema>;
    try {
      const result = schema.safeParse(decodeJson(raw.data));
      if (!result.success) throw new InvalidMessageError(raw.subject, result.error.message.slice(0, 2_000));
      parsed = result.data;
    } catch (error) {
      log.error({ subject: raw.subject, streamSequence: raw.seq, err: ensureError(error) }, 'message does not parse; terminated');
      raw.term('invalid message');
      return;
    }
    const heartbeat = setInterval(() => {
      try {
        raw.working();
      } catch (error) {
        // The connection is closed or reconnecting: the server redelivers if the work outlives ack_wait.
        log.warn({ subject: raw.subject, err: ensureError(error) }, 'in-progress ack failed');
      }
    }, policy.heartbeatMs);
    const delivery: Delivery<z.infer<Schema>> = {
      message: parsed,
      subject: raw.subject,
      deliveryCount,
      isLastDelivery: deliveryCount >= policy.maxDeliver,
      streamSequence: raw.seq,
      signal: abort.signal,
      working: () => raw.working(),
    };
    try {
      const release = await admitOrDefer(raw, delivery);
      if (!release) {
        clearInterval(heartbeat);
        return;
      }
      try {
        await handle(delivery);
      } finally {
        await release();
      }
      clearInterval(heartbeat);
      // `ack`, not `ackAck` (issue 9): no round trip per message. The message's effects are
      // durable before this line, so a lost ack (connection drop, crash) only redelivers it after
      // ack_wait, and every handler's idempotency absorbs that (the orchestrator finds the input
      // applied, the workers answer from LLM_RESULTS / TOOL_RESULTS).
      try {
        raw.ack();
      } catch (error) {
        // The connection is closed: the same redelivery applies.
        log.warn({ subject: raw.subject, err: ensureError(error) }, 'ack not sent');
      }
      // Envelopes carry when they were built (`ts`); advisories do not.
      const sentAt = (delivery.message as { ts?: unknown }).ts;
      if (typeof sentAt === 'string') supervision.observeLatency(policy.durable, (now() - Date.parse(sentAt)) / 1_000);
    } catch (caught) {
      clearInterval(heartbeat);
      const error = ensureError(caught);
      const decision = ackDecisionFor(error);
      if (decision.action === 'nak' && stopping) {
        // Handed back by a shutdown: not the message's fault, so never "exhausted" by it.
        log.info({ subject: raw.subject, deliveryCount }, 'handing the message back on shutdown');
        raw.nak();
        return;
      }
      if (decision.action === 'nak' && delivery.isLastDelivery && onExhausted) {
        try {
          await onExhausted(delivery, error);
          log.error({ subject: raw.subject, deliveryCount, err: error }, 'deliveries exhausted; failed result published, message terminated');
          raw.term('delivery_exhausted');
        } catch (exhaustError) {
          log.error({ subject: raw.subject, err: ensureError(exhaustError) }, 'could not report exhausted message; leaving it to the advisory');
          raw.nak();
        }
        return;
      }
      if (decision.action === 'term') {
        log.error({ subject: raw.subject, deliveryCount, err: error }, 'message failed for good; terminated');
        raw.term(decision.reason);
      } else {
        const delay = decision.delayMs ?? nakDelayFor(policy, deliveryCount);
        log.warn({ subject: raw.subject, deliveryCount, delayMs: delay, err: error }, 'message failed; will be redelivered');
        raw.nak(delay);
      }
    }
  }

  /**
   * The supervised loop: one run fetches the consumer and consumes until the iterator ends or
   * throws. The library rides through missed heartbeats and a consumer that is briefly not found
   * (it re-checks the consumer and pulls again); when its iterator still ends or throws
   * (connection closed and reopened, a stream leader lost in a cluster, the consumer deleted),
   * the supervisor runs it again after a backoff, provisioning the consumer first when it is
   * gone. The durable keeps the position: nothing is skipped or re-acked.
   */
  let notFoundSince: number | undefined;
  const supervisor: Supervisor = supervision.supervise({
    name: policy.durable,
    run: (consuming) => consumeOnce(consuming),
    async beforeRestart(cause) {
      notFoundSince = isNotFound(cause) ? (notFoundSince ?? now()) : undefined;
      const gone = cause instanceof ConsumerDeletedError || (notFoundSince !== undefined && now() - notFoundSince >= notFoundBeforeProvisioningMs);
      if (stopping || !options.provision || !gone) return;
      log.warn({ err: cause }, 'consumer is gone; provisioning it again');
      await options.provision();
      notFoundSince = undefined;
    },
  });

  async function consumeOnce(consuming: () => void): Promise<void> {
    if (stopping) return;
    const consumer = await js.consumers.get(policy.stream, policy.durable);
    if (stopping) return;
    // Pulls expire every 10 s with heartbeats every 5 s: a pull lost with its node is noticed
    // after two missed heartbeats (10 s).
    const current = await consumer.consume({ max_messages: concurrency, expires: pullExpiresMs, idle_heartbeat: pullHeartbeatMs });
    messages = current;
    if (stopping) current.stop();
    consuming();
    let lastSignOfLife = Date.now();
    void (async () => {
      for await (const status of current.status()) {
        if (status.type === 'heartbeat') lastSignOfLife = Date.now();
        if (status.type === 'consumer_deleted') {
          // The library would keep pulling from a durable that no longer exists; ending the run
          // lets the supervisor provision it again (and report not-ready while it cannot).
          log.warn({ description: status.description }, 'consumer deleted on the server; ending the consume loop');
          current.stop(new ConsumerDeletedError(`${policy.durable}: ${status.description}`));
          continue;
        }
        if (status.type !== 'heartbeats_missed') continue;
        // The library would check the consumer again only every `expires` while the check
        // fails (a leader election); stopping here makes the supervisor fetch it again within seconds.
        // Messages being handled keep their own ack subjects.
        log.warn({ missed: status.count }, 'consumer heartbeats missed; fetching the consumer again');
        current.stop();
      }
    })();
    // After a reconnect the library stops its heartbeat monitor until its consumer check
    // succeeds: nothing would notice a pull that never comes back. A pull with room for messages
    // and no heartbeat or message for 3 heartbeats is stopped and fetched again.
    const watchdog = setInterval(() => {
      // Full: no pull is outstanding, so no heartbeat is due; the clock starts when there is room.
      if (running.size >= concurrency) lastSignOfLife = Date.now();
      else if (Date.now() - lastSignOfLife > 3 * pullHeartbeatMs) {
        log.warn('consumer silent; fetching the consumer again');
        current.stop();
      }
    }, pullHeartbeatMs);
    try {
      await handOut(current, () => {
        lastSignOfLife = Date.now();
      });
    } finally {
      clearInterval(watchdog);
    }
  }

  async function handOut(current: ConsumerMessages, onMessage: () => void): Promise<void> {
    for await (const raw of current) {
      onMessage();
      if (stopping) {
        raw.nak();
        continue;
      }
      // The handler runs in the trace context its message carries (issue 10): the spans it starts
      // and the messages it publishes continue the producer's trace.
      const task = context.with(extractTraceContext(raw.headers), () => process(raw)).catch((error: unknown) => log.error({ err: ensureError(error) }, 'unexpected error in message handling'));
      running.add(task);
      void task.finally(() => running.delete(task));
      while (running.size >= concurrency) await Promise.race(running);
    }
  }

  return {
    get inFlight() {
      return running.size;
    },
    closed,
    health: () => supervisor.health(),
    async start() {
      supervisor.start();
    },
    async stop(graceMs: number) {
      stopping = true;
      messages?.stop();
      const drained = Promise.all([...running]);
      const timedOut = await Promise.race([drained.then(() => false), new Promise<boolean>((resolve) => setTimeout(() => resolve(true), graceMs).unref())]);
      if (timedOut) {
        log.warn({ inFlight: running.size }, 'grace period over; aborting in-flight work');
        abort.abort(new Error('shutting down'));
        await Promise.race([drained, new Promise((resolve) => setTimeout(resolve, 2_000).unref())]);
      }
      await supervisor.stop();
      resolveClosed(undefined);
    },
  };
}
