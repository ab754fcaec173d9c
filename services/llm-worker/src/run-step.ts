import type { LanguageModel } from 'ai';
import {
  AbideError,
  ShuttingDownError,
  llmResultPayloadSchema,
  makeBusEvent,
  makeEnvelope,
  inSpan,
  stepDeliveryAttributes,
  SpanStatusCode,
  originOf,
  subjects,
  type Delivery,
  type CrashPoints,
  type ErrorInfo,
  type LlmRequestBody,
  type LlmRequestMessage,
  type LlmResultPayload,
  type Logger,
  type ModelConfig,
  type RunErrorCode,
  type Span,
} from '@abide/shared';
import { createDeltaCoalescer, type DeltaCoalescerOptions } from './delta-coalescer.ts';
import { classifyModelError } from './model-errors.ts';
import { noStepMetrics, type BusPublisher, type CancellationTracker, type LlmResultStore, type RequestBodyReader, type StepMetrics } from './ports.ts';
import { createPublishPipeline } from './publish-pipeline.ts';
import { streamStep, type StreamStepOutcome } from './stream-step.ts';

export type RunStepDeps = {
  publisher: BusPublisher;
  results: LlmResultStore;
  bodies: RequestBodyReader;
  cancellations: CancellationTracker;
  /** The language model for a request's model config (see `createLanguageModel`); the tenant's secrets resolve there. */
  createModel(config: ModelConfig, options: { step: number; tenantId: string }): LanguageModel | Promise<LanguageModel>;
  logger: Logger;
  metrics?: StepMetrics;
  /** Cap on a provider's `Retry-After` (the consumer's largest nak delay). */
  maxRetryAfterMs: number;
  /** Delta coalescing. @default { maxDelayMs: 50, maxChars: 512 } */
  coalescing?: Omit<DeltaCoalescerOptions, 'emit'>;
  /** Test-only crash points: `llm-worker.mid_stream` (the first delta's PubAck arrived) and `llm-worker.after_store` (result stored, not published). */
  crashPoints?: Pick<CrashPoints, 'hit'>;
};

export type RunStepHandler = {
  /** Handles one `llm.request` delivery: resolves to ack, throws to let the error decide. */
  handle(delivery: Delivery<LlmRequestMessage>): Promise<void>;
  /** Publishes the `delivery_exhausted` result of a request whose last delivery failed. */
  onExhausted(delivery: Delivery<LlmRequestMessage>, error: Error): Promise<void>;
};

/** `Nats-Msg-Id` (and envelope id) of a step's result: one per step, whatever the attempt. */
export function llmResultMessageId(runId: string, step: number): string {
  return `${runId}:llm_result:${step}`;
}

/** `eventId` of an event of one attempt of a step: `started`, or `d<n>` for the n-th delta. */
export function stepEventId(runId: string, step: number, attempt: number, suffix: string): string {
  return `${runId}:s${step}:a${attempt}:${suffix}`;
}

/**
 * The llm-worker's handler (DESIGN §4 step 2). For an `llm.request`:
 * 1. a cancelled run (`RUN_CONTROL`) → ack, nothing else;
 * 2. a step already in `LLM_RESULTS` → its stored result is published again, the model is not called;
 * 3. otherwise `llm.step.started` (attempt = delivery count), the model streamed through the AI
 *    SDK with coalesced `message.delta` events, every event's PubAck awaited, the result stored in
 *    `LLM_RESULTS` and then published to `run.in.<runId>.llm_result`.
 * A transient model error throws a retryable error (nak with backoff); a final one, or a timeout,
 * publishes `ok: false`. A cancel aborts the call and publishes nothing; a shutdown aborts it and
 * hands the message back.
 */
