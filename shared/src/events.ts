import { z } from 'zod';
import { envelopeSchema, runIdSchema, tenantIdSchema, isoDateSchema } from './envelope.ts';
import { errorInfoSchema, usageSchema } from './run-state.ts';

/**
 * Run events (DESIGN §6). On the bus each event is an envelope on `run.events.<runId>` whose
 * `id` is the event's deterministic `eventId`, `type` the event type and `payload` its fields;
 * clients see `{ seq, eventId, runId, type, ts, ...fields }` with `seq` the stream sequence.
 */
export const eventFieldSchemas = {
  'run.started': z.object({ agentId: z.string(), agentVersion: z.int(), conversationId: z.string() }),
  'llm.step.started': z.object({ step: z.int().min(0), attempt: z.int().min(1) }),
  'message.delta': z.object({ step: z.int().min(0), attempt: z.int().min(1), text: z.string() }),
  'message.completed': z.object({ step: z.int().min(0), attempt: z.int().min(1), text: z.string() }),
  'tool.call': z.object({ step: z.int().min(0), toolCallId: z.string(), toolName: z.string(), args: z.unknown(), needsApproval: z.boolean() }),
  'approval.requested': z.object({ toolCallId: z.string(), toolName: z.string(), args: z.unknown(), expiresAt: z.string() }),
  'approval.resolved': z.object({
    toolCallId: z.string(),
    approved: z.boolean(),
    reason: z.string().optional(),
    source: z.string(),
    decidedBy: z.string().optional(),
  }),
  'tool.result': z.object({ toolCallId: z.string(), toolName: z.string(), result: z.unknown().optional(), error: errorInfoSchema.optional() }),
  'run.suspended': z.object({ pendingApprovals: z.array(z.string()) }),
  'run.resumed': z.object({}),
  'run.completed': z.object({ output: z.string(), usage: usageSchema }),
  'run.failed': z.object({ error: errorInfoSchema }),
  'run.cancelled': z.object({ reason: z.string().optional() }),
} as const;

export type RunEventType = keyof typeof eventFieldSchemas;
export const runEventTypes = Object.keys(eventFieldSchemas) as RunEventType[];
export const terminalEventTypes = ['run.completed', 'run.failed', 'run.cancelled'] as const satisfies readonly RunEventType[];
export const isTerminalEventType = (type: string) => (terminalEventTypes as readonly string[]).includes(type);

export type RunEventFields<Type extends RunEventType> = z.infer<(typeof eventFieldSchemas)[Type]>;

/** The envelope of an event on `run.events.<runId>`. */
export const busEventSchema = z.discriminatedUnion(
  'type',
  runEventTypes.map((type) => envelopeSchema(type, eventFieldSchemas[type])) as unknown as [
    ReturnType<typeof envelopeSchema<RunEventType, z.ZodType>>,
  ],
);
export type BusEvent = { [Type in RunEventType]: { v: 1; id: string; type: Type; runId: string; tenantId: string; ts: string; payload: RunEventFields<Type> } }[RunEventType];

/** An event as a client sees it. */
export const clientEventSchema = z.looseObject({
  seq: z.int().min(1),
  eventId: z.string(),
  runId: runIdSchema,
  type: z.enum(runEventTypes as [RunEventType, ...RunEventType[]]),
  ts: isoDateSchema,
});
export type ClientEvent = { seq: number; eventId: string; runId: string; type: RunEventType; ts: string } & Record<string, unknown>;

/** What a client sees for the bus event `event` stored at stream sequence `seq`. */
export function toClientEvent(event: BusEvent, seq: number): ClientEvent {
  return { seq, eventId: event.id, runId: event.runId, type: event.type, ts: event.ts, ...(event.payload as Record<string, unknown>) };
}

/** Builds the bus envelope of an event. */
export function makeBusEvent<Type extends RunEventType>(
  type: Type,
  fields: { eventId: string; runId: string; tenantId: string; ts?: string },
  payload: RunEventFields<Type>,
): BusEvent {
  return { v: 1, id: fields.eventId, type, runId: fields.runId, tenantId: fields.tenantId, ts: fields.ts ?? new Date().toISOString(), payload } as BusEvent;
}

export { tenantIdSchema };
