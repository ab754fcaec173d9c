import {
  createOrRead,
  decodeJson,
  encodeJson,
  kvKeys,
  llmRequestBodySchema,
  llmResultRecordSchema,
  publishJson,
  type JetStreamClient,
  type KV,
  type LlmResultPayload,
  type ObjectStore,
} from '@abide/shared';
import type { BusPublisher, LlmResultStore, RequestBodyReader } from './ports.ts';

/** Publishes over JetStream, each publish awaiting its PubAck (`Nats-Msg-Id` dedupes repeats). */
export function createJetStreamPublisher(js: JetStreamClient): BusPublisher {
  return {
    async publish(subject, value, msgId) {
      await publishJson(js, subject, value, msgId);
    },
  };
}

/** `LLM_RESULTS` over a KV bucket; values are `llmResultRecordSchema` JSON. */
export function createLlmResultStore(kv: KV): LlmResultStore {
  async function get(runId: string, step: number): Promise<LlmResultPayload | undefined> {
    const entry = await kv.get(kvKeys.llmResult(runId, step));
    if (!entry || entry.operation !== 'PUT') return undefined;
    // A record that does not parse is not silently replaced: the error retries the message.
    return llmResultRecordSchema.parse(decodeJson(entry.value));
  }
  return {
    get,
    async saveFirst(runId, step, result) {
      const stored = await createOrRead(kv, kvKeys.llmResult(runId, step), result, llmResultRecordSchema);
      if (stored.created) return result;
      // A record that does not parse is not silently replaced: the error retries the message.
      if ('invalid' in stored.existing) throw stored.existing.error;
      return stored.existing.value;
    },
  };
}

/** Reads large model requests from the `PAYLOADS` object store. */
export function createRequestBodyReader(store: ObjectStore): RequestBodyReader {
  return {
    async read(name) {
      const data = await store.getBlob(name);
      if (!data) return undefined;
      return llmRequestBodySchema.parse(decodeJson(data));
    },
  };
}
