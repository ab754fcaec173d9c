import { wsClientFrameSchema } from '@abide/shared';
import fc from 'fast-check';
import WebSocket from 'ws';

/** One generated frame: what is sent, and the kind of mutation that produced it. */
export type FuzzFrame = { kind: string; data: string | Buffer; binary: boolean };

export type FrameFuzzOptions = {
  /** `ws://…/v1/ws` */
  url: string;
  /** API keys; one socket per key, frames spread over them. */
  apiKeys: string[];
  /** Run ids that exist (some of another tenant) and an agent id that exists for every key. */
  runIds: string[];
  agentId: string;
  frames: number;
  seed: number;
  /** Longest wait for a reply. @default 15000 */
  replyTimeoutMs?: number;
};

export type FrameFuzzReport = {
  sent: number;
  byKind: Record<string, number>;
  /** Replies to frames the contract refuses: `error` frames by code. */
  badFrameErrors: Record<string, number>;
  /** Replies to well-formed frames that carry a request id: frame type (or `error:<code>`). */
  validFrameReplies: Record<string, number>;
  /** Frames the contract refuses that got no `error` frame (must be empty). */
  unanswered: FuzzFrame[];
  /** `error` frames with code `internal` (must be 0). */
  internalErrors: number;
  /** Sockets that closed during the run (must be 0). */
  socketsClosed: number;
};

const runIdFor = (runIds: string[]) => fc.oneof(fc.constantFrom(...runIds), fc.constantFrom('run_missing', 'bad id', '', 'run_' + 'x'.repeat(80)));

function validFrame(options: Pick<FrameFuzzOptions, 'runIds' | 'agentId'>): fc.Arbitrary<Record<string, unknown>> {
  const requestId = fc.string({ minLength: 1, maxLength: 16 }).map((text) => `r-${text}`);
  const runId = fc.constantFrom(...options.runIds, 'run_missing');
  return fc.oneof(
    fc.constant({ type: 'ping' }),
    fc.record({ type: fc.constant('subscribe'), runId, after: fc.option(fc.nat(50), { nil: undefined }) }, { requiredKeys: ['type', 'runId'] }),
    fc.record({ type: fc.constant('unsubscribe'), runId }),
    fc.record(
      {
        type: fc.constant('run.create'),
        requestId,
        agentId: fc.constantFrom(options.agentId, 'missing-agent'),
        input: fc.string({ minLength: 1, maxLength: 40 }),
        metadata: fc.dictionary(fc.string({ minLength: 1, maxLength: 8 }), fc.jsonValue({ maxDepth: 3 }), { maxKeys: 4 }),
      },
      { requiredKeys: ['type', 'requestId', 'agentId', 'input'] },
    ),
    fc.record({ type: fc.constant('cancel'), requestId, runId, reason: fc.option(fc.string({ maxLength: 20 }), { nil: undefined }) }, { requiredKeys: ['type', 'requestId', 'runId'] }),
    fc.record(
      { type: fc.constant('approval'), requestId, runId, toolCallId: fc.constantFrom('s0c0', 's1c2'), approved: fc.boolean(), args: fc.dictionary(fc.string({ minLength: 1, maxLength: 8 }), fc.jsonValue({ maxDepth: 3 }), { maxKeys: 3 }) },
      { requiredKeys: ['type', 'requestId', 'runId', 'toolCallId', 'approved'] },
    ),
  );
}

/** Values that break a field: wrong types, huge and odd strings, deep nesting, keys MongoDB refuses. */
const hostileValue: fc.Arbitrary<unknown> = fc.oneof(
  fc.constantFrom(null, true, 0, -1, 1e308, -0, '', [], {}, 'x'.repeat(200_000), '\u0000', '\ud800', '__proto__'),
  fc.integer(),
  fc.double(),
  fc.string({ maxLength: 64, unit: 'binary' }),
  fc.array(fc.anything({ maxDepth: 2 }), { maxLength: 4 }),
  fc.constantFrom({ $where: 1 }, { 'a.b': 1 }, { a: [[1]] }, { '': 1 }, { constructor: { prototype: 1 } }),
);

