import { createServer, type Server } from 'node:http';
import { performance } from 'node:perf_hooks';

/**
 * The bench's HTTP tool: any path answers with the request body (its arguments) after `delayMs`.
 * The arrival of each call (its headers, i.e. the moment the tool call starts) is timestamped
 * with `performance.now()` by `Idempotency-Key` (`<runId>:<toolCallId>`), and `waitForCall`
 * resolves with that timestamp.
 */
export type BenchToolServer = {
  url: string;
  /** Calls received so far, by path. */
  counts: Map<string, number>;
  /** Resolves with the arrival time of the call with this Idempotency-Key (already arrived or future). */
  waitForCall(idempotencyKey: string, timeoutMs: number): Promise<number>;
  close(): Promise<void>;
};

export async function startBenchToolServer(delayMs: number): Promise<BenchToolServer> {
  const arrivals = new Map<string, number>();
  const waiters = new Map<string, (at: number) => void>();
  const counts = new Map<string, number>();
  const server: Server = createServer((request, response) => {
    const at = performance.now();
    const key = request.headers['idempotency-key'];
    if (typeof key === 'string') {
      const waiter = waiters.get(key);
      if (waiter) {
        waiters.delete(key);
        waiter(at);
      } else if (!arrivals.has(key)) {
        arrivals.set(key, at);
      }
    }
    const path = request.url ?? '/';
    counts.set(path, (counts.get(path) ?? 0) + 1);
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      const answer = () => response.writeHead(200, { 'content-type': 'application/json' }).end(Buffer.concat(chunks));
      if (delayMs > 0) setTimeout(answer, delayMs);
      else answer();
    });
  });
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  return {
    url: `http://127.0.0.1:${port}`,
    counts,
    waitForCall(idempotencyKey, timeoutMs) {
      const arrived = arrivals.get(idempotencyKey);
      if (arrived !== undefined) {
        arrivals.delete(idempotencyKey);
        return Promise.resolve(arrived);
      }
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          waiters.delete(idempotencyKey);
          reject(new Error(`no tool call ${idempotencyKey} within ${timeoutMs} ms`));
        }, timeoutMs);
        waiters.set(idempotencyKey, (at) => {
          clearTimeout(timer);
          resolve(at);
        });
      });
    },
    close() {
      server.closeAllConnections();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
