import { z } from 'zod';
import { eventFieldSchemas, type RunEventType } from './events.ts';

/**
 * Outbox entries are descriptors of what a committed transition implies (DESIGN §3): events,
 * work messages and side effects. They are published in order — events first, then work —
 * with the deterministic id `<runId>:<version>:<index>` as `Nats-Msg-Id` (and `eventId`).
 * A model request is rebuilt from the committed state when published.
 */
export const outboxEntrySchema = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('event'), type: z.enum(Object.keys(eventFieldSchemas) as [RunEventType, ...RunEventType[]]), payload: z.record(z.string(), z.unknown()) }),
  z.object({ kind: z.literal('inbox'), inboxKind: z.enum(['start', 'timer']), payload: z.record(z.string(), z.unknown()) }),
  z.object({ kind: z.literal('llm_request'), step: z.int().min(0) }),
  z.object({ kind: z.literal('tool_request'), toolCallId: z.string() }),
  z.object({ kind: z.literal('run_control'), reason: z.string().optional() }),
  /** Releases the run's conversation lock and, when it took one, its active-run slot (issue 8). */
  z.object({ kind: z.literal('release_conversation_lock'), conversationId: z.string(), runSlot: z.int().min(0).optional() }),
]);
export type OutboxEntry = z.infer<typeof outboxEntrySchema>;

/** An event entry, typed by its event type. */
export function eventEntry<Type extends RunEventType>(type: Type, payload: z.infer<(typeof eventFieldSchemas)[Type]>): OutboxEntry {
  return { kind: 'event', type, payload: payload as Record<string, unknown> };
}

/** Events first, then everything else, each group in its original order. */
export function orderOutbox(entries: readonly OutboxEntry[]): OutboxEntry[] {
  return [...entries.filter((entry) => entry.kind === 'event'), ...entries.filter((entry) => entry.kind !== 'event')];
}
