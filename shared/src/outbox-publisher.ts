import type { KV } from '@nats-io/kv';
import type { ObjectStore } from '@nats-io/obj';
import type { JetStreamClient, PubAck } from '@nats-io/jetstream';
import { recordConversationEnd } from './conversation-heads.ts';
import { makeEnvelope } from './envelope.ts';
import { isTerminalEventType, makeBusEvent } from './events.ts';
import { outboxEntryId } from './ids.ts';
import { encodeJson, eventMaxMessageBytes, publishRetrying } from './jetstream.ts';
import type { Collections } from './mongo.ts';
import { kvKeys, lockIds, subjects } from './names.ts';
import type { InitialTransition } from './messages.ts';
import type { OutboxEntry } from './outbox.ts';
import { buildLlmRequest, buildToolRequest } from './requests.ts';
import type { ErrorInfo } from './run-state.ts';
import type { TransitionDocument } from './run-store.ts';
import { contextFromTraceparent } from './tracing.ts';

/** Room left under the server's `max_payload` for NATS headers (`Nats-Msg-Id`, trace context). */
export const messageHeaderRoomBytes = 4_096;

/**
 * The largest `start` message that carries version 1 of its run (`initial`, messages.ts): a
 * larger one (a long conversation history, a large agent) goes without it, and the orchestrator
 * reads version 1 back as before. Bounded so the copy never costs the bus much.
 */
export const startWithStateMaxBytes = 64 * 1_024;

export type OutboxPublisherDeps = {
  js: JetStreamClient;
  /** Needed for `run_control` entries (orchestrator). */
  runControl?: KV;
  /** Needed for `release_conversation_lock` entries (orchestrator). */
  collections?: Collections;
  /** Large model requests go here (orchestrator). */
  payloads?: ObjectStore;
  /** The server's `max_payload` (from its INFO); a message larger than this minus header room cannot be published. */
  maxPayloadBytes?: number;
  /**
   * The largest model request body stored in `PAYLOADS` (`LLM_REQUEST_MAX_BYTES`): a hard cap,
   * so nothing unbounded is stored. @default 16 MiB
   */
  maxModelRequestBytes?: number;
};

type Limits = { message: number; event: number; modelRequest: number };

function limitsOf(deps: OutboxPublisherDeps): Limits {
  const message = (deps.maxPayloadBytes ?? 1_048_576) - messageHeaderRoomBytes;
  return { message, event: Math.min(message, eventMaxMessageBytes), modelRequest: deps.maxModelRequestBytes ?? 16 * 1_048_576 };
}

type Encoded =
  | { kind: 'event'; subject: string; data: Uint8Array }
  | { kind: 'message'; subject: string; data: Uint8Array }
  /** A model request: inline in `data`, or (too large for one message) its body goes to `PAYLOADS` and `data` carries a reference. */
  | { kind: 'llm_request'; subject: string; data: Uint8Array; blob?: { name: string; data: Uint8Array } };

/**
 * The message an outbox entry publishes, exactly as `publishOutbox` sends it (the size check
 * before a commit and the publish after it encode the same bytes). Null for entries that are
 * not messages (KV and MongoDB effects).
 */
function encodeEntry(deps: OutboxPublisherDeps, transition: TransitionDocument, entry: OutboxEntry, index: number, limits: Limits): Encoded | null {
  const { runId, tenantId, version, state } = transition;
  const ts = transition.at.toISOString();
  const id = outboxEntryId(runId, version, index);
  switch (entry.kind) {
    case 'event': {
      const event = makeBusEvent(entry.type, { eventId: id, runId, tenantId, ts }, entry.payload as never);
      return { kind: 'event', subject: subjects.runEvents(runId), data: encodeJson(event) };
    }
    case 'inbox': {
      const subject = subjects.runInbox(runId, entry.inboxKind);
      if (entry.inboxKind === 'start' && version === 1) {
        // A new run's `start` carries version 1 itself (committed before any publish of it), so
        // the orchestrator commits version 2 without reading it back (docs/decisions.md,
        // "the start carries version 1"); unless that makes the message large.
        const initial: InitialTransition = { at: ts, cause: transition.cause, state, ...(transition.traceparent ? { traceparent: transition.traceparent } : {}) };
        const data = encodeJson(makeEnvelope(entry.inboxKind, { id, runId, tenantId, ts }, { ...entry.payload, initial }));
        if (data.byteLength <= startWithStateMaxBytes) return { kind: 'message', subject, data };
      }
      return { kind: 'message', subject, data: encodeJson(makeEnvelope(entry.inboxKind, { id, runId, tenantId, ts }, entry.payload)) };
    }
    case 'llm_request': {
      const payload = buildLlmRequest(state, entry.step);
      const data = encodeJson(makeEnvelope('llm.request', { id, runId, tenantId, ts }, payload));
      if (data.byteLength <= limits.message || !deps.payloads) return { kind: 'llm_request', subject: subjects.llmRequest(runId), data };
      // Too large for one message: the body goes to the object store, the message carries a reference.
      const name = `${runId}/${entry.step}`;
      const { body, ...withoutBody } = payload;
      const reference = encodeJson(makeEnvelope('llm.request', { id, runId, tenantId, ts }, { ...withoutBody, bodyRef: { store: 'PAYLOADS', name } }));
      return { kind: 'llm_request', subject: subjects.llmRequest(runId), data: reference, blob: { name, data: encodeJson(body) } };
    }
    case 'tool_request': {
      const payload = buildToolRequest(state, entry.toolCallId);
      return { kind: 'message', subject: subjects.toolRequest(payload.tool.name), data: encodeJson(makeEnvelope('tool.request', { id, runId, tenantId, ts }, payload)) };
    }
    case 'run_control':
    case 'release_conversation_lock':
      return null;
  }
}

