import { ApiError, type Lease } from '@abide/shared';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { RouteContext } from './route-context.ts';

/** An open `text/event-stream` answer: writes wait for `drain` (a slow client slows only itself). */
export type StreamingResponse = {
  signal: AbortSignal;
  write(text: string): Promise<void>;
  end(): Promise<void>;
};

/**
 * A follower of one run's events holds one of the tenant's connections and one of its
 * subscriptions (issue 8, across replicas): 429 `rate_limited` over either cap. Returns the
 * release (never rejects).
 */
export async function holdStreamLeases(context: RouteContext, tenantId: string, label: string, options: { connection: boolean }): Promise<() => Promise<void>> {
  if (context.live.closing) throw new ApiError('unavailable', 'shutting down', { headers: { 'retry-after': '1' } });
  const { capacity } = context.services();
  const leases: Lease[] = [];
  const release = async () => {
    await Promise.all(leases.splice(0).map((lease) => lease.release()));
  };
  try {
    if (options.connection) leases.push(await capacity.acquireConnection(tenantId, label));
    leases.push(await capacity.acquireSubscription(tenantId, label));
  } catch (error) {
    await release();
    throw error;
  }
  return release;
}

/**
 * Takes over the response for a long-lived SSE answer (a run's events, the UI message stream,
 * OpenAI chunks): status 200 and `headers` at once, an SSE comment as heartbeat (every
 * protocol's parser skips comments), closed on shutdown with the other live streams. Aborts
 * `controller` when the client goes away (pass one the route already uses for work begun before
 * the answer). `releaseLeases` (from `holdStreamLeases`, taken before any work so that a refused
 * stream creates no run) is called by `end()`.
 */
export function openStreamingResponse(
  context: RouteContext,
  request: FastifyRequest,
  reply: FastifyReply,
  headers: Record<string, string>,
  releaseLeases: () => Promise<void>,
  controller = new AbortController(),
): StreamingResponse {
  const { signal } = controller;
  reply.raw.on('close', () => controller.abort());
  reply.hijack();
  const raw = reply.raw;
  raw.writeHead(200, { ...headers, 'x-request-id': request.id });
  const forget = context.live.addStream({ close: () => controller.abort() });
  const subscriptionEnded = context.live.subscriptionStarted();
  const heartbeat = setInterval(() => raw.write(': heartbeat\n\n'), context.streaming.heartbeatMs);
  let ended = false;
  return {
    signal,
    write(text) {
      if (signal.aborted || raw.write(text)) return Promise.resolve();
      return new Promise((resolve) => {
        const done = () => {
          raw.off('drain', done);
          signal.removeEventListener('abort', done);
          resolve();
        };
        raw.once('drain', done);
        signal.addEventListener('abort', done, { once: true });
      });
    },
    async end() {
      if (ended) return;
      ended = true;
      clearInterval(heartbeat);
      forget();
      subscriptionEnded();
      controller.abort();
      // Released before the end is sent: a client that saw its stream end may open the next one at once.
      await releaseLeases();
      raw.end();
    },
  };
}
