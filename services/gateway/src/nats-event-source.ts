import { streams, subjects, type JetStreamClient, type JetStreamManager, type Logger } from '@abide/shared';
import { DeliverPolicy } from '@nats-io/jetstream';
import type { EventSource } from './ports.ts';

/** Messages an ordered consumer buffers ahead of a slow reader (bounds the gateway's memory per subscription). */
const pullBatch = 64;
/** The server's idle heartbeat on a reader's pull: proof the consumer still exists while a run is quiet. */
const heartbeatMs = 2_500;
/** A reader with no message and no heartbeat for this long (three missed) is stalled: its node is gone or frozen. */
const stalledAfterMs = 3 * heartbeatMs;

/** A reader whose consumer stopped answering; the relay replaces it with a new one. */
export class ReaderStalledError extends Error {
  override readonly name = 'ReaderStalledError';
}

/**
 * Reads `RUN_EVENTS` with one ordered consumer per reader, filtered to `run.events.<runId>`
 * (DESIGN §2, §6). The consumer is ephemeral and is deleted when the reader stops.
 *
 * An ordered consumer is R1 and in memory, on one node: when that node dies the library tries
 * to recreate it, but its iterator can also end without an error (connection closed, its
 * subscription drained) or wait for heartbeats that never come (a frozen node). This reader
 * turns the last into an error after `stalledAfterMs`; the relay (`event-relay.ts`) resumes
 * after any end that is not the run's.
 */
export function createNatsEventSource(options: { js: JetStreamClient; jsm: JetStreamManager; logger: Logger }): EventSource {
  const { js, jsm, logger } = options;
  return {
    async firstSequence() {
      const info = await jsm.streams.info(streams.runEvents);
      return info.state.messages === 0 ? 0 : info.state.first_seq;
    },

    async lastSequenceOf(runId) {
      const message = await jsm.streams.getMessage(streams.runEvents, { last_by_subj: subjects.runEvents(runId) });
      return message ? message.seq : null;
    },

    async *read(runId, { after, signal, onLive }) {
      signal.throwIfAborted();
      const consumer = await js.consumers.get(streams.runEvents, {
        filter_subjects: subjects.runEvents(runId),
        ...(after === undefined
          ? { deliver_policy: DeliverPolicy.All }
          : { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: after + 1 }),
      });
      const messages = await consumer.consume({ max_messages: pullBatch, idle_heartbeat: heartbeatMs, expires: 4 * heartbeatMs });
      let lastSignOfLife = Date.now();
      const alive = () => {
        lastSignOfLife = Date.now();
        onLive?.();
      };
      void (async () => {
        for await (const status of messages.status()) {
          if (status.type === 'heartbeat' || status.type === 'ordered_consumer_recreated') alive();
        }
      })();
      const watchdog = setInterval(() => {
        if (Date.now() - lastSignOfLife > stalledAfterMs) {
          messages.stop(new ReaderStalledError(`no message or heartbeat for ${stalledAfterMs} ms`));
        }
      }, heartbeatMs);
      const stop = () => messages.stop();
      signal.addEventListener('abort', stop, { once: true });
      // Aborted while the consumer was being created: the listener above will never fire.
      if (signal.aborted) stop();
      try {
        for await (const message of messages) {
          alive();
          yield { seq: message.seq, data: message.data };
        }
      } finally {
        clearInterval(watchdog);
        signal.removeEventListener('abort', stop);
        messages.stop();
        // Not awaited: with its node gone the request would hold up the resume for its timeout.
        void consumer.delete().catch((error: unknown) => {
          // Ephemeral and in memory: the server removes it after its inactivity threshold anyway.
          logger.debug({ runId, err: error }, 'could not delete ordered consumer');
        });
      }
    },
  };
}
