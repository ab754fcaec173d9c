import { createHash, randomBytes } from 'node:crypto';

const crockford = '0123456789abcdefghjkmnpqrstvwxyz';

function base32(bytes: Uint8Array, length: number): string {
  let out = '';
  let bits = 0;
  let value = 0;
  for (const byte of bytes) {
    value = (value << 8) | byte;
    bits += 8;
    while (bits >= 5 && out.length < length) {
      out += crockford[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
    if (out.length >= length) break;
  }
  return out;
}

/**
 * Ids are `<prefix>_<time-ordered base32>`: safe as a NATS subject token, a KV key and a
 * MongoDB `_id`, and sortable by creation time.
 */
export function newId(prefix: string, now = Date.now()): string {
  const time = now.toString(32).padStart(10, '0');
  return `${prefix}_${time}${base32(randomBytes(10), 16)}`;
}

/** A run id derived from `(tenantId, Idempotency-Key)`: the same pair always gives the same run. */
export function runIdFromIdempotencyKey(tenantId: string, key: string): string {
  const digest = createHash('sha256').update(`${tenantId}\u0000${key}`).digest();
  return `run_k${base32(digest, 25)}`;
}

/** A stable hex SHA-256 of a JSON value with sorted keys (request hashes, approved-args hashes). */
export function hashJson(value: unknown): string {
  return createHash('sha256').update(canonicalJson(value)).digest('hex');
}

/** JSON with object keys sorted, so equal values hash equally. */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_key, inner: unknown) => {
    if (inner && typeof inner === 'object' && !Array.isArray(inner)) {
      return Object.fromEntries(Object.entries(inner as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
    }
    return inner;
  });
}

/** Abide mints every tool call's id: `s<step>c<index>` (DESIGN §4). */
export function toolCallIdFor(step: number, index: number): string {
  return `s${step}c${index}`;
}

/** The deterministic id of the `index`-th outbox entry of a run's transition `version` (also its `Nats-Msg-Id` and, for events, its `eventId`). */
export function outboxEntryId(runId: string, version: number, index: number): string {
  return `${runId}:${version}:${index}`;
}
