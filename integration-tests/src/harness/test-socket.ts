import WebSocket from 'ws';

export type Frame = { type: string; [field: string]: any };

/** A WebSocket client that records every frame and waits for the ones a test expects. */
export class TestSocket {
  readonly frames: Frame[] = [];
  readonly socket: WebSocket;
  #waiters: { predicate: (frame: Frame) => boolean; resolve: (frame: Frame) => void }[] = [];
  closed: Promise<{ code: number; reason: string }>;

  private constructor(socket: WebSocket) {
    this.socket = socket;
    socket.on('message', (data) => {
      const frame = JSON.parse(String(data)) as Frame;
      this.frames.push(frame);
      this.#waiters = this.#waiters.filter((waiter) => {
        if (!waiter.predicate(frame)) return true;
        waiter.resolve(frame);
        return false;
      });
    });
    this.closed = new Promise((resolve) => socket.once('close', (code, reason) => resolve({ code, reason: String(reason) })));
  }

  static open(url: string, headers: Record<string, string> = {}): Promise<TestSocket> {
    return new Promise((resolve, reject) => {
      const socket = new WebSocket(url, { headers });
      socket.once('open', () => resolve(new TestSocket(socket)));
      socket.once('error', reject);
      socket.once('unexpected-response', (_request, response) => reject(new Error(`upgrade refused: ${response.statusCode}`)));
    });
  }

  send(frame: unknown): void {
    this.socket.send(typeof frame === 'string' ? frame : JSON.stringify(frame));
  }

  /** The first recorded or future frame matching `predicate`. */
  waitFor(predicate: (frame: Frame) => boolean, timeoutMs = 30_000): Promise<Frame> {
    const seen = this.frames.find(predicate);
    if (seen) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no matching frame within ${timeoutMs} ms; got ${JSON.stringify(this.frames.slice(-5))}`)), timeoutMs);
      this.#waiters.push({
        predicate,
        resolve: (frame) => {
          clearTimeout(timer);
          resolve(frame);
        },
      });
    });
  }

  /** Event frames of `runId`, in arrival order. */
  events(runId: string): Record<string, any>[] {
    return this.frames.filter((frame) => frame.type === 'event' && frame.runId === runId).map((frame) => frame.event);
  }

  /** Waits for the terminal event of `runId` and returns all its events. */
  async untilTerminal(runId: string, timeoutMs = 60_000): Promise<Record<string, any>[]> {
    await this.waitFor((frame) => frame.type === 'event' && frame.runId === runId && ['run.completed', 'run.failed', 'run.cancelled'].includes(frame.event.type), timeoutMs);
    return this.events(runId);
  }

  close(): void {
    this.socket.close();
  }
}
