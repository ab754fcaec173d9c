import { z } from 'zod';

/** A run id: a single NATS subject token and a valid KV key. */
export const runIdSchema = z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'must match [A-Za-z0-9_-]{1,64}');
/** A tenant id: a single NATS subject token. */
export const tenantIdSchema = z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'must match [A-Za-z0-9_-]{1,64}');
/** A tool name (DESIGN §8), also a subject token of `tool.request.<toolName>`. */
export const toolNameSchema = z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'must match [A-Za-z0-9_-]{1,64}');
export const toolCallIdSchema = z.string().regex(/^s\d+c\d+$/, 'must look like s<step>c<index>');
export const isoDateSchema = z.iso.datetime({ offset: true });

/**
 * Every message on the bus: `{ v: 1, id, type, runId, tenantId, ts, payload }` (DESIGN §2).
 * `id` is deterministic and doubles as the `Nats-Msg-Id`.
 */
export function envelopeSchema<const Type extends string, Payload extends z.ZodType>(type: Type, payload: Payload) {
  return z.looseObject({
    v: z.literal(1),
    id: z.string().min(1).max(256),
    type: z.literal(type),
    runId: runIdSchema,
    tenantId: tenantIdSchema,
    ts: isoDateSchema,
    payload,
  });
}

export type Envelope<Type extends string, Payload> = {
  v: 1;
  id: string;
  type: Type;
  runId: string;
  tenantId: string;
  ts: string;
  payload: Payload;
};

export function makeEnvelope<Type extends string, Payload>(
  type: Type,
  fields: { id: string; runId: string; tenantId: string; ts?: string },
  payload: Payload,
): Envelope<Type, Payload> {
  return { v: 1, id: fields.id, type, runId: fields.runId, tenantId: fields.tenantId, ts: fields.ts ?? new Date().toISOString(), payload };
}
