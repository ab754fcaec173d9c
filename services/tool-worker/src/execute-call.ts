import {
  AbideError,
  ShuttingDownError,
  SpanStatusCode,
  activeSpan,
  createOrRead,
  inSpan,
  stepDeliveryAttributes,
  encodeJson,
  ensureError,
  kvKeys,
  makeEnvelope,
  readRecord,
  toolResultRecordSchema,
  toolStartedMarkerSchema,
  type CrashPoints,
  type Delivery,
  type KeyValueBucket,
  type Logger,
  type ToolOutcome,
  type ToolRequestMessage,
  type ToolResultMessage,
  type ToolResultPayload,
  type ToolStartedMarker,
} from '@abide/shared';
import type { CancellationTracker } from '@abide/shared';

type CancelTracking = ReturnType<CancellationTracker['track']>;
import { errorOutcome, type RunTool } from './tool-invocation.ts';
import { toolMetricLabel, type ToolMetrics } from './tool-metrics.ts';

export type ToolCallHandlerDeps = {
  /** KV `TOOL_RESULTS`: results under `<runId>.<toolCallId>`, started markers under `….started`. */
  results: KeyValueBucket;
  /** Publishes a `tool_result` on `run.in.<runId>.tool_result` with `message.id` as msg id, waiting for the PubAck. */
  publish(message: ToolResultMessage): Promise<void>;
  cancellations: CancellationTracker;
  runTool: RunTool;
  /** This process's id, written into the started markers it owns. */
  workerId: string;
  logger: Logger;
  metrics: ToolMetrics;
  /** How often a started marker's `heartbeatAt` is refreshed while the call runs. @default 10000 */
  heartbeatMs?: number;
  /** A marker whose heartbeat is older than this belongs to a worker that died. @default 3 × heartbeatMs */
  staleAfterMs?: number;
  /** Outcomes kept in memory when storing them failed, to answer a redelivery without executing again. @default 1000 */
  maxUnsavedOutcomes?: number;
  now?: () => number;
  random?: () => number;
  /** Test-only crash points: `tool-worker.after_execute` (the tool ran, its outcome not stored) and `tool-worker.after_store` (stored, not published). */
  crashPoints?: Pick<CrashPoints, 'hit'>;
};

/** The `Nats-Msg-Id` (and envelope id) of a call's `tool_result`: every attempt publishes under the same id. */
export function toolResultMessageId(runId: string, toolCallId: string): string {
  return `${runId}:tool_result:${toolCallId}`;
}

type Call = {
  runId: string;
  tenantId: string;
  toolCallId: string;
  step: number;
  toolName: string;
  /** The tool's metric label (`toolMetricLabel`): never the tenant's tool name. */
  toolLabel: string;
  resultKey: string;
  markerKey: string;
  log: Logger;
};

type Claim =
  | { kind: 'execute'; marker: ToolStartedMarker; revision: number }
  | { kind: 'decided'; outcome: ToolOutcome }
  | { kind: 'stored'; result: ToolResultPayload };

/**
 * Handles `tool.request` deliveries (DESIGN §4, "Tool execution, a way that works"):
 *
 * 1. a cancelled run's request is acked without executing anything;
 * 2. a call with a result in `TOOL_RESULTS` is answered from there (never executed twice);
 * 3. the call is claimed by creating its started marker; a fresh marker is another live worker's
 *    (nak, retry when it would turn stale); a stale one means the call was interrupted mid-way
 *    (`outcome_unknown`) and the tool's `onOutcomeUnknown` decides;
 * 4. while the tool runs, the marker's heartbeat is refreshed with the in-progress acks;
 * 5. the outcome is stored (first stored result wins), then published;
 * 6. a retryable failure removes the marker (the call did not succeed, so a retry with the same
 *    idempotency key is safe) and is thrown, so the runner naks it with backoff.
 *
 * Cancellation mid-call stores and publishes a `cancelled` outcome: the stored result keeps a
 * redelivery from executing the call again, and the orchestrator ignores it for a run it already
 * cancelled. Shutdown mid-call hands the message back; the marker is removed only if no request
 * had been sent, otherwise the next worker finds it and applies `onOutcomeUnknown`.
 */
