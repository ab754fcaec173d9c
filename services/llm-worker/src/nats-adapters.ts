import {
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

/** JetStream API codes for "wrong last sequence": the key exists, `create` lost the race. */
const wrongLastSequenceCodes: readonly unknown[] = [10071, 10164];

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
      try {
        await kv.create(kvKeys.llmResult(runId, step), encodeJson(result));
        return result;
      } catch (error) {
        const exists = wrongLastSequenceCodes.includes((error as { code?: unknown }).code) || /wrong last sequence/i.test(String((error as Error).message));
        if (!exists) throw error;
        const stored = await get(runId, step);
        if (!stored) throw error;
        return stored;
      }
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
