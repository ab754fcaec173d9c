import { performance } from 'node:perf_hooks';
import WebSocket from 'ws';

/** An event as the gateway relays it: `{ seq, eventId, runId, type, ts, ...fields }`. */
export type RunEvent = { seq: number; type: string; [field: string]: any };

const terminalTypes = new Set(['run.completed', 'run.failed', 'run.cancelled']);

/** The `type` of the pseudo-event a kept trace records for the `run.created` answer (not a run event). */
export const createdFrameType = 'run.created (frame)';

/** What a run tracker hears about its run. */
type Tracker = {
  onEvent(event: RunEvent, at: number): void;
  onError(code: string, message: string): void;
};

export type RunOutcome =
  | { ok: true; runId: string; ms: number; events?: { type: string; at: number; event: RunEvent }[] }
  | { ok: false; runId: string | undefined; ms: number; error: string };

export type SuspendOutcome = { ok: true; runId: string; ms: number; seq: number } | { ok: false; runId: string | undefined; ms: number; error: string };

/**
 * A lean WebSocket client of `/v1/ws` for the benchmark (the test harness's `TestSocket` keeps
 * every frame and scans them, which is quadratic over thousands of runs). Frames are routed to
 * per-request and per-run trackers synchronously in the message handler, so no frame is missed
 * between `run.created` and the run's first event.
 */
export class BenchSocket {
  readonly socket: WebSocket;
  readonly tenantKey: string;
  #creates = new Map<string, { onCreated(runId: string): void; onError(code: string, message: string): void }>();
  #runs = new Map<string, Tracker>();
  #nextRequest = 0;
  #closedError: string | undefined;
  /** Error frames for a request or run this client gave up on already (e.g. after its timeout). */
  lateErrorFrames = 0;

