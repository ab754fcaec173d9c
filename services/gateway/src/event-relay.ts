import { ApiError, busEventSchema, decodeJson, sleep, toClientEvent, type BusEvent, type ClientEvent, type Logger } from '@abide/shared';
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
 *
 * A reader that fails or ends before the run's end (its consumer lost with a NATS node, a stall)
 * is replaced by a new one that starts after the last message read, on whichever node answers,
 * with the same forwarding state: the client sees every event once, in order. If no reader is
 * working again within `resumeWithinMs` of the failure, the iteration throws `503
 * subscription_interrupted` (an `error` frame or SSE `error` event): a subscription never ends
 * silently before its run's terminal event.
 */
export function createEventRelay(options: {
  source: EventSource;
  logger: Logger;
  /** @default 20_000 (an election takes seconds; a reader's stall is seen within 15 s) */
  resumeWithinMs?: number;
  /** First wait between attempts, doubled up to 2 s. @default 250 (at most a 20th of the bound) */
  retryBaseMs?: number;
  now?: () => number;
}) {
  const { source, logger } = options;
  const resumeWithinMs = options.resumeWithinMs ?? 20_000;
  const retryBaseMs = options.retryBaseMs ?? Math.min(250, resumeWithinMs / 20);
  const now = options.now ?? Date.now;

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
      /** The last stream sequence read (forwarded or not): a new reader starts after it. */
      let position: number | undefined;
      /** The last seq sent to the client: the cursor it resubscribes with. */
      let delivered = after;
      let failedAt: number | undefined;
      const onLive = () => {
        failedAt = undefined;
      };
      /** Failed attempts since the last message read (sets the wait before the next). */
      let attempt = 0;
      for (;;) {
        let failure: unknown;
        try {
          for await (const { seq, data } of source.read(runId, { after: position, signal, onLive })) {
            failedAt = undefined;
            attempt = 0;
            position = seq;
            const event = parse(runId, seq, data);
            if (event && filter.accept(event) && seq > cursor) {
              delivered = seq;
              yield toClientEvent(event, seq);
            }
            if (filter.finished || (endAtSeq !== undefined && seq >= endAtSeq)) return;
          }
        } catch (error) {
          failure = error;
        }
        if (signal.aborted) return;
        // The reader failed or ended before the run's end: resume after `position`, within the bound.
        failedAt ??= now();
        const waited = now() - failedAt;
        if (waited >= resumeWithinMs) {
          logger.warn({ runId, position, err: failure }, 'run events reader could not resume; telling the client to resubscribe');
          throw new ApiError(
            'subscription_interrupted',
            `the events of run ${runId} could not be read for ${Math.round(waited / 1000)} s; resubscribe with after=${delivered ?? 'none (from the first event)'}`,
            { cause: failure, headers: { 'retry-after': '1' } },
          );
        }
        logger.info({ runId, position, attempt, err: failure }, 'run events reader lost; resuming after the last message read');
        try {
          await sleep(Math.min(retryBaseMs * 2 ** attempt, 2_000, Math.max(0, resumeWithinMs - waited)), signal);
          attempt += 1;
        } catch {
          // Aborted while waiting: the subscriber left, nothing to tell it.
          return;
        }
      }
    },
  };
}
export type EventRelay = ReturnType<typeof createEventRelay>;