/** A frame whose `field` holds objects and arrays nested `depth` deep (written as text: too deep for JSON.stringify). */
const deeplyNested = fc.tuple(fc.constantFrom('metadata', 'args', 'input', 'after'), fc.integer({ min: 9, max: 20_000 })).map(([field, depth]): FuzzFrame => {
  const open = Array.from({ length: depth }, (_, level) => (level % 2 === 0 ? '{"a":' : '[')).join('');
  const close = Array.from({ length: depth }, (_, level) => (level % 2 === 0 ? '}' : ']')).reverse().join('');
  const base = field === 'args' ? '{"type":"approval","requestId":"deep","runId":"run_x","toolCallId":"s0c0","approved":true' : field === 'after' ? '{"type":"subscribe","runId":"run_x"' : '{"type":"run.create","requestId":"deep","agentId":"helper","input":"hi"';
  return { kind: 'deep-nesting', data: `${base},"${field}":${open}0${close}}`, binary: false };
});

/** All frames of a run: valid ones, valid ones with a field broken or added, garbage text and binary. */
export function frameArbitrary(options: Pick<FrameFuzzOptions, 'runIds' | 'agentId'>): fc.Arbitrary<FuzzFrame> {
  const valid = validFrame(options);
  const text = (kind: string, value: fc.Arbitrary<unknown>) => value.map((frame): FuzzFrame => ({ kind, data: JSON.stringify(frame), binary: false }));
  return fc.oneof(
    text('valid', valid),
    text(
      'broken-field',
      fc.tuple(valid, fc.nat(), hostileValue).map(([frame, index, value]) => {
        const keys = Object.keys(frame);
        return { ...frame, [keys[index % keys.length]!]: value };
      }),
    ),
    text(
      'extra-field',
      fc.tuple(valid, fc.string({ maxLength: 12 }), hostileValue).map(([frame, key, value]) => ({ ...frame, [key === 'type' ? 'typo' : key]: value })),
    ),
    text('not-a-frame', fc.oneof(fc.jsonValue({ maxDepth: 4 }), fc.constantFrom('"ping"', 'null', '[]', '{"type":"ping"}x'.slice(0, 15)))),
    fc.string({ maxLength: 200, unit: 'binary' }).map((data): FuzzFrame => ({ kind: 'garbage-text', data, binary: false })),
    fc.tuple(valid, fc.nat()).map(([frame, cut]): FuzzFrame => {
      const json = JSON.stringify(frame);
      return { kind: 'truncated', data: json.slice(0, cut % Math.max(json.length, 1)), binary: false };
    }),
    fc.uint8Array({ maxLength: 256 }).map((bytes): FuzzFrame => ({ kind: 'binary', data: Buffer.from(bytes), binary: true })),
    deeplyNested,
    valid.map((frame): FuzzFrame => ({ kind: 'binary-invalid-utf8', data: Buffer.concat([Buffer.from(JSON.stringify(frame).slice(0, -1)), Buffer.from([0xc3, 0x28, 0xff, 0x7d])]), binary: true })),
  );
}

/** Whether the contract refuses the frame (then the gateway must answer an `error` frame). */
function isBadFrame(frame: FuzzFrame): boolean {
  const text = Buffer.isBuffer(frame.data) ? frame.data.toString('utf8') : frame.data;
  try {
    return !wsClientFrameSchema.safeParse(JSON.parse(text)).success;
  } catch {
    // Not JSON: the contract refuses it with invalid_json.
    return true;
  }
}

type Reply = { type: string; [field: string]: unknown };

/** A socket that hands out its frames in order. */
class FuzzSocket {
  readonly replies: Reply[] = [];
  closed = false;
  readonly socket: WebSocket;
  #waiter: (() => void) | undefined;
  private constructor(socket: WebSocket) {
    this.socket = socket;
    socket.on('message', (data) => {
      this.replies.push(JSON.parse(String(data)) as Reply);
      this.#waiter?.();
    });
    socket.on('close', () => {
      this.closed = true;
      this.#waiter?.();
    });
  }