function describeEntry(entry: OutboxEntry): string {
  switch (entry.kind) {
    case 'event':
      return `the ${entry.type} event`;
    case 'llm_request':
      return `the model request of step ${entry.step}`;
    case 'tool_request':
      return `the tool request of ${entry.toolCallId}`;
    case 'inbox':
      return `the ${entry.inboxKind} message`;
    default:
      return entry.kind;
  }
}

/**
 * A transition's outbox as its messages, encoded once for both the size check before its commit
 * and its publish after: a model request carries the whole conversation, so building and encoding
 * it twice per step cost twice what grows with the run. Valid for the limits it was encoded under
 * (`publishOutbox` encodes again if the server's `max_payload` changed since, after a reconnect).
 */
export type EncodedOutbox = { readonly limits: Limits; readonly entries: readonly (Encoded | null)[] };

export function encodeOutbox(deps: OutboxPublisherDeps, transition: TransitionDocument): EncodedOutbox {
  const limits = limitsOf(deps);
  return { limits, entries: transition.outbox.map((entry, index) => encodeEntry(deps, transition, entry, index, limits)) };
}

/**
 * The first message of `transition`'s outbox that could never be published (larger than the
 * server's `max_payload` minus header room, an event over `RUN_EVENTS`' `max_msg_size`, a model
 * request body over `LLM_REQUEST_MAX_BYTES`), as the error its run fails with; null if all fit.
 * Checked before a commit, so nothing is committed that can never publish (issue 8, finding 5).
 * `prepared`: the outbox as `encodeOutbox` encoded it (then handed to `publishOutbox`).
 */
export function findUnpublishableEntry(deps: OutboxPublisherDeps, transition: TransitionDocument, prepared: EncodedOutbox = encodeOutbox(deps, transition)): ErrorInfo | null {
  const { limits } = prepared;
  for (const [index, entry] of transition.outbox.entries()) {
    const encoded = prepared.entries[index] ?? null;
    if (!encoded) continue;
    const limit = encoded.kind === 'event' ? limits.event : limits.message;
    if (encoded.data.byteLength > limit) {
      return { code: 'message_too_large', message: `${describeEntry(entry)} is ${encoded.data.byteLength} bytes, more than the ${limit} bytes one message may carry` };
    }
    if (encoded.kind === 'llm_request' && encoded.blob && encoded.blob.data.byteLength > limits.modelRequest) {
      return { code: 'message_too_large', message: `${describeEntry(entry)} is ${encoded.blob.data.byteLength} bytes, more than the ${limits.modelRequest} bytes a model request may have` };
    }
  }
  return null;
}

/**
 * Publishes a committed transition's outbox in order, each publish awaited for its PubAck with
 * the deterministic id `<runId>:<version>:<index>` (a repeat inside the duplicate window is
 * dropped by the server). Events are published first and pipelined: all are sent, then all
 * PubAcks awaited, which keeps their order (one connection) and costs one round trip; a terminal
 * event waits for the PubAcks of the events before it (a retried one could land after it).
 * A model request goes out only after every event before it is stored: the llm-worker publishes
 * events of its own (`llm.step.started`, deltas), which must follow this transition's. A tool
 * request is sent alongside the events (issue 9: one round trip less per tool step): the tool-worker
 * publishes no event, and the call's result only shows in the events of the run's next transition,
 * which is committed after this call returns, so after every PubAck awaited here (the run's queue),
 * or, after a crash or by another replica, after this outbox is published again first (nothing is
 * committed on a transition not known published). Crash window: the tool request stored, the events
 * not (the process died, or a publish failed and the input is nakked): the tool may run and its
 * result arrive before the events are out; whoever applies that result publishes this outbox first
 * (the request again, dropped as a duplicate), so `tool.call` still precedes `tool.result`.
 * `prepared`: the outbox as the size check before the commit encoded it (`encodeOutbox`), reused
 * unless the limits changed since. Returns the stream sequence of the last event, if any.
 */
