import { ApiError } from '@abide/shared';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { RouteContext } from './route-context.ts';

/** An open `text/event-stream` answer: writes wait for `drain` (a slow client slows only itself). */
export type StreamingResponse = {
  signal: AbortSignal;
  write(text: string): Promise<void>;
  end(): void;
};

/**
 * Takes over the response for a long-lived SSE answer in a client protocol (UI message stream,
 * OpenAI chunks): status 200 and `headers` at once, an SSE comment as heartbeat (both protocols'
 * parsers skip comments), closed on shutdown with the other live streams. Aborts when the
 * client goes away.
 */
export function openStreamingResponse(context: RouteContext, request: FastifyRequest, reply: FastifyReply, headers: Record<string, string>): StreamingResponse {
  if (context.live.closing) throw new ApiError('unavailable', 'shutting down', { headers: { 'retry-after': '1' } });
  const controller = new AbortController();
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
    end() {
      if (ended) return;
      ended = true;
      clearInterval(heartbeat);
      forget();
      subscriptionEnded();
      controller.abort();
      raw.end();
    },
  };
}