export function createToolCallHandler(deps: ToolCallHandlerDeps) {
  const { results, cancellations, runTool, workerId, logger, metrics } = deps;
  const heartbeatMs = deps.heartbeatMs ?? 10_000;
  const staleAfterMs = deps.staleAfterMs ?? 3 * heartbeatMs;
  const maxUnsavedOutcomes = deps.maxUnsavedOutcomes ?? 1_000;
  const now = deps.now ?? Date.now;
  const random = deps.random ?? Math.random;
  /** Outcomes executed here whose storing or publishing failed; keyed by result key. */
  const unsaved = new Map<string, ToolOutcome>();

  function callOf(delivery: Delivery<ToolRequestMessage>): Call {
    const { runId, tenantId, payload } = delivery.message;
    const { toolCallId, step } = payload;
    return {
      runId,
      tenantId,
      toolCallId,
      step,
      toolName: payload.tool.name,
      toolLabel: toolMetricLabel(payload.tool),
      resultKey: kvKeys.toolResult(runId, toolCallId),
      markerKey: kvKeys.toolStarted(runId, toolCallId),
      log: logger.child({ runId, tenantId, step, toolCallId, tool: payload.tool.name, deliveryCount: delivery.deliveryCount }),
    };
  }

  function markerFor(attempt: number): ToolStartedMarker {
    return { worker: workerId, attempt, heartbeatAt: new Date(now()).toISOString() };
  }

  async function publishResult(call: Call, result: ToolResultPayload): Promise<void> {
    const id = toolResultMessageId(call.runId, call.toolCallId);
    // The outcome on the call's `tool.call` span (see `handle`): a label, never the result itself.
    const span = activeSpan();
    span?.setAttribute('abide.tool.outcome', outcomeLabel(result.outcome));
    if (result.outcome.kind === 'error') span?.setStatus({ code: SpanStatusCode.ERROR, message: result.outcome.error.code });
    await deps.publish(makeEnvelope('tool_result', { id, runId: call.runId, tenantId: call.tenantId, ts: new Date(now()).toISOString() }, result));
  }

  async function deleteMarker(call: Call, why: string): Promise<void> {
    try {
      await results.delete(call.markerKey);
    } catch (error) {
      // The marker then turns stale and the next attempt applies `onOutcomeUnknown`: safe, only less precise.
      call.log.warn({ err: ensureError(error), why }, 'could not delete the started marker');
    }
  }

  function remember(call: Call, outcome: ToolOutcome): void {
    unsaved.delete(call.resultKey);
    unsaved.set(call.resultKey, outcome);
    while (unsaved.size > maxUnsavedOutcomes) unsaved.delete(unsaved.keys().next().value!);
  }

  /**
   * Stores the outcome under the result key, then publishes what the key holds. Storing is a
   * create: if another attempt stored a result first, that one is published instead, so
   * `TOOL_RESULTS` and the run never disagree.
   */
  async function finish(call: Call, outcome: ToolOutcome): Promise<void> {
    const payload: ToolResultPayload = { toolCallId: call.toolCallId, step: call.step, outcome };
    let result = payload;
    try {
      const stored = await createOrRead(results, call.resultKey, payload, toolResultRecordSchema);
      if (!stored.created) {
        const existing = stored.existing;
        if ('invalid' in existing) {
          call.log.error({ err: existing.error }, 'stored tool result does not parse; replacing it');
          await results.update(call.resultKey, encodeJson(payload), existing.revision);
        } else {
          result = existing.value;
          call.log.warn({ outcome: outcomeLabel(result.outcome) }, 'a result was stored first by another attempt; publishing that one');
        }
      }
    } catch (error) {
      remember(call, outcome);
      throw new AbideError('internal', `could not store the tool result: ${ensureError(error).message}`, { retryable: true, cause: error });
    }
    deps.crashPoints?.hit('tool-worker.after_store');
    try {
      await publishResult(call, result);
    } catch (error) {
      // The result is stored: the redelivery answers from TOOL_RESULTS.
      throw new AbideError('internal', `could not publish the tool result: ${ensureError(error).message}`, { retryable: true, cause: error });
    }
    unsaved.delete(call.resultKey);
    metrics.callFinished(call.toolLabel, outcomeLabel(result.outcome));
    const level = result.outcome.kind === 'success' ? 'info' : 'warn';
    call.log[level]({ outcome: outcomeLabel(result.outcome) }, 'tool result stored and published');
    // The started marker stays: once the result is stored, a redelivery answers from it whatever
    // the marker says, so nothing reads the marker again, and it expires with the bucket's other
    // entries (`EVENTS_MAX_AGE`). Deleting it was one more synced KV write per call (issue 9).
  }

  type MarkerAttempt = { marker: ToolStartedMarker; created: Awaited<ReturnType<typeof createMarker>> };
  function createMarker(call: Call, marker: ToolStartedMarker) {
    return createOrRead(results, call.markerKey, marker, toolStartedMarkerSchema);
  }

  /** Decides from the marker attempt (`handleCall` creates the marker alongside its reads) whether this delivery executes the call. */
  async function claim(call: Call, delivery: Delivery<ToolRequestMessage>, attempt: MarkerAttempt): Promise<Claim> {
    const { marker, created } = attempt;
    if (created.created) return { kind: 'execute', marker, revision: created.revision };
    const existing = created.existing;
    const owner = 'invalid' in existing ? undefined : existing.value;
    const heartbeatAt = owner ? Date.parse(owner.heartbeatAt) : Number.NaN;
    const age = Number.isFinite(heartbeatAt) ? now() - heartbeatAt : Number.POSITIVE_INFINITY;
    if (age < staleAfterMs) {
      // Come back when the marker would turn stale (a heartbeat from a clock ahead of ours counts as just now).
      const retryAfterMs = Math.max(1_000, Math.round(staleAfterMs - Math.max(0, age) + random() * 1_000));
      throw new CallOwnedElsewhereError(`the call is being executed by worker ${owner?.worker} (attempt ${owner?.attempt}); retrying in ${retryAfterMs} ms`, retryAfterMs);
    }

    const policy = delivery.message.payload.tool.onOutcomeUnknown ?? 'retry';
    metrics.outcomeUnknown(call.toolLabel, policy);
    const interrupted = owner
      ? `the call was interrupted while executing (worker ${owner.worker}, attempt ${owner.attempt}, last heartbeat ${owner.heartbeatAt})`
      : 'the call was interrupted while executing (its started marker is unreadable)';
    call.log.warn({ policy, previousWorker: owner?.worker, previousAttempt: owner?.attempt }, 'outcome unknown: stale started marker without a result');
    if (policy === 'fail') {
      return { kind: 'decided', outcome: errorOutcome('outcome_unknown', `${interrupted}; the tool's onOutcomeUnknown policy is "fail", so it is not run again`) };
    }
    if (policy === 'ask') {
      // `ask` (an approval asking a human whether to run the call again, DESIGN §4) is not built:
      // `PUT /v1/agents` refuses it (shared/src/agent.ts, docs/decisions.md). Only an agent stored
      // before that refusal can still carry it; its call fails like `fail`, saying why.
      return {
        kind: 'decided',
        outcome: errorOutcome('outcome_unknown', `${interrupted}; the tool's onOutcomeUnknown policy is "ask": a human must decide whether to run it again, so it is not run again automatically`),
      };
    }
    let revision: number;
    try {
      revision = await results.update(call.markerKey, encodeJson(marker), existing.revision);
    } catch (error) {
      throw new CallOwnedElsewhereError('another worker took over the interrupted call', heartbeatMs, error);
    }
    // The interrupted attempt may have stored its result just before the takeover.
    const late = await readRecord(results, call.resultKey, toolResultRecordSchema);
    if (late && !('invalid' in late)) return { kind: 'stored', result: late.value };
    call.log.warn('running the interrupted call again with the same idempotency key');
    return { kind: 'execute', marker, revision };
  }

  /** Refreshes the marker's heartbeat (compare-and-swap, so a marker taken over or deleted is never brought back). */
  function startHeartbeat(call: Call, delivery: Delivery<ToolRequestMessage>, marker: ToolStartedMarker, initialRevision: number) {
    let revision = initialRevision;
    let lost = false;
    let pending: Promise<void> = Promise.resolve();
    async function refresh(): Promise<void> {
      if (lost) return;
      try {
        revision = await results.update(call.markerKey, encodeJson({ ...marker, heartbeatAt: new Date(now()).toISOString() }), revision);
      } catch (error) {
        const current = await readRecord(results, call.markerKey, toolStartedMarkerSchema).catch(() => undefined);
        const ours = current && !('invalid' in current) && current.value.worker === marker.worker && current.value.attempt === marker.attempt;
        if (current && !ours) {
          lost = true;
          call.log.warn('the started marker was taken over by another worker; finishing this attempt anyway');
        } else {
          call.log.warn({ err: ensureError(error) }, 'could not refresh the started marker; will try again');
        }
      }
    }
    const timer = setInterval(() => {
      try {
        delivery.working();
      } catch (error) {
        // Only a closed connection refuses it; the ack deadline then lapses and the call is redelivered.
        call.log.warn({ err: ensureError(error) }, 'could not extend the ack deadline');
      }
      pending = pending.then(refresh);
    }, heartbeatMs);
    return async function stop(): Promise<void> {
      clearInterval(timer);
      await pending;
    };
  }

  async function execute(call: Call, delivery: Delivery<ToolRequestMessage>, tracking: CancelTracking, marker: ToolStartedMarker, revision: number): Promise<void> {
    const { payload } = delivery.message;
    const stopHeartbeat = startHeartbeat(call, delivery, marker, revision);
    let externalEffect = false;
    let outcome: ToolOutcome | undefined;
    const executionEnded = metrics.executionStarted();
    try {
      outcome = await runTool({
        runId: call.runId,
        tenantId: call.tenantId,
        toolCallId: call.toolCallId,
        tool: payload.tool,
        args: payload.args,
        timeoutMs: payload.timeoutMs,
        signal: AbortSignal.any([delivery.signal, tracking.signal]),
        onExternalEffect: () => (externalEffect = true),
        onProgress: () => {
          try {
            delivery.working();
          } catch (error) {
            // As for the heartbeat's: a closed connection refuses it, and the message is redelivered.
            call.log.warn({ err: ensureError(error) }, 'could not extend the ack deadline on progress');
          }
        },
      });
    } catch (error) {
      await stopHeartbeat();
      if (tracking.signal.aborted && !delivery.signal.aborted) {
        outcome = { kind: 'cancelled' };
      } else if (delivery.signal.aborted) {
        if (!externalEffect) await deleteMarker(call, 'shutting down before the call had any effect');
        throw new ShuttingDownError(
          externalEffect ? 'worker shutting down mid-call; handed back (its outcome is unknown)' : 'worker shutting down; handed back before executing',
          error,
        );
      } else if (AbideError.isInstance(error) && error.retryable) {
        metrics.retryableFailure(call.toolLabel);
        await deleteMarker(call, 'retryable failure');
        throw error;
      } else {
        const failure = ensureError(error);
        call.log.error({ err: failure }, 'tool threw an unexpected error; failing the call');
        outcome = errorOutcome(AbideError.isInstance(error) ? error.code : 'tool_error', failure.message);
      }
    } finally {
      executionEnded(call.toolLabel, outcome === undefined ? 'handed_back' : outcomeLabel(outcome));
      await stopHeartbeat();
    }
    deps.crashPoints?.hit('tool-worker.after_execute');
    await finish(call, outcome);
  }

  /** One delivery of a tool call (see `handle`). */
  async function handleCall(delivery: Delivery<ToolRequestMessage>): Promise<void> {
    const call = callOf(delivery);
    // Tracked before the check: a cancellation landing after it still aborts the call.
    const tracking = cancellations.track(call.runId);
    try {
      // The two reads and the started marker's create, pipelined (one round trip, issue 9): the
      // marker is created before we know whether the call is cancelled or finished, and what it
      // means is decided only once both reads answered. Crash windows: dying after the create leaves a marker. A later
      // delivery checks the cancel and the stored result first, so a marker beside either is never
      // read; without them it is the marker of an attempt that died before running the tool,
      // handled (once stale) by `onOutcomeUnknown`, exactly as when dying between the create and
      // the tool's request before.
      const marker = markerFor(delivery.deliveryCount);
      const markerCreated = createMarker(call, marker).then(
        (created) => ({ created }),
        (error: unknown) => ({ error: ensureError(error) }),
      );
      const reads = Promise.all([cancellations.isCancelled(call.runId), readRecord(results, call.resultKey, toolResultRecordSchema)]).then(
        (values) => ({ values }),
        (error: unknown) => ({ error: ensureError(error) }),
      );
      const [readsOutcome, markerOutcome] = await Promise.all([reads, markerCreated]);
      const createdMarker = 'created' in markerOutcome && markerOutcome.created.created;
      if ('error' in readsOutcome) {
        // Nothing ran: remove the marker first, or the redelivery would take it for another
        // worker's and wait for it to turn stale (then `onOutcomeUnknown`).
        if (createdMarker) await deleteMarker(call, 'a read failed before anything was executed');
        throw readsOutcome.error;
      }
      const [cancelled, cached] = readsOutcome.values;
      /** A marker this delivery created but will not execute under: removed off the critical path. */
      const dropCreatedMarker = (why: string) => {
        if (createdMarker) void deleteMarker(call, why);
      };
      if (cancelled) {
        dropCreatedMarker('the run is cancelled');
        metrics.skippedCancelled();
        call.log.info('run is cancelled; request acked without executing');
        return;
      }
      if (cached && !('invalid' in cached)) {
        dropCreatedMarker('the call has a stored result');
        metrics.cacheHit(call.toolLabel);
        await publishResult(call, cached.value);
        call.log.info({ outcome: outcomeLabel(cached.value.outcome) }, 'call already finished; result re-published from TOOL_RESULTS');
        return;
      }
      if (cached) call.log.error({ err: cached.error }, 'stored tool result does not parse; handling the call as unfinished');
      const remembered = unsaved.get(call.resultKey);
      if (remembered) {
        // `finish` removes the marker once the outcome is stored.
        await finish(call, remembered);
        return;
      }
      if ('error' in markerOutcome) throw markerOutcome.error;
      const claimed = await claim(call, delivery, { marker, created: markerOutcome.created });
      if (claimed.kind === 'stored') {
        metrics.cacheHit(call.toolLabel);
        await publishResult(call, claimed.result);
      } else if (claimed.kind === 'decided') {
        await finish(call, claimed.outcome);
      } else {
        await execute(call, delivery, tracking, claimed.marker, claimed.revision);
      }
    } finally {
      tracking.release();
    }
  }

  return {
    /**
     * Handles one delivery: resolves to ack, throws (retryable) to nak. In its `tool.call` span
     * (issue 10), a child of the orchestrator's publish of the request; bounded attributes (tool
     * name, call id, outcome label), never the arguments or the result.
     */
    handle(delivery: Delivery<ToolRequestMessage>): Promise<void> {
      const { payload } = delivery.message;
      const attributes = {
        ...stepDeliveryAttributes(delivery),
        'gen_ai.tool.name': payload.tool.name,
        'gen_ai.tool.call.id': payload.toolCallId,
      };
      return inSpan('tool.call', { attributes }, () => handleCall(delivery));
    },

    /** The last delivery failed: store and publish a `delivery_exhausted` outcome (or the one executed here, if storing it failed). */
    async onExhausted(delivery: Delivery<ToolRequestMessage>, error: Error): Promise<void> {
      const call = callOf(delivery);
      if (error instanceof CallOwnedElsewhereError && !unsaved.has(call.resultKey)) {
        // A second copy of a call another worker is executing (a deferral's crash window,
        // consumer.ts): that worker's own message brings the result (or, if it dies, comes back
        // and finds the marker stale). Failing the call from here would overrule it: terminate this copy only.
        call.log.warn({ err: error }, 'duplicate copy of a call another worker executes ran out of deliveries; dropped without a result');
        return;
      }
      const outcome =
        unsaved.get(call.resultKey) ??
        errorOutcome('delivery_exhausted', `the tool call failed on all ${delivery.deliveryCount} deliveries; last error: ${error.message}`);
      await finish(call, outcome);
    },
  };
}
export type ToolCallHandler = ReturnType<typeof createToolCallHandler>;

/** The call is claimed by another live worker (a fresh started marker, or a lost take-over): retry later. */
export class CallOwnedElsewhereError extends AbideError {
  override readonly name = 'CallOwnedElsewhereError';
  constructor(message: string, retryAfterMs: number, cause?: unknown) {
    super('not_ready', message, { retryable: true, retryAfterMs, cause });
  }
}

/** A metric label for an outcome: `success`, `cancelled`, `denied`, or the error code. */
export function outcomeLabel(outcome: ToolOutcome): string {
  return outcome.kind === 'error' ? outcome.error.code : outcome.kind;
}
