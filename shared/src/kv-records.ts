import type { z } from 'zod';
import { ensureError } from './errors.ts';
import { decodeJson, encodeJson } from './jetstream.ts';

/**
 * JSON records in JetStream KV, and the one first-writer-wins helper every service uses for
 * them (DESIGN §3: a KV `create` fails when the key holds a value, so of two writers the first
 * one's value stands and the second reads it): the tool-worker's result cache and started
 * markers, the llm-worker's step results, the approval ledger (gateway and orchestrator).
 */

/** What is needed of a JetStream KV entry (a `KvEntry` of nats.js fits). */
export type KvEntryLike = { value: Uint8Array; revision: number; operation: 'PUT' | 'DEL' | 'PURGE' };

/** What is needed of a JetStream KV bucket (a nats.js `KV` fits); tests pass an in-memory fake. */
export type KeyValueBucket = {
  get(key: string): Promise<KvEntryLike | null>;
  /** Fails if the key holds a value. */
  create(key: string, data: Uint8Array): Promise<number>;
  /** Compare-and-swap: fails unless the key's last revision is `revision`. */
  update(key: string, data: Uint8Array, revision: number): Promise<number>;
  put(key: string, data: Uint8Array): Promise<number>;
  delete(key: string): Promise<void>;
};

export type StoredRecord<Value> = { value: Value; revision: number };

/**
 * A JSON record of a KV bucket, validated with `schema`. A value that does not parse is reported
 * as `invalid` (with its revision), never passed on as if it were valid.
 */
export async function readRecord<Schema extends z.ZodType>(
  bucket: Pick<KeyValueBucket, 'get'>,
  key: string,
  schema: Schema,
): Promise<StoredRecord<z.infer<Schema>> | { invalid: true; revision: number; error: Error } | undefined> {
  const entry = await bucket.get(key);
  if (!entry || entry.operation !== 'PUT') return undefined;
  try {
    return { value: schema.parse(decodeJson(entry.value)), revision: entry.revision };
  } catch (error) {
    return { invalid: true, revision: entry.revision, error: ensureError(error) };
  }
}

/**
 * Creates `key` with `value` unless it holds a value already. Returns what the key holds after
 * the call: ours (`created: true`) or the earlier one. A failed create whose key turns out to be
 * empty (a network error, or the key deleted in between) is retried a few times, then thrown.
 */
export async function createOrRead<Schema extends z.ZodType>(
  bucket: Pick<KeyValueBucket, 'get' | 'create'>,
  key: string,
  value: z.infer<Schema>,
  schema: Schema,
): Promise<
  | { created: true; revision: number }
  | { created: false; existing: StoredRecord<z.infer<Schema>> | { invalid: true; revision: number; error: Error } }
> {
  let lastError: unknown;
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return { created: true, revision: await bucket.create(key, encodeJson(value)) };
    } catch (error) {
      // Either the key holds a value (the usual case, read below) or the create failed; kept to rethrow.
      lastError = error;
    }
    const existing = await readRecord(bucket, key, schema);
    if (existing) return { created: false, existing };
  }
  throw lastError;
}
