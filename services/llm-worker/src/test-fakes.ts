/** In-memory fakes of the handler's ports, for unit tests. */
import {
  createLogger,
  SecretNotFoundError,
  type TenantSecrets,
  llmRequestMessageSchema,
  makeEnvelope,
  type Delivery,
  type LlmRequestBody,
  type LlmRequestMessage,
  type LlmRequestPayload,
  type LlmResultPayload,
} from '@abide/shared';
import type { BusPublisher, CancellationTracker, LlmResultStore, RequestBodyReader } from './ports.ts';

export const silentLogger = createLogger('llm-worker-test', 'silent');

export type PublishedMessage = { subject: string; value: Record<string, unknown> & { id: string; type: string; payload: Record<string, unknown> }; msgId: string };

export function createFakePublisher(options: { failOn?: (subject: string) => boolean } = {}) {
  const published: PublishedMessage[] = [];
  const publisher: BusPublisher = {
    async publish(subject, value, msgId) {
      await Promise.resolve();
      if (options.failOn?.(subject)) throw new Error(`publish to ${subject} timed out`);
      published.push({ subject, value: structuredClone(value) as PublishedMessage['value'], msgId });
    },
  };
  return { publisher, published };
}

export function createFakeResultStore() {
  const entries = new Map<string, LlmResultPayload>();
  const results: LlmResultStore = {
    async get(runId, step) {
      return entries.get(`${runId}.${step}`);
    },
    async saveFirst(runId, step, result) {
      const key = `${runId}.${step}`;
      if (!entries.has(key)) entries.set(key, structuredClone(result));
      return entries.get(key)!;
    },
  };
  return { results, entries };
}

export function createFakeBodyReader(objects: Record<string, LlmRequestBody> = {}): RequestBodyReader {
  return { read: async (name) => objects[name] };
}

export function createFakeCancellations() {
  const cancelled = new Set<string>();
  const controllers = new Map<string, Set<AbortController>>();
  const tracker: CancellationTracker = {
    track(runId) {
      const controller = new AbortController();
      if (!controllers.has(runId)) controllers.set(runId, new Set());
      controllers.get(runId)!.add(controller);
      return { signal: controller.signal, release: () => controllers.get(runId)?.delete(controller) };
    },
    isCancelled: async (runId) => cancelled.has(runId),
  };
  return {
    tracker,
    cancel(runId: string) {
      cancelled.add(runId);
      for (const controller of controllers.get(runId) ?? []) controller.abort(new Error('cancelled'));
    },
    tracked: (runId: string) => controllers.get(runId)?.size ?? 0,
  };
}

export function llmRequest(payload: Partial<LlmRequestPayload> & Pick<LlmRequestPayload, 'model'>, runId = 'run_1'): LlmRequestMessage {
  const full: LlmRequestPayload = {
    step: 0,
    tools: [],
    timeoutMs: 60_000,
    body: { system: 'You are terse.', messages: [{ role: 'user', content: 'hello' }] },
    ...payload,
  };
  if (payload.bodyRef) delete full.body;
  return llmRequestMessageSchema.parse(makeEnvelope('llm.request', { id: `${runId}:2:0`, runId, tenantId: 'tenant_a' }, full));
}

export function deliveryOf(message: LlmRequestMessage, options: { deliveryCount?: number; maxDeliver?: number; signal?: AbortSignal } = {}): Delivery<LlmRequestMessage> {
  const deliveryCount = options.deliveryCount ?? 1;
  return {
    message,
    subject: `llm.request.${message.runId}`,
    deliveryCount,
    isLastDelivery: deliveryCount >= (options.maxDeliver ?? 6),
    streamSequence: 1,
    signal: options.signal ?? new AbortController().signal,
    working() {},
  };
}

/** Secrets per tenant, as `TENANT_SECRETS_DIR` would hold them. */
export function createFakeSecrets(byTenant: Record<string, Record<string, string>> = {}): TenantSecrets {
  return {
    async read(tenantId, name) {
      const value = byTenant[tenantId]?.[name];
      if (value === undefined) throw new SecretNotFoundError(name);
      return value;
    },
  };
}
