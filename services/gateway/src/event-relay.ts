import { busEventSchema, decodeJson, toClientEvent, type BusEvent, type ClientEvent, type Logger } from '@abide/shared';
import { createEventFilter } from './event-filter.ts';
import type { EventSource } from './ports.ts';

export type FollowOptions = {
  /** The `seq` of the last event the client holds; undefined replays from the run's first event. */
  after: number | undefined;
  /** Stop once this stream sequence has been read (a run that had ended when the reader started). */
  endAtSeq?: number | undefined;
  signal: AbortSignal;
};

/**
 * The one relay from `RUN_EVENTS` to clients, used by SSE and WebSocket: validates each message
 * (a bad one is skipped and logged), applies the forwarding rules of `event-filter.ts`, and
 * ends after the terminal event. Stopping the iteration (or aborting) removes the consumer.
 *
 * A resumed subscription reads the run from its first event and forwards only what lies after
 * the cursor: the rules then see what the client was shown before, so a resumed stream is
 * exactly the rest of an uninterrupted one (no repeated eventId, no delta of a step whose
 * `message.completed` the client already has, nothing if the terminal event is behind the cursor).
 * The price is reading the run's earlier events once per resume.
 */
export function createEventRelay(options: { source: EventSource; logger: Logger }) {
  const { source, logger } = options;

  function parse(runId: string, seq: number, data: Uint8Array): BusEvent | undefined {
    let value: unknown;
    try {
      value = decodeJson(data);
    } catch (error) {
      logger.warn({ runId, seq, err: error }, 'skipping an event that is not JSON');
      return undefined;
    }
    const parsed = busEventSchema.safeParse(value);
    if (!parsed.success) {
      logger.warn({ runId, seq, issues: parsed.error.issues.slice(0, 5) }, 'skipping an event that does not parse');
      return undefined;
    }
    const event = parsed.data as BusEvent;
    if (event.runId !== runId) {
      logger.warn({ runId, seq, eventRunId: event.runId }, "skipping an event of another run on this run's subject");
      return undefined;
    }
    return event;
  }

  return {
    async *follow(runId: string, followOptions: FollowOptions): AsyncGenerator<ClientEvent, void, undefined> {
      const { after, endAtSeq, signal } = followOptions;
      if (endAtSeq !== undefined && after !== undefined && endAtSeq <= after) return;
      const filter = createEventFilter();
      const cursor = after ?? 0;
      for await (const { seq, data } of source.read(runId, { after: undefined, signal })) {
        const event = parse(runId, seq, data);
        if (event && filter.accept(event) && seq > cursor) yield toClientEvent(event, seq);
        if (filter.finished || (endAtSeq !== undefined && seq >= endAtSeq)) return;
      }
    },
  };
}
export type EventRelay = ReturnType<typeof createEventRelay>;
