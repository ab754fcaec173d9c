import { ensureError } from '@abide/shared';
import type { BusPublisher } from './ports.ts';

export type PublishPipeline = {
  /**
   * Starts a publish without waiting for its PubAck (order is kept: one connection). The promise
   * resolves once the PubAck arrived or the publish failed (never rejects; `settle` reports failures).
   */
  send(subject: string, value: unknown, msgId: string): Promise<void>;
  /** Resolves once fewer than `window` PubAcks are outstanding. */
  belowWindow(): Promise<void>;
  /** Waits for every PubAck; throws the first failure. */
  settle(): Promise<void>;
};

/**
 * Pipelined publishing for events (deltas): each publish is sent at once and its PubAck awaited
 * later, so streaming costs no round trip per delta; `window` bounds the PubAcks outstanding.
 * A failed publish is remembered (never an unhandled rejection) and thrown by `settle`.
 */
export function createPublishPipeline(publisher: BusPublisher, options: { window?: number } = {}): PublishPipeline {
  const window = options.window ?? 64;
  const pending = new Set<Promise<void>>();
  let failure: Error | undefined;

  return {
    send(subject, value, msgId) {
      const publish = publisher.publish(subject, value, msgId).catch((error: unknown) => {
        // Kept for `settle`, which fails the step: the events of this attempt are incomplete.
        failure ??= ensureError(error);
      });
      pending.add(publish);
      void publish.finally(() => pending.delete(publish));
      return publish;
    },
    async belowWindow() {
      while (pending.size >= window) await Promise.race(pending);
    },
    async settle() {
      await Promise.all(pending);
      if (failure) throw failure;
    },
  };
}