  static open(url: string, apiKey: string): Promise<FuzzSocket> {
    return new Promise((resolve, reject) => {
      const socket = new WebSocket(url, { headers: { authorization: `Bearer ${apiKey}` }, maxPayload: 64 * 1_048_576 });
      socket.once('open', () => resolve(new FuzzSocket(socket)));
      socket.once('error', reject);
    });
  }

  /** The first reply (recorded or future) matching `predicate`, removed from the list; undefined on timeout or close. */
  async take(predicate: (reply: Reply) => boolean, timeoutMs: number): Promise<Reply | undefined> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const index = this.replies.findIndex(predicate);
      if (index >= 0) return this.replies.splice(index, 1)[0];
      if (this.closed || Date.now() >= deadline) return undefined;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.max(deadline - Date.now(), 0));
        this.#waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.#waiter = undefined;
    }
  }
}

const increment = (counts: Record<string, number>, key: string) => (counts[key] = (counts[key] ?? 0) + 1);

/**
 * Sends `frames` generated frames (seeded, so a failure replays) over one socket per key. After
 * each frame: a refused frame must be answered by an `error` frame; a frame with a request id by a
 * reply carrying it; then a `ping` must get a `pong` (the socket is still usable).
 */
export async function runFrameFuzz(options: FrameFuzzOptions): Promise<FrameFuzzReport> {
  const timeoutMs = options.replyTimeoutMs ?? 15_000;
  const frames = fc.sample(frameArbitrary(options), { seed: options.seed, numRuns: options.frames });
  const sockets = await Promise.all(options.apiKeys.map((key) => FuzzSocket.open(options.url, key)));
  const report: FrameFuzzReport = { sent: 0, byKind: {}, badFrameErrors: {}, validFrameReplies: {}, unanswered: [], internalErrors: 0, socketsClosed: 0 };

  async function drive(socket: FuzzSocket, share: FuzzFrame[]): Promise<void> {
    for (const frame of share) {
      if (socket.closed) return;
      const bad = isBadFrame(frame);
      socket.socket.send(frame.data, { binary: frame.binary });
      report.sent += 1;
      increment(report.byKind, frame.kind);
      const requestId = (() => {
        try {
          const value = JSON.parse(Buffer.isBuffer(frame.data) ? frame.data.toString('utf8') : frame.data) as { requestId?: unknown };
          return typeof value?.requestId === 'string' ? value.requestId : undefined;
        } catch {
          // Not JSON: no request id to match.
          return undefined;
        }
      })();
      if (bad) {
        // Refused by the frame contract: answered at once with invalid_json or invalid_request
        // (invalid_cursor for a subscribe whose only fault is its `after`, as over HTTP).
        const refusal = (candidate: Reply) => candidate.type === 'error' && ['invalid_json', 'invalid_request', 'invalid_cursor'].includes(String(candidate.code));
        const reply = await socket.take((candidate) => refusal(candidate) && (requestId === undefined || candidate.requestId === requestId), timeoutMs);
        if (!reply) report.unanswered.push(frame);
        else increment(report.badFrameErrors, String(reply.code));
        if (reply?.code === 'internal') report.internalErrors += 1;
      } else if (requestId !== undefined) {
        const reply = await socket.take((candidate) => candidate.requestId === requestId && candidate.type !== 'event', timeoutMs);
        increment(report.validFrameReplies, reply ? (reply.type === 'error' ? `error:${String(reply.code)}` : reply.type) : 'none');
        if (reply?.code === 'internal') report.internalErrors += 1;
      }
      socket.socket.send(JSON.stringify({ type: 'ping' }));
      const pong = await socket.take((candidate) => candidate.type === 'pong', timeoutMs);
      if (!pong) return;
      // Whatever else arrived (events of subscribed runs, late errors) is counted, then dropped.
      for (const reply of socket.replies.splice(0)) if (reply.type === 'error' && reply.code === 'internal') report.internalErrors += 1;
    }
  }

  const shares = sockets.map((_, index) => frames.filter((__, frameIndex) => frameIndex % sockets.length === index));
  await Promise.all(sockets.map((socket, index) => drive(socket, shares[index]!)));
  report.socketsClosed = sockets.filter((socket) => socket.closed).length;
  for (const socket of sockets) socket.socket.terminate();
  return report;
}
