import { describe, expect, it, vi } from 'vitest';
import { eventEntry, type OutboxEntry } from './outbox.ts';
import { startMessageSchema } from './messages.ts';
import { encodeOutbox, findUnpublishableEntry, messageHeaderRoomBytes, publishOutbox, startWithStateMaxBytes, type OutboxPublisherDeps } from './outbox-publisher.ts';
import { zeroUsage, type RunState } from './run-state.ts';
import type { TransitionDocument } from './run-store.ts';
import { testRunState } from './testing/run-state.ts';

const at = new Date('2026-11-29T00:00:00.000Z');

function transitionWith(outbox: OutboxEntry[], state: Partial<RunState> = {}): TransitionDocument {
  const base = testRunState({ status: 'running', step: 1, awaiting: { kind: 'llm', step: 1 }, ...state }, { at: at.toISOString() });
  return { _id: 'run_1:3', runId: 'run_1', tenantId: 't1', version: 3, at, cause: 'm', state: base, outbox, published: false };
}

const deps = (extra: Partial<OutboxPublisherDeps> = {}): OutboxPublisherDeps => ({ js: {} as never, maxPayloadBytes: 1_048_576, ...extra });
const big = (bytes: number) => 'x'.repeat(bytes);

describe('findUnpublishableEntry (finding 5)', () => {
  it('passes an ordinary outbox', () => {
    expect(findUnpublishableEntry(deps(), transitionWith([eventEntry('run.resumed', {}), { kind: 'llm_request', step: 1 }]))).toBeNull();
  });

  it('refuses a tool request over max_payload minus header room', () => {
    const state: Partial<RunState> = {
      awaiting: { kind: 'tools', step: 0 },
      toolCalls: [{ toolCallId: 's0c0', providerToolCallId: 'p', step: 0, toolName: 'echo', args: { blob: big(1_048_576 - messageHeaderRoomBytes) }, needsApproval: false, state: 'requested' }],
    };
    expect(findUnpublishableEntry(deps(), transitionWith([{ kind: 'tool_request', toolCallId: 's0c0' }], state))).toMatchObject({
      code: 'message_too_large',
      message: expect.stringContaining('the tool request of s0c0'),
    });
  });

  it('sends a model request over max_payload through PAYLOADS, up to the cap', () => {
    const state: Partial<RunState> = { messages: [{ role: 'user', content: big(3 * 1_048_576) }] };
    const withStore = deps({ payloads: {} as never, maxModelRequestBytes: 4 * 1_048_576 });
    expect(findUnpublishableEntry(withStore, transitionWith([{ kind: 'llm_request', step: 1 }], state))).toBeNull();
    expect(findUnpublishableEntry({ ...withStore, maxModelRequestBytes: 2 * 1_048_576 }, transitionWith([{ kind: 'llm_request', step: 1 }], state))).toMatchObject({
      code: 'message_too_large',
      message: expect.stringContaining('model request of step 1'),
    });
    // Without an object store, it cannot be sent at all.
    expect(findUnpublishableEntry(deps(), transitionWith([{ kind: 'llm_request', step: 1 }], state))).toMatchObject({ code: 'message_too_large' });
  });

  it('refuses an event over RUN_EVENTS max_msg_size even when the server allows more', () => {
    const outbox = [eventEntry('tool.result', { toolCallId: 's0c0', toolName: 'echo', result: big(2 * 1_048_576) })];
    expect(findUnpublishableEntry(deps({ maxPayloadBytes: 8 * 1_048_576 }), transitionWith(outbox))).toMatchObject({
      code: 'message_too_large',
      message: expect.stringContaining('the tool.result event'),
    });
  });
});