  private constructor(socket: WebSocket, tenantKey: string) {
    this.socket = socket;
    this.tenantKey = tenantKey;
    socket.on('message', (data) => this.#onFrame(JSON.parse(String(data)), performance.now()));
    socket.on('close', (code, reason) => {
      this.#closedError = `socket closed (${code} ${String(reason)})`;
      for (const tracker of this.#creates.values()) tracker.onError('socket_closed', this.#closedError);
      for (const tracker of this.#runs.values()) tracker.onError('socket_closed', this.#closedError);
    });
  }

  static open(url: string, apiKey: string): Promise<BenchSocket> {
    return new Promise((resolve, reject) => {
      const socket = new WebSocket(url, { headers: { authorization: `Bearer ${apiKey}` }, perMessageDeflate: false });
      socket.once('open', () => resolve(new BenchSocket(socket, apiKey)));
      socket.once('error', reject);
      socket.once('unexpected-response', (_request, response) => reject(new Error(`upgrade refused: ${response.statusCode}`)));
    });
  }

  #onFrame(frame: { type: string; [field: string]: any }, at: number): void {
    switch (frame.type) {
      case 'run.created': {
        const pending = this.#creates.get(frame.requestId);
        this.#creates.delete(frame.requestId);
        pending?.onCreated(frame.runId);
        return;
      }
      case 'event':
        this.#runs.get(frame.runId)?.onEvent(frame.event, at);
        return;
      case 'error': {
        const message = `${frame.code}: ${frame.message}`;
        if (frame.requestId !== undefined && this.#creates.has(frame.requestId)) {
          const pending = this.#creates.get(frame.requestId)!;
          this.#creates.delete(frame.requestId);
          pending.onError(frame.code, message);
        } else if (frame.runId !== undefined) {
          this.#runs.get(frame.runId)?.onError(frame.code, message);
        } else {
          this.lateErrorFrames += 1;
        }
        return;
      }
      default:
        return; // pong, ack
    }
  }

  /**
   * Creates a run with the `run.create` frame (the socket is then subscribed from the run's first
   * event) and resolves when `until` says the run reached the point waited for, when it ends, or
   * after `timeoutMs`. Time runs from just before the frame is sent to the frame that ends it.
   */
  #create<Result>(
    agentId: string,
    input: string,
    timeoutMs: number,
    until: (runId: string, event: RunEvent, at: number, started: number) => Result | undefined,
    onFailure: (runId: string | undefined, ms: number, error: string) => Result,
    onCreated?: (at: number, started: number) => void,
  ): Promise<Result> {
    return new Promise((resolve) => {
      const requestId = `r${(this.#nextRequest += 1)}`;
      let runId: string | undefined;
      let done = false;
      const finish = (result: Result) => {
        if (done) return;
        done = true;
        clearTimeout(timer);
        this.#creates.delete(requestId);
        if (runId !== undefined) this.#runs.delete(runId);
        resolve(result);
      };
      const started = performance.now();
      const timer = setTimeout(() => {
        if (runId !== undefined) this.send({ type: 'unsubscribe', runId });
        finish(onFailure(runId, performance.now() - started, `timeout after ${timeoutMs} ms`));
      }, timeoutMs);
      this.#creates.set(requestId, {
        onCreated: (created) => {
          runId = created;
          onCreated?.(performance.now(), started);
          this.#runs.set(created, {
            onEvent: (event, at) => {
              const result = until(created, event, at, started);
              if (result !== undefined) finish(result);
            },
            onError: (code, message) => finish(onFailure(created, performance.now() - started, message)),
          });
        },
        onError: (_code, message) => finish(onFailure(undefined, performance.now() - started, message)),
      });
      if (this.#closedError) {
        finish(onFailure(undefined, 0, this.#closedError));
        return;
      }
      this.send({ type: 'run.create', requestId, agentId, input });
    });
  }

  /**
   * One workload run: created over this socket, timed to its terminal event, verified to be
   * `run.completed` with `expectedOutput`. With `keepEvents`, the events and their arrival times.
   */
  runToCompletion(agentId: string, input: string, expectedOutput: string, timeoutMs: number, keepEvents = false): Promise<RunOutcome> {
    const events: { type: string; at: number; event: RunEvent }[] = [];
    return this.#create<RunOutcome>(
      agentId,
      input,
      timeoutMs,
      (runId, event, at, started) => {
        if (keepEvents) events.push({ type: event.type, at: at - started, event });
        if (!terminalTypes.has(event.type)) return undefined;
        const ms = at - started;
        if (event.type !== 'run.completed') return { ok: false, runId, ms, error: `${event.type}: ${JSON.stringify(event.error ?? event.reason ?? null)}` };
        if (event.output !== expectedOutput) return { ok: false, runId, ms, error: `unexpected output: ${JSON.stringify(event.output).slice(0, 120)}` };
        return keepEvents ? { ok: true, runId, ms, events } : { ok: true, runId, ms };
      },
      (runId, ms, error) => ({ ok: false, runId, ms, error }),
      // The `run.created` answer, as a pseudo-event: the gateway's share of the creation.
      keepEvents ? (at, started) => events.push({ type: createdFrameType, at: at - started, event: { seq: 0, type: createdFrameType } }) : undefined,
    );
  }

  /** Creates a run and resolves at its `run.suspended` event (then unsubscribes: a suspended run is waited for by nobody). */
  runToSuspension(agentId: string, input: string, timeoutMs: number): Promise<SuspendOutcome> {
    return this.#create<SuspendOutcome>(
      agentId,
      input,
      timeoutMs,
      (runId, event, at, started) => {
        if (event.type === 'run.suspended') {
          this.send({ type: 'unsubscribe', runId });
          return { ok: true, runId, ms: at - started, seq: event.seq };
        }
        if (terminalTypes.has(event.type)) return { ok: false, runId, ms: at - started, error: `ended before suspending: ${event.type}` };
        return undefined;
      },
      (runId, ms, error) => ({ ok: false, runId, ms, error }),
    );
  }

  /**
   * Subscribes to a run from after `after` (its last event seen) and resolves with its terminal
   * event's verdict: ok when it is `run.completed` with `expectedOutput`.
   */
  followToEnd(runId: string, after: number, expectedOutput: string, timeoutMs: number): Promise<{ ok: boolean; error?: string; at: number }> {
    return new Promise((resolve) => {
      const finish = (result: { ok: boolean; error?: string }) => {
        clearTimeout(timer);
        this.#runs.delete(runId);
        resolve({ ...result, at: performance.now() });
      };
      const timer = setTimeout(() => {
        this.send({ type: 'unsubscribe', runId });
        finish({ ok: false, error: `no terminal event within ${timeoutMs} ms` });
      }, timeoutMs);
      this.#runs.set(runId, {
        onEvent: (event) => {
          if (!terminalTypes.has(event.type)) return;
          if (event.type !== 'run.completed') finish({ ok: false, error: `${event.type}: ${JSON.stringify(event.error ?? event.reason ?? null)}` });
          else if (event.output !== expectedOutput) finish({ ok: false, error: 'unexpected output' });
          else finish({ ok: true });
        },
        onError: (_code, message) => finish({ ok: false, error: message }),
      });
      this.send({ type: 'subscribe', runId, after });
    });
  }

  send(frame: unknown): void {
    if (this.socket.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(frame));
  }

  close(): void {
    this.socket.close();
  }
}
