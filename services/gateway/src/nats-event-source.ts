import { streams, subjects, type JetStreamClient, type JetStreamManager, type Logger } from '@abide/shared';
import { DeliverPolicy } from '@nats-io/jetstream';
import type { EventSource } from './ports.ts';

/** Messages an ordered consumer buffers ahead of a slow reader (bounds the gateway's memory per subscription). */
const pullBatch = 64;

/**
 * Reads `RUN_EVENTS` with one ordered consumer per reader, filtered to `run.events.<runId>`
 * (DESIGN §2, §6). The consumer is ephemeral and is deleted when the reader stops.
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

    async *read(runId, { after, signal }) {
      signal.throwIfAborted();
      const consumer = await js.consumers.get(streams.runEvents, {
        filter_subjects: subjects.runEvents(runId),
        ...(after === undefined
          ? { deliver_policy: DeliverPolicy.All }
          : { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: after + 1 }),
      });
      const messages = await consumer.consume({ max_messages: pullBatch });
      const stop = () => messages.stop();
      signal.addEventListener('abort', stop, { once: true });
      try {
        for await (const message of messages) {
          yield { seq: message.seq, data: message.data };
        }
      } finally {
        signal.removeEventListener('abort', stop);
        messages.stop();
        await consumer.delete().catch((error: unknown) => {
          // Ephemeral and in memory: the server removes it after its inactivity threshold anyway.
          logger.debug({ runId, err: error }, 'could not delete ordered consumer');
        });
      }
    },
  };
}