describe('an outbox encoded once for the check and the publish', () => {
  /** A JetStream client that acknowledges at once and keeps what it was sent. */
  function recordingJs() {
    const sent: { subject: string; body: any }[] = [];
    let seq = 0;
    const js = {
      async publish(subject: string, data: Uint8Array) {
        sent.push({ subject, body: JSON.parse(new TextDecoder().decode(data)) });
        return { stream: 'S', seq: ++seq, duplicate: false };
      },
    };
    return { js: js as never, sent };
  }

  it('publishes the bytes the size check encoded, and encodes again when the limits changed since', async () => {
    const transition = transitionWith([eventEntry('run.resumed', {}), { kind: 'llm_request', step: 1 }], { messages: [{ role: 'user', content: 'as checked' }] });
    const recorded = recordingJs();
    const prepared = encodeOutbox(deps({ js: recorded.js }), transition);
    expect(findUnpublishableEntry(deps(), transition, prepared)).toBeNull();
    // Changed after the check: the publish sends what was checked, not a new encoding.
    transition.state.messages = [{ role: 'user', content: 'changed later' }];
    await publishOutbox(deps({ js: recorded.js }), transition, prepared);
    const request = recorded.sent.find((message) => message.subject.startsWith('llm.request.'))!;
    expect(JSON.stringify(request.body)).toContain('as checked');
    // A reconnect to a server with another max_payload: the outbox is encoded again under the new limits.
    const again = recordingJs();
    await publishOutbox(deps({ js: again.js, maxPayloadBytes: 2 * 1_048_576 }), transition, prepared);
    expect(JSON.stringify(again.sent.find((message) => message.subject.startsWith('llm.request.'))!.body)).toContain('changed later');
  });
});

describe('publishOutbox event order', () => {
  it('publishes the terminal event only after every earlier event is acknowledged', async () => {
    const sent: string[] = [];
    const acks: Array<() => void> = [];
    let seq = 0;
    const js = {
      publish(subject: string, data: Uint8Array) {
        sent.push((JSON.parse(new TextDecoder().decode(data)) as { type: string }).type);
        const ack = { stream: 'RUN_EVENTS', seq: ++seq, duplicate: false };
        return new Promise((resolve) => acks.push(() => resolve(ack)));
      },
    };
    const transition = transitionWith([
      eventEntry('message.completed', { step: 1, attempt: 1, text: 'done' }),
      eventEntry('run.completed', { output: 'done', usage: zeroUsage }),
    ]);
    const published = publishOutbox(deps({ js: js as never }), transition);
    await vi.waitFor(() => expect(sent).toEqual(['message.completed']));
    // The terminal event is held back while the first event's PubAck is outstanding.
    await new Promise((resolve) => setImmediate(resolve));
    expect(sent).toEqual(['message.completed']);
    acks.shift()!();
    await vi.waitFor(() => expect(sent).toEqual(['message.completed', 'run.completed']));
    acks.shift()!();
    expect(await published).toBe(2);
  });

  /** A fake JetStream that records each publish's subject and holds its PubAck until released. */
  function heldAcks() {
    const sent: string[] = [];
    const acks: Array<() => void> = [];
    let seq = 0;
    const js = {
      publish(subject: string) {
        sent.push(subject);
        const ack = { stream: subject.split('.')[0], seq: ++seq, duplicate: false };
        return new Promise((resolve) => acks.push(() => resolve(ack)));
      },
    };
    return { js, sent, acks };
  }

  it('sends a tool request alongside the events, and resolves only once every PubAck arrived', async () => {
    const { js, sent, acks } = heldAcks();
    const state: Partial<RunState> = {
      awaiting: { kind: 'tools', step: 1 },
      toolCalls: [{ toolCallId: 's1c0', providerToolCallId: 'p', step: 1, toolName: 'echo', args: { text: 'hi' }, needsApproval: false, state: 'requested' }],
    };
    const transition = transitionWith(
      [eventEntry('message.completed', { step: 1, attempt: 1, text: '' }), eventEntry('tool.call', { step: 1, toolCallId: 's1c0', toolName: 'echo', args: { text: 'hi' }, needsApproval: false }), { kind: 'tool_request', toolCallId: 's1c0' }],
      state,
    );
    let done = false;
    const published = publishOutbox(deps({ js: js as never }), transition).then((seq) => ((done = true), seq));
    // All three sent at once, events first, while no PubAck has arrived.
    await vi.waitFor(() => expect(sent).toEqual(['run.events.run_1', 'run.events.run_1', 'tool.request.echo']));
    acks[0]!();
    acks[1]!();
    await new Promise((resolve) => setImmediate(resolve));
    expect(done).toBe(false);
    acks[2]!();
    expect(await published).toBe(2);
  });

  it('sends a model request only after the PubAcks of the events before it', async () => {
    const { js, sent, acks } = heldAcks();
    const transition = transitionWith([eventEntry('tool.result', { toolCallId: 's0c0', toolName: 'echo', result: { text: 'hi' } }), { kind: 'llm_request', step: 1 }]);
    const published = publishOutbox(deps({ js: js as never }), transition);
    await vi.waitFor(() => expect(sent).toEqual(['run.events.run_1']));
    await new Promise((resolve) => setImmediate(resolve));
    expect(sent).toEqual(['run.events.run_1']);
    acks.shift()!();
    await vi.waitFor(() => expect(sent).toEqual(['run.events.run_1', 'llm.request.run_1']));
    acks.shift()!();
    expect(await published).toBe(1);
  });
});