export function createRunStep(deps: RunStepDeps): RunStepHandler {
  const metrics = deps.metrics ?? noStepMetrics;

  async function publishResult(message: LlmRequestMessage, result: LlmResultPayload): Promise<void> {
    const id = llmResultMessageId(message.runId, result.step);
    const envelope = makeEnvelope('llm_result', { id, runId: message.runId, tenantId: message.tenantId }, result);
    await deps.publisher.publish(subjects.runInbox(message.runId, 'llm_result'), envelope, id);
  }

  /**
   * Stores then publishes `result`; the first result stored for the step is the one published.
   * `eventsSettled` (the attempt's event PubAcks) is awaited alongside the store (issue 9: one
   * round trip less per step) and always before the publish, so the run's events stay in order.
   * Crash window: the result may be stored before every delta of its attempt is acknowledged;
   * dying then (or a delta's publish failing, which naks) leaves a stored result whose deltas
   * are partly missing, and the redelivery publishes it without calling the model. Clients lose
   * nothing: `message.completed` carries the recorded text, which replaces the deltas (DESIGN §6).
   */
  async function finish(message: LlmRequestMessage, result: LlmResultPayload, eventsSettled: Promise<void> = Promise.resolve()): Promise<LlmResultPayload> {
    const [stored] = await Promise.all([deps.results.saveFirst(message.runId, result.step, llmResultPayloadSchema.parse(result)), eventsSettled]);
    deps.crashPoints?.hit('llm-worker.after_store');
    await publishResult(message, stored);
    return stored;
  }

  async function resolveBody(message: LlmRequestMessage): Promise<LlmRequestBody | ErrorInfo> {
    const { body, bodyRef } = message.payload;
    if (body) return body;
    if (!bodyRef) return { code: 'internal', message: 'the model request has neither a body nor a bodyRef' };
    const stored = await deps.bodies.read(bodyRef.name);
    return stored ?? { code: 'internal', message: `the model request body ${bodyRef.name} is missing from ${bodyRef.store}` };
  }

  /** One delivery of a model step (see `handle`), in `span`. */
  async function handleStep(delivery: Delivery<LlmRequestMessage>, span: Span): Promise<void> {
    const { message } = delivery;
    const { runId, tenantId, payload } = message;
    const { step } = payload;
    const attempt = delivery.deliveryCount;
    const log = deps.logger.child({ runId, tenantId, step, attempt });
    // Track before checking: a cancel landing between the check and the call is seen by the watch.
    const cancellation = deps.cancellations.track(runId);
    try {
      // Two independent KV reads, pipelined (one round trip).
      const [cancelled, stored] = await Promise.all([deps.cancellations.isCancelled(runId), deps.results.get(runId, step)]);
      if (cancelled) {
        log.info('run cancelled; model request dropped');
        span.setAttribute('abide.outcome', 'cancelled');
        metrics.cancelled();
        return;
      }
      if (stored) {
        log.info({ ok: stored.ok, storedAttempt: stored.attempt }, 'step already finished; its stored result is published again');
        metrics.replayed();
        span.setAttribute('abide.outcome', 'replayed');
        await publishResult(message, stored);
        return;
      }

      metrics.started();
      const startedAt = Date.now();
      const timeout = AbortSignal.timeout(payload.timeoutMs);
      const signal = AbortSignal.any([delivery.signal, cancellation.signal, timeout]);
      const events = createPublishPipeline(deps.publisher);
      const eventsSubject = subjects.runEvents(runId);
      const startedId = stepEventId(runId, step, attempt, 'started');
      events.send(eventsSubject, makeBusEvent('llm.step.started', { eventId: startedId, runId, tenantId }, { step, attempt }), startedId);
      let deltas = 0;
      const coalescer = createDeltaCoalescer({
        ...deps.coalescing,
        emit(text) {
          const eventId = stepEventId(runId, step, attempt, `d${deltas}`);
          const first = deltas === 0;
          deltas += 1;
          const published = events.send(eventsSubject, makeBusEvent('message.delta', { eventId, runId, tenantId }, { step, attempt, text }), eventId);
          if (first && deps.crashPoints) void published.then(() => deps.crashPoints?.hit('llm-worker.mid_stream'));
        },
      });

      async function fail(error: ErrorInfo): Promise<void> {
        await finish(message, { ok: false, step, attempt, error }, events.settle());
        span.setAttributes({ 'abide.outcome': 'failed', 'error.type': error.code });
        span.setStatus({ code: SpanStatusCode.ERROR, message: error.code });
        metrics.failed(error.code);
        log.warn({ code: error.code, reason: error.message }, 'model step failed for good; failure published');
      }

      const body = await resolveBody(message);
      if (!('messages' in body)) return await fail(body);
      let outcome: StreamStepOutcome;
      try {
        const model = await deps.createModel(payload.model, { step, tenantId });
        outcome = await streamStep({
          model,
          body,
          tools: payload.tools,
          signal,
          async onText(text) {
            coalescer.push(text);
            await events.belowWindow();
          },
        });
      } catch (error) {
        outcome = { kind: 'failed', error };
      }
      metrics.modelCall(payload.model.provider, outcome.kind, (Date.now() - startedAt) / 1_000);

      if (outcome.kind === 'too_large') {
        // Final: the same model would produce the same output again. Deltas already sent stay;
        // the run records the failure, not a partial text.
        coalescer.discard();
        return await fail({ code: 'model_output_too_large' satisfies RunErrorCode, message: outcome.message });
      }
      if (outcome.kind === 'aborted' || signal.aborted) {
        coalescer.discard();
        if (cancellation.signal.aborted) {
          log.info('run cancelled during the model call; nothing published');
          metrics.cancelled();
          await events.settle().catch(() => {
            // The run is cancelled: its partial events no longer matter.
          });
          return;
        }
        if (timeout.aborted) return await fail({ code: 'model_timeout' satisfies RunErrorCode, message: `the model step did not finish within ${payload.timeoutMs} ms` });
        metrics.failed('aborted');
        throw new ShuttingDownError('the worker is shutting down; the model step is handed back');
      }

      coalescer.flush();
      if (outcome.kind === 'failed') {
        const origin = payload.model.provider === 'openai-compatible' ? originOf(payload.model.baseURL) : undefined;
        const failure = classifyModelError(outcome.error, { maxRetryAfterMs: deps.maxRetryAfterMs, ...(origin ? { origin } : {}) });
        // Operators get the detail (a truncated response body, the network error); the run gets the sanitized message.
        if (failure.detail) log.warn({ code: failure.code, detail: failure.detail, retryable: failure.retryable }, 'model call failed');
        if (!failure.retryable) return await fail({ code: failure.code, message: failure.message });
        metrics.failed('transient');
        await events.settle();
        throw new AbideError('model_error', `transient model failure: ${failure.message}`, {
          retryable: true,
          cause: outcome.error,
          ...(failure.retryAfterMs === undefined ? {} : { retryAfterMs: failure.retryAfterMs }),
        });
      }

      // Every delta's PubAck before the result's publish (`finish`): the run's events stay in order.
      const { text, toolCalls, finishReason, usage } = outcome;
      const published = await finish(message, { ok: true, step, attempt, text, toolCalls, finishReason, usage }, events.settle());
      span.setAttributes({
        'abide.outcome': 'finished',
        'gen_ai.response.finish_reasons': [finishReason],
        'gen_ai.usage.input_tokens': usage.inputTokens,
        'gen_ai.usage.output_tokens': usage.outputTokens,
        'abide.tool_calls': toolCalls.length,
      });
      metrics.completed();
      log.info(
        { finishReason, toolCalls: toolCalls.length, usage, deltas, durationMs: Date.now() - startedAt, publishedAttempt: published.attempt },
        'model step finished; result published',
      );
    } finally {
      cancellation.release();
    }
  }

  return {
    /**
     * One delivery of a model step, in its `llm.step` span (issue 10): a child of the
     * orchestrator's publish of the request. Bounded attributes: model, step, attempt, outcome, usage.
     */
    handle(delivery) {
      const { payload } = delivery.message;
      const attributes = {
        ...stepDeliveryAttributes(delivery),
        'gen_ai.provider.name': payload.model.provider,
        'gen_ai.request.model': payload.model.provider === 'openai-compatible' ? payload.model.model : 'scripted',
      };
      return inSpan('llm.step', { attributes }, (span) => handleStep(delivery, span));
    },

    async onExhausted(delivery, error) {
      const { message } = delivery;
      const { runId, payload } = message;
      const stored = await deps.results.get(runId, payload.step);
      if (stored) {
        await publishResult(message, stored);
        return;
      }
      await finish(message, {
        ok: false,
        step: payload.step,
        attempt: delivery.deliveryCount,
        error: {
          code: 'delivery_exhausted' satisfies RunErrorCode,
          message: `the model step failed on all ${delivery.deliveryCount} deliveries; last error: ${error.message}`.slice(0, 4_000),
        },
      });
      metrics.failed('delivery_exhausted');
    },
  };
}