export async function publishOutbox(deps: OutboxPublisherDeps, transition: TransitionDocument, prepared?: EncodedOutbox): Promise<number | null> {
  const { js } = deps;
  const { runId, tenantId } = transition;
  const ts = transition.at.toISOString();
  const limits = limitsOf(deps);
  const sameLimits = prepared !== undefined && prepared.limits.message === limits.message && prepared.limits.event === limits.event && prepared.limits.modelRequest === limits.modelRequest;
  const encodings = sameLimits ? prepared.entries : encodeOutbox(deps, transition).entries;
  // The run's trace (issue 10): stored with the transition, so an outbox published again after a
  // crash, by another replica or a sweeper, still continues the trace of the step that made it.
  const trace = transition.traceparent ? contextFromTraceparent(transition.traceparent) : undefined;
  let lastEventSeq: number | null = null;
  const pendingEvents: Promise<PubAck>[] = [];
  /** Tool requests sent alongside the events, awaited at the end (see above). */
  const pendingWork: Promise<PubAck>[] = [];
  for (const [index, entry] of transition.outbox.entries()) {
    const id = outboxEntryId(runId, transition.version, index);
    const encoded = encodings[index] ?? null;
    if (encoded?.kind === 'event') {
      if (entry.kind === 'event' && isTerminalEventType(entry.type) && pendingEvents.length) {
        // The terminal event goes out only once every earlier event is stored: a pipelined event
        // retried through an election may otherwise land after it, and readers stop at the
        // terminal event (DESIGN §6), so that event would never reach a client.
        await Promise.all(pendingEvents);
      }
      pendingEvents.push(publishRetrying(js, encoded.subject, encoded.data, id, { trace }));
      continue;
    }
    if (encoded?.kind === 'message' && entry.kind === 'tool_request') {
      const sent = publishRetrying(js, encoded.subject, encoded.data, id, { trace });
      // Awaited below; until then a rejection must not count as unhandled.
      sent.catch(() => {});
      pendingWork.push(sent);
      continue;
    }
    if (pendingEvents.length) {
      const acks = await Promise.all(pendingEvents.splice(0));
      lastEventSeq = acks.at(-1)!.seq;
    }
    if (encoded) {
      if (encoded.kind === 'llm_request' && encoded.blob) await deps.payloads!.putBlob({ name: encoded.blob.name }, encoded.blob.data);
      await publishRetrying(js, encoded.subject, encoded.data, id, { trace });
      continue;
    }
    if (entry.kind === 'run_control') {
      if (!deps.runControl) throw new Error('outbox entry run_control needs the RUN_CONTROL bucket');
      await deps.runControl.put(kvKeys.runControl(runId), encodeJson({ cancelled: true, at: ts, ...(entry.reason ? { reason: entry.reason } : {}) }));
    } else if (entry.kind === 'release_conversation_lock') {
      if (!deps.collections) throw new Error('outbox entry release_conversation_lock needs MongoDB');
      // The conversation's head first (conversation-heads.ts), then the locks: a run that takes
      // the lock once it is deleted finds this run as the one to take its history from. A crash
      // between the two republishes the whole outbox: the head write is idempotent and never
      // moves back. (A creation that frees the lock of this ended run before that takes its
      // history from this run directly, `run-creation.ts`.)
      await recordConversationEnd(deps.collections, { tenantId, conversationId: entry.conversationId, runId, createdAt: transition.state.createdAt });
      // Only this run's locks: a newer run may hold the conversation (or the slot) by now. Both
      // issued in one turn, so they go out as one `bulkWrite` (write-batcher.ts). A crash with
      // one landed and not the other republishes the whole outbox: both are idempotent.
      const { conversationLocks } = deps.collections.writes;
      await Promise.all([
        conversationLocks.delete(lockIds.conversation(tenantId, entry.conversationId), { runId }),
        entry.runSlot === undefined ? undefined : conversationLocks.delete(lockIds.runSlot(tenantId, entry.runSlot), { runId }),
      ]);
    }
  }
  if (pendingEvents.length) {
    const acks = await Promise.all(pendingEvents);
    lastEventSeq = acks.at(-1)!.seq;
  }
  await Promise.all(pendingWork);
  return lastEventSeq;
}
