import { setTimeout as sleep } from 'node:timers/promises';
import WebSocket from 'ws';
import { terminalTypes, type ClientEvent } from '../harness/run-checks.ts';
import type { GatewayPool } from './gateways.ts';

type Followed = {
  runId: string;
  /** Every event received, over every connection, in arrival order. */
  events: ClientEvent[];
  terminal: boolean;
  /** When the last event arrived (or the subscription was made). */
  lastProgressAt: number;
  /** When the last event arrived (or the run was first followed): resubscribing does not reset it. */
  lastEventAt: number;
  /** The longest wait for the run's next event, until its terminal event (the run's longest stall as its client saw it). */
  longestGapMs: number;
};

export type FollowerStats = {
  /** Connections opened after the first (after a kill, or a socket that closed). */
  reconnects: number;
  /** Subscriptions sent again on a live connection after an `error` frame for the run. */
  resubscribesAfterError: number;
  /** Subscriptions sent again because a run had ended but its terminal event had not arrived. */
  resubscribesAfterSilence: number;
  /** Problems seen while receiving (a seq that did not increase, an event after the terminal one). */
  problems: string[];
  errorCodes: Record<string, number>;
};

/**
 * A WebSocket client following some runs, as a UI would: it keeps each run's last `seq` and,
 * whenever its connection is lost or it is told a process was killed, it connects again (to any
 * live gateway) and subscribes to every unfinished run with `after` = that seq. What it receives
 * over all its connections must be exactly what one uninterrupted subscription would show.
 */
export class Follower {
  readonly name: string;
  readonly runs = new Map<string, Followed>();
  readonly stats: FollowerStats = { reconnects: 0, resubscribesAfterError: 0, resubscribesAfterSilence: 0, problems: [], errorCodes: {} };
  readonly #pool: GatewayPool;
  readonly #key: string;
  readonly #onEvent: (runId: string, event: ClientEvent) => void;
  #socket: WebSocket | undefined;
  #connecting: Promise<void> | undefined;
  #generation = 0;
  #closed = false;

  constructor(options: { name: string; pool: GatewayPool; key: string; onEvent(runId: string, event: ClientEvent): void }) {
    this.name = options.name;
    this.#pool = options.pool;
    this.#key = options.key;
    this.#onEvent = options.onEvent;
  }

  /** Starts following `runId` from its first event. */
  follow(runId: string): void {
    if (this.runs.has(runId)) return;
    this.runs.set(runId, { runId, events: [], terminal: false, lastProgressAt: Date.now(), lastEventAt: Date.now(), longestGapMs: 0 });
    this.#subscribe(runId);
  }

  unfinished(): Followed[] {
    return [...this.runs.values()].filter((run) => !run.terminal);
  }

  /** Drops the connection and opens a new one to a live gateway, resubscribing from each run's cursor. */
  reconnect(): Promise<void> {
    if (this.#closed) return Promise.resolve();
    // A connection being opened now picks a live gateway already.
    if (this.#connecting) return this.#connecting;
    this.#detach();
    this.#connecting = this.#connect().finally(() => (this.#connecting = undefined));
    return this.#connecting;
  }

  /** Subscribes again from the run's cursor on the current connection (after a silence). */
  resubscribe(runId: string): void {
    this.stats.resubscribesAfterSilence += 1;
    this.#subscribe(runId);
  }

  close(): void {
    this.#closed = true;
    this.#detach();
  }

  async start(): Promise<void> {
    await this.#connect(false);
  }

  #detach(): void {
    this.#generation += 1;
    const socket = this.#socket;
    this.#socket = undefined;
    if (socket) {
      socket.removeAllListeners();
      socket.on('error', () => {
        // A socket we abandoned: its errors no longer matter.
      });
      socket.terminate();
    }
  }

  async #connect(counted = true): Promise<void> {
    if (counted) this.stats.reconnects += 1;
    for (let attempt = 0; !this.#closed; attempt += 1) {
      const url = `${this.#pool.pickUrl().replace('http', 'ws')}/v1/ws`;
      const generation = ++this.#generation;
      try {
        const socket = await open(url, this.#key);
        if (this.#closed || generation !== this.#generation) {
          socket.terminate();
          return;
        }
        this.#socket = socket;
        socket.on('message', (data) => this.#onFrame(generation, JSON.parse(String(data))));
        socket.on('close', () => {
          if (generation === this.#generation && !this.#closed) void this.reconnect();
        });
        socket.on('error', () => {
          // Followed by `close`, which reconnects.
        });
        for (const run of this.unfinished()) this.#subscribe(run.runId);
        return;
      } catch {
        // No gateway accepted the connection (it is restarting): try again shortly.
        await sleep(Math.min(1_000, 100 * 2 ** attempt));
      }
    }
  }

  #subscribe(runId: string): void {
    const run = this.runs.get(runId);
    const socket = this.#socket;
    if (!run || run.terminal || !socket || socket.readyState !== WebSocket.OPEN) return;
    const last = run.events.at(-1);
    run.lastProgressAt = Date.now();
    socket.send(JSON.stringify({ type: 'subscribe', runId, ...(last ? { after: last.seq } : {}) }));
  }

  #onFrame(generation: number, frame: { type: string; runId?: string; event?: ClientEvent; code?: string }): void {
    if (generation !== this.#generation) return;
    if (frame.type === 'error') {
      this.stats.errorCodes[frame.code ?? '?'] = (this.stats.errorCodes[frame.code ?? '?'] ?? 0) + 1;
      if (frame.runId && this.runs.has(frame.runId)) {
        // The subscription failed on the gateway's side (e.g. its NATS connection): resume it.
        this.stats.resubscribesAfterError += 1;
        const runId = frame.runId;
        setTimeout(() => {
          if (generation === this.#generation) this.#subscribe(runId);
        }, 500);
      }
      return;
    }
    if (frame.type !== 'event' || !frame.runId || !frame.event) return;
    const run = this.runs.get(frame.runId);
    if (!run) return;
    const event = frame.event;
    const last = run.events.at(-1);
    if (run.terminal) this.stats.problems.push(`${run.runId}: ${event.type} (seq ${event.seq}) after the terminal event`);
    if (last && !(event.seq > last.seq)) this.stats.problems.push(`${run.runId}: seq ${event.seq} after ${last.seq}`);
    run.events.push(event);
    run.lastProgressAt = Date.now();
    if (!run.terminal) run.longestGapMs = Math.max(run.longestGapMs, run.lastProgressAt - run.lastEventAt);
    run.lastEventAt = run.lastProgressAt;
    if (terminalTypes.includes(event.type)) run.terminal = true;
    this.#onEvent(run.runId, event);
  }
}

function open(url: string, key: string): Promise<WebSocket> {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url, { headers: { authorization: `Bearer ${key}` }, handshakeTimeout: 5_000 });
    socket.once('open', () => {
      socket.removeAllListeners('error');
      resolve(socket);
    });
    socket.once('error', reject);
    socket.once('unexpected-response', (_request, response) => {
      socket.terminate();
      reject(new Error(`upgrade refused: ${response.statusCode}`));
    });
  });
}
