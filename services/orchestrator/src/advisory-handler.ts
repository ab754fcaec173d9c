import {
  decodeJson,
  envelopeSchema,
  ensureError,
  isNoMessageFound,
  streams,
  type Delivery,
  type JetStreamManager,
  type Logger,
  type MaxDeliveriesAdvisory,
  type Metrics,
} from '@abide/shared';
import { z } from 'zod';
import type { RunProcessor } from './run-processor.ts';

const anyEnvelope = envelopeSchema('any', z.unknown()).extend({ type: z.string() });
const watchedStreams: readonly string[] = [streams.runInbox, streams.llmRequests, streams.toolRequests, streams.approvals];

/**
 * A message that exhausted its deliveries must not vanish (DESIGN §2): the advisory names it,
 * the orchestrator reads it from its stream, fails the run it belongs to with
 * `delivery_exhausted`, and deletes it from the work queue.
 */
export function createAdvisoryHandler(deps: { jsm: JetStreamManager; processor: RunProcessor; logger: Logger; metrics?: Metrics }) {
  const { jsm, processor, logger } = deps;
  // Labelled by stream, a fixed set (`watchedStreams`); a redelivered advisory counts again (alerts use increase > 0).
  const exhausted = deps.metrics?.counter('deliveries_exhausted_total', 'Messages that exhausted their deliveries (max_deliver advisories handled), by stream', ['stream']);
  return async function handleAdvisory(delivery: Delivery<MaxDeliveriesAdvisory>): Promise<void> {
    const advisory = delivery.message;
    if (!watchedStreams.includes(advisory.stream)) return;
    const stored = await jsm.streams.getMessage(advisory.stream, { seq: advisory.stream_seq }).catch((error: unknown) => {
      // Gone already: a worker's own exhaustion path failed the run and removed it, or it was acked late.
      if (isNoMessageFound(error)) {
        logger.info({ stream: advisory.stream, seq: advisory.stream_seq }, 'exhausted message no longer in its stream');
        return null;
      }
      // Anything else (NATS unreachable, a timeout) is not "gone": rethrown, the advisory is redelivered.
      throw error;
    });
    if (!stored) return;
    exhausted?.inc({ stream: advisory.stream });
    const parsed = anyEnvelope.safeParse(decodeJson(stored.data));
    if (!parsed.success) {
      logger.error({ stream: advisory.stream, seq: advisory.stream_seq, subject: stored.subject }, 'exhausted message does not parse; deleting it');
    } else {
      const { runId, tenantId, type } = parsed.data;
      const error = { code: 'delivery_exhausted', message: `a ${type} message of the run failed ${advisory.deliveries} deliveries (${advisory.stream}/${advisory.consumer})` };
      const outcome = await processor.apply(runId, tenantId, { type: 'fail', error }, `exhausted:${advisory.stream}:${advisory.stream_seq}`);
      logger.error({ runId, tenantId, stream: advisory.stream, seq: advisory.stream_seq, outcome: outcome.kind }, 'message exhausted its deliveries; run failed');
    }
    if (advisory.stream === streams.approvals) return;
    // Window: the run is failed (committed above) but the message is still in the work queue. A
    // failed delete is logged and rethrown: the advisory is redelivered, `apply` is idempotent by
    // its key, and the delete is tried again. Already gone (acked meanwhile) is success.
    let deleted: boolean;
    try {
      deleted = await jsm.streams.deleteMessage(advisory.stream, advisory.stream_seq, false);
    } catch (error) {
      if (isNoMessageFound(error)) return;
      logger.error({ stream: advisory.stream, seq: advisory.stream_seq, err: ensureError(error) }, 'could not delete the exhausted message from its work queue; retrying');
      throw error;
    }
    if (!deleted) {
      logger.error({ stream: advisory.stream, seq: advisory.stream_seq }, 'JetStream refused to delete the exhausted message from its work queue; retrying');
      throw new Error(`could not delete ${advisory.stream}/${advisory.stream_seq}`);
    }
  };
}