describe('publishOutbox: a new run', () => {
  const sentBy = () => {
    const sent: { subject: string; message: Record<string, any>; msgId: string }[] = [];
    const js = {
      async publish(subject: string, data: Uint8Array, options: { msgID: string }) {
        sent.push({ subject, message: JSON.parse(new TextDecoder().decode(data)), msgId: options.msgID });
        return { stream: 'RUN_INBOX', seq: sent.length, duplicate: false };
      },
    };
    return { sent, js };
  };
  const firstVersion = (state: Partial<RunState> = {}): TransitionDocument => ({
    ...transitionWith([{ kind: 'inbox', inboxKind: 'start', payload: {} }], { status: 'queued', step: 0, awaiting: { kind: null, step: 0 }, ...state }),
    _id: 'run_1:1',
    version: 1,
    cause: 'create:req_1',
    traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01',
  });

  it('sends version 1 itself with its start, parsed back exactly as committed (the orchestrator reads nothing)', async () => {
    const { sent, js } = sentBy();
    const transition = firstVersion();
    await publishOutbox(deps({ js: js as never }), transition);
    expect(sent).toHaveLength(1);
    expect(sent[0]).toMatchObject({ subject: 'run.in.run_1.start', msgId: 'run_1:1:0' });
    const parsed = startMessageSchema.parse(sent[0]!.message);
    expect(parsed.payload.initial).toEqual({ at: at.toISOString(), cause: 'create:req_1', state: transition.state, traceparent: transition.traceparent });
  });

  it('sends a start without version 1 when carrying it would pass startWithStateMaxBytes', async () => {
    const { sent, js } = sentBy();
    await publishOutbox(deps({ js: js as never }), firstVersion({ messages: [{ role: 'user', content: big(startWithStateMaxBytes) }] }));
    expect(startMessageSchema.parse(sent[0]!.message).payload).toEqual({});
  });

  it("records the run as its conversation's head, then releases the conversation lock and the slot in one turn (one bulkWrite)", async () => {
    const calls: string[] = [];
    let finishHead!: () => void;
    const conversations = {
      update(id: string, update: { $set: { runId: string } }, options: { upsert: boolean; filter: { runCreatedAt: unknown } }) {
        calls.push(`head ${id} ${update.$set.runId} ${JSON.stringify(options.filter.runCreatedAt)} upsert=${options.upsert}`);
        return new Promise((resolve) => (finishHead = () => resolve('ok')));
      },
    };
    /** How many deletes had been issued when the first one resolved. */
    const issuedWhenFirstResolved: number[] = [];
    const conversationLocks = {
      delete(id: string, filter: { runId: string }) {
        calls.push(`delete ${id} ${filter.runId}`);
        return new Promise((resolve) => setImmediate(() => {
          issuedWhenFirstResolved.push(calls.filter((call) => call.startsWith('delete')).length);
          resolve('ok');
        }));
      },
    };
    const transition = transitionWith([{ kind: 'release_conversation_lock', conversationId: 'conv-1', runSlot: 3 }]);
    const published = publishOutbox(deps({ collections: { writes: { conversations, conversationLocks } } as never }), transition);
    // The head is written first; no lock is deleted until it is.
    await vi.waitFor(() => expect(calls).toHaveLength(1));
    await new Promise(setImmediate);
    expect(calls).toEqual([`head t1:conv-1 run_1 {"$lt":"${transition.state.createdAt}"} upsert=true`]);
    finishHead();
    await published;
    expect(calls.slice(1).sort()).toEqual(['delete t1/active-run/3 run_1', 'delete t1:conv-1 run_1']);
    // Both deletes were issued before the first resolved.
    expect(issuedWhenFirstResolved[0]).toBe(2);
  });
});
