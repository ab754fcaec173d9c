import type { RunEvent } from './run-model.ts';

/** What the socket tells a subscriber besides events. */
export type SubscriptionHandlers = {
  onEvent(event: RunEvent): void;
  /** An `error` frame for this run (e.g. `run_not_found`, `cursor_expired`). */
  onError(code: string, message: string): void;
};

type Subscription = SubscriptionHandlers & { runId: string; cursor: number | undefined; done: boolean };

export type ConnectionState = 'connecting' | 'open' | 'closed';

const terminalTypes = new Set(['run.completed', 'run.failed', 'run.cancelled']);

/** `abide.key.<base64url(key)>`: the key rides in `Sec-WebSocket-Protocol`, never in the URL. */
function keyProtocol(key: string): string {
  const bytes = new TextEncoder().encode(key);
  let binary = '';
  for (const byte of bytes) binary += String.fromCharCode(byte);
  return `abide.key.${btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '')}`;
}

/**
 * One WebSocket to `/v1/ws` for the whole console. Each subscription remembers the `seq` of the
 * last event it received; after a drop the socket reconnects (backing off up to 5 s) and
 * re-subscribes with `after` = that cursor, so nothing is missed or repeated.
 */
export class LiveConnection {
  private socket: WebSocket | null = null;
  private readonly subscriptions = new Map<number, Subscription>();
  private nextId = 1;
  private retryMs = 250;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private stopped = false;
  private readonly stateListeners = new Set<(state: ConnectionState) => void>();
  private readonly key: string;
  state: ConnectionState = 'connecting';

  constructor(key: string) {
    this.key = key;
    this.connect();
  }

  onState(listener: (state: ConnectionState) => void): () => void {
    this.stateListeners.add(listener);
    return () => this.stateListeners.delete(listener);
  }

  /** Follows `runId` from after `after` (from its first event when undefined). Returns the unsubscribe. */
  subscribe(runId: string, after: number | undefined, handlers: SubscriptionHandlers): () => void {
    const id = this.nextId++;
    const subscription: Subscription = { ...handlers, runId, cursor: after, done: false };
    this.subscriptions.set(id, subscription);
    this.sendSubscribe(subscription);
    return () => {
      this.subscriptions.delete(id);
      if (![...this.subscriptions.values()].some((other) => other.runId === runId)) this.send({ type: 'unsubscribe', runId });
    };
  }

  close(): void {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.socket?.close(1000, 'signed out');
  }

  private setState(state: ConnectionState): void {
    this.state = state;
    for (const listener of this.stateListeners) listener(state);
  }

  private send(frame: unknown): void {
    if (this.socket?.readyState === WebSocket.OPEN) this.socket.send(JSON.stringify(frame));
  }

  /**
   * The server holds one subscription per run and socket, and a new `subscribe` replaces it: ask
   * from the earliest cursor of this run's subscribers; each skips what it already has.
   */
  private sendSubscribe(subscription: Subscription): void {
    if (subscription.done) return;
    let after: number | undefined = subscription.cursor;
    for (const other of this.subscriptions.values()) {
      if (other.runId !== subscription.runId || other.done) continue;
      if (other.cursor === undefined) after = undefined;
      else if (after !== undefined) after = Math.min(after, other.cursor);
    }
    this.send({ type: 'subscribe', runId: subscription.runId, ...(after === undefined ? {} : { after }) });
  }

  private connect(): void {
    const url = `${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}/v1/ws`;
    this.setState('connecting');
    const socket = new WebSocket(url, ['abide.v1', keyProtocol(this.key)]);
    this.socket = socket;
    socket.addEventListener('open', () => {
      this.retryMs = 250;
      this.setState('open');
      const resumed = new Set<string>();
      for (const subscription of this.subscriptions.values()) {
        if (subscription.done || resumed.has(subscription.runId)) continue;
        resumed.add(subscription.runId);
        this.sendSubscribe(subscription);
      }
    });
    socket.addEventListener('message', (message) => this.onFrame(String(message.data)));
    socket.addEventListener('close', () => {
      if (this.socket !== socket) return;
      this.socket = null;
      this.setState('closed');
      if (this.stopped) return;
      this.retryTimer = setTimeout(() => this.connect(), this.retryMs);
      this.retryMs = Math.min(this.retryMs * 2, 5_000);
    });
  }

  private onFrame(data: string): void {
    let frame: { type?: string; runId?: string; event?: RunEvent; code?: string; message?: string };
    try {
      frame = JSON.parse(data) as typeof frame;
    } catch {
      // The server only sends JSON; a broken frame is dropped (the cursor makes a resume exact anyway).
      return;
    }
    if (frame.type === 'event' && frame.event && frame.runId) {
      const event = frame.event;
      for (const subscription of this.subscriptions.values()) {
        if (subscription.runId !== frame.runId || subscription.done) continue;
        if (subscription.cursor !== undefined && event.seq <= subscription.cursor) continue;
        subscription.cursor = event.seq;
        if (terminalTypes.has(event.type)) subscription.done = true;
        subscription.onEvent(event);
      }
    } else if (frame.type === 'error' && frame.runId) {
      for (const subscription of this.subscriptions.values()) {
        if (subscription.runId === frame.runId) subscription.onError(frame.code ?? 'error', frame.message ?? '');
      }
    }
  }
}
