import { createServer, type Server } from 'node:http';
import { ensureError } from './errors.ts';
import type { Logger } from './logger.ts';
import type { Metrics } from './metrics.ts';

/** A readiness check: resolves true when the dependency answers. */
export type ReadinessCheck = { name: string; check(): Promise<boolean> };

/**
 * The small HTTP server of the orchestrator and the workers: `/healthz` (the process is alive),
 * `/readyz` (its dependencies answer and it is not draining), `/metrics`.
 */
export function createHealthServer(options: { port: number; host: string; logger: Logger; checks: ReadinessCheck[]; metrics?: Metrics; isDraining(): boolean }) {
  let server: Server | undefined;
  async function readiness(): Promise<{ ready: boolean; checks: Record<string, boolean> }> {
    const results = await Promise.all(
      options.checks.map(async ({ name, check }) => [
        name,
        await check().catch((error: unknown) => {
          // A check that throws answers not-ready; logged so an operator sees why /readyz says 503.
          options.logger.warn({ check: name, err: ensureError(error) }, 'readiness check failed');
          return false;
        }),
      ] as const),
    );
    const checks = Object.fromEntries(results);
    return { ready: !options.isDraining() && results.every(([, ok]) => ok), checks };
  }
  return {
    readiness,
    async start(): Promise<number> {
      server = createServer((request, response) => {
        const path = (request.url ?? '/').split('?')[0];
        if (path === '/healthz') {
          response.writeHead(200, { 'content-type': 'application/json' }).end('{"status":"ok"}');
        } else if (path === '/readyz') {
          void readiness().then(({ ready, checks }) => {
            response.writeHead(ready ? 200 : 503, { 'content-type': 'application/json' }).end(JSON.stringify({ status: ready ? 'ready' : 'unavailable', checks, draining: options.isDraining() }));
          });
        } else if (path === '/metrics' && options.metrics) {
          const metrics = options.metrics;
          metrics.render().then(
            (text) => response.writeHead(200, { 'content-type': metrics.contentType }).end(text),
            (error: unknown) => {
              // A scrape that fails answers 500 and says why in the log; the next scrape tries again.
              options.logger.error({ err: ensureError(error) }, 'rendering /metrics failed');
              response.writeHead(500, { 'content-type': 'text/plain' }).end('metrics unavailable');
            },
          );
        } else {
          response.writeHead(404, { 'content-type': 'application/json' }).end('{"error":{"code":"not_found","message":"not found"}}');
        }
      });
      await new Promise<void>((resolve, reject) => {
        server!.once('error', reject);
        server!.listen(options.port, options.host, () => resolve());
      });
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : options.port;
      options.logger.info({ port }, 'health server listening');
      return port;
    },
    async stop(): Promise<void> {
      await new Promise<void>((resolve) => (server ? server.close(() => resolve()) : resolve()));
    },
  };
}

/**
 * Readiness check `jetstream`: the stream a service works on answers `STREAM.INFO` within 2 s
 * and, in a cluster, has a leader. A NATS connection alone is not enough: with a majority of a
 * cluster's nodes down the connection stays up while every publish and pull fails (quorum lost),
 * and the service then says so instead of passing its probe. False until `jsm()` is defined.
 */
export function jetStreamCheck(jsm: () => { streams: { info(stream: string): Promise<{ cluster?: { name?: string; leader?: string } }> } } | undefined, stream: string): ReadinessCheck {
  return {
    name: 'jetstream',
    async check() {
      const manager = jsm();
      if (!manager) return false;
      const timeout = AbortSignal.timeout(2_000);
      const info = await Promise.race([
        manager.streams.info(stream),
        new Promise<undefined>((resolve) => timeout.addEventListener('abort', () => resolve(undefined), { once: true })),
      ]);
      // A standalone server reports no cluster name; a cluster's stream without a leader has lost quorum.
      return info !== undefined && (!info.cluster?.name || Boolean(info.cluster.leader));
    },
  };
}
