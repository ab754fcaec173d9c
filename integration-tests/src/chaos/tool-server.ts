import { createServer, type Server } from 'node:http';
import type { Random } from './random.ts';

export type ToolCall = { key: string; path: string; at: number; body: unknown; attempt: number };

export type CountingToolServer = {
  url: string;
  /** Every call received, in arrival order. */
  calls: ToolCall[];
  /** Calls per Idempotency-Key. */
  callsByKey(): Map<string, ToolCall[]>;
  close(): Promise<void>;
};

/**
 * The HTTP tools of the chaos workload: records each call with its Idempotency-Key and answers
 * `{ ok, key, attempt }` (attempt = how many calls with this key it has seen) after a seeded
 * delay of up to 300 ms, so a worker can die while a call is in flight. A call without a key is refused (400).
 */
export async function startCountingToolServer(random: Random): Promise<CountingToolServer> {
  const calls: ToolCall[] = [];
  const seen = new Map<string, number>();
  const server: Server = createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      const key = request.headers['idempotency-key'];
      if (typeof key !== 'string' || key.length === 0) {
        response.writeHead(400, { 'content-type': 'application/json' }).end(JSON.stringify({ error: 'missing Idempotency-Key' }));
        return;
      }
      const text = Buffer.concat(chunks).toString('utf8');
      const attempt = (seen.get(key) ?? 0) + 1;
      seen.set(key, attempt);
      calls.push({ key, path: request.url ?? '/', at: Date.now(), body: text ? JSON.parse(text) : undefined, attempt });
      setTimeout(() => {
        response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ ok: true, key, attempt }));
      }, random.int(0, 300));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  return {
    url: `http://127.0.0.1:${port}`,
    calls,
    callsByKey() {
      const byKey = new Map<string, ToolCall[]>();
      for (const call of calls) byKey.set(call.key, [...(byKey.get(call.key) ?? []), call]);
      return byKey;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
