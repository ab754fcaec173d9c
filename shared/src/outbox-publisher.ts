import type { KV } from '@nats-io/kv';
import type { ObjectStore } from '@nats-io/obj';
import type { JetStreamClient, PubAck } from '@nats-io/jetstream';
import { makeEnvelope } from './envelope.ts';
import { makeBusEvent } from './events.ts';
import { outboxEntryId } from './ids.ts';
import { encodeJson } from './jetstream.ts';
import type { Collections } from './mongo.ts';
import { kvKeys, lockIds, subjects } from './names.ts';
import { buildLlmRequest, buildToolRequest } from './requests.ts';
import type { TransitionDocument } from './run-store.ts';

export type OutboxPublisherDeps = {
  js: JetStreamClient;
  /** Needed for `run_control` entries (orchestrator). */
  runControl?: KV;
  /** Needed for `release_conversation_lock` entries (orchestrator). */
  collections?: Collections;
  /** Large model requests go here (orchestrator). */
  payloads?: ObjectStore;
  /** Messages larger than this go through the payload store. */
  maxPayloadBytes?: number;
};

/**
 * Publishes a committed transition's outbox in order, each publish awaited for its PubAck with
 * the deterministic id `<runId>:<version>:<index>` (a repeat inside the duplicate window is
 * dropped by the server). Events are published first and pipelined: all are sent, then all
 * PubAcks awaited, which keeps their order (one connection) and costs one round trip.
 * Returns the stream sequence of the last event, if any.
 */
export async function publishOutbox(deps: OutboxPublisherDeps, transition: TransitionDocument): Promise<number | null> {
  const { js } = deps;
  const { runId, tenantId, version, state } = transition;
  const ts = transition.at.toISOString();
  let lastEventSeq: number | null = null;
  const pendingEvents: Promise<PubAck>[] = [];
  let index = 0;
  for (const entry of transition.outbox) {
    const id = outboxEntryId(runId, version, index);
    index += 1;
    if (entry.kind === 'event') {
      const event = makeBusEvent(entry.type, { eventId: id, runId, tenantId, ts }, entry.payload as never);
      pendingEvents.push(js.publish(subjects.runEvents(runId), encodeJson(event), { msgID: id }));
      continue;
    }
    if (pendingEvents.length) {
      const acks = await Promise.all(pendingEvents.splice(0));
      lastEventSeq = acks.at(-1)!.seq;
    }
    switch (entry.kind) {
      case 'inbox': {
        const message = makeEnvelope(entry.inboxKind, { id, runId, tenantId, ts }, entry.payload);
        await js.publish(subjects.runInbox(runId, entry.inboxKind), encodeJson(message), { msgID: id });
        break;
      }
      case 'llm_request': {
        const payload = buildLlmRequest(state, entry.step);
        let data = encodeJson(makeEnvelope('llm.request', { id, runId, tenantId, ts }, payload));
        if (deps.payloads && deps.maxPayloadBytes && data.byteLength > deps.maxPayloadBytes - 4_096) {
          // Too large for one message: the body goes to the object store, the message carries a reference.
          const name = `${runId}/${entry.step}`;
          await deps.payloads.putBlob({ name }, encodeJson(payload.body));
          const { body: _body, ...withoutBody } = payload;
          data = encodeJson(makeEnvelope('llm.request', { id, runId, tenantId, ts }, { ...withoutBody, bodyRef: { store: 'PAYLOADS', name } }));
        }
        await js.publish(subjects.llmRequest(runId), data, { msgID: id });
        break;
      }
      case 'tool_request': {
        const payload = buildToolRequest(state, entry.toolCallId);
        await js.publish(subjects.toolRequest(payload.tool.name), encodeJson(makeEnvelope('tool.request', { id, runId, tenantId, ts }, payload)), { msgID: id });
        break;
      }
      case 'run_control': {
        if (!deps.runControl) throw new Error('outbox entry run_control needs the RUN_CONTROL bucket');
        await deps.runControl.put(kvKeys.runControl(runId), encodeJson({ cancelled: true, at: ts, ...(entry.reason ? { reason: entry.reason } : {}) }));
        break;
      }
      case 'release_conversation_lock': {
        if (!deps.collections) throw new Error('outbox entry release_conversation_lock needs MongoDB');
        // Only this run's locks: a newer run may hold the conversation (or the slot) by now.
        // A crash between the two deletes republishes the whole outbox: both are idempotent.
        await deps.collections.conversationLocks.deleteOne({ _id: lockIds.conversation(tenantId, entry.conversationId), runId });
        if (entry.runSlot !== undefined) await deps.collections.conversationLocks.deleteOne({ _id: lockIds.runSlot(tenantId, entry.runSlot), runId });
        break;
      }
    }
  }
  if (pendingEvents.length) {
    const acks = await Promise.all(pendingEvents);
    lastEventSeq = acks.at(-1)!.seq;
  }
  return lastEventSeq;
}
