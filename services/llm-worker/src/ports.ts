import type { LlmRequestBody, LlmResultPayload } from '@abide/shared';

/**
 * The small interfaces the step handler depends on. `nats-adapters.ts` implements them over
 * JetStream, KV and the object store; unit tests implement them in memory.
 */

/** Publishes a JSON message with a deterministic `Nats-Msg-Id`; resolves on its PubAck. */
export type BusPublisher = {
  publish(subject: string, value: unknown, msgId: string): Promise<void>;
};

/** `LLM_RESULTS`: finished model steps, `<runId>.<step>`. */
export type LlmResultStore = {
  get(runId: string, step: number): Promise<LlmResultPayload | undefined>;
  /**
   * Stores `result` unless the step already has one, and returns the one stored: the first
   * finished attempt wins, so what a redelivery republishes is what was published first.
   */
  saveFirst(runId: string, step: number, result: LlmResultPayload): Promise<LlmResultPayload>;
};

/** `PAYLOADS`: large model requests. */
export type RequestBodyReader = {
  /** The body stored under `name`, or undefined when it is gone. */
  read(name: string): Promise<LlmRequestBody | undefined>;
};

/** A run's cancellation, learned from `RUN_CONTROL`. */
export type { CancellationTracker } from '@abide/shared';

/** Counters of the step handler (Prometheus in `main.ts`, no-ops in tests). */
export type StepMetrics = {
  started(): void;
  completed(): void;
  failed(code: string): void;
  replayed(): void;
  cancelled(): void;
  /** One model call ended: `provider` is the model config's (a fixed set), `outcome` its `StreamStepOutcome` kind. */
  modelCall(provider: string, outcome: string, seconds: number): void;
};

export const noStepMetrics: StepMetrics = {
  started() {},
  completed() {},
  failed() {},
  replayed() {},
  cancelled() {},
  modelCall() {},
};
