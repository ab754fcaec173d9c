import { createServer, type Server } from 'node:http';
import { ensureError } from './errors.ts';
import type { Logger } from './logger.ts';
import type { Metrics } from './metrics.ts';

/** A readiness check: resolves true when the dependency answers. */
export type ReadinessCheck = { name: string; check(): Promise<boolean> };

/** What `/readyz` answers, in every service. */
export type ReadinessReport = { ready: boolean; checks: Record<string, boolean>; draining: boolean };

/** How long a dependency may take to answer a readiness check. */
const checkTimeoutMs = 2_000;

/** Resolves `promise`, or `undefined` when it has not settled within `checkTimeoutMs`. */
async function withinCheckTimeout<T>(promise: Promise<T>): Promise<T | undefined> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<undefined>((resolve) => (timer = setTimeout(() => resolve(undefined), checkTimeoutMs)));
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Readiness check `nats`: the connection is open, not draining, and answers a round trip within
 * 2 s (while disconnected the round trip waits for the reconnect, so it does not answer).
 */
export function natsCheck(connection: () => { isClosed(): boolean; isDraining(): boolean; rtt(): Promise<number> } | undefined): ReadinessCheck {
  return {
    name: 'nats',
    async check() {
      const current = connection();
      if (!current || current.isClosed() || current.isDraining()) return false;
      return (await withinCheckTimeout(current.rtt().then(() => true))) === true;
    },
  };
}

/** Readiness check `mongodb`: the database answers `ping` with `ok: 1` within 2 s. */
export function mongoCheck(db: () => { command(command: { ping: 1 }): Promise<{ ok?: unknown }> } | undefined): ReadinessCheck {
  return {
    name: 'mongodb',
    async check() {
      const current = db();
      if (!current) return false;
      const answer = await withinCheckTimeout(current.command({ ping: 1 }));
      return answer?.ok === 1;
    },
  };
}

/**
 * The one readiness rule of every service (issue 10, finding 2). Ready when:
 * - `nats`: the connection answers a round trip (`natsCheck`);
 * - `jetstream`: the service's stream answers with a leader (`jetStreamCheck`);
 * - `mongodb` (gateway, orchestrator): MongoDB answers `ping` (`mongoCheck`);
 * - `consumers` (orchestrator, workers): every durable it consumes is supervised and consuming,
 *   or, having consumed before, restarting for less than the supervision's grace
 *   (`ConsumerSupervision.check`);
 * - and the process is not draining.
 * A check that throws counts as not ready, and why is logged.
 */
export function createReadiness(options: {
  logger: Logger;
  isDraining(): boolean;
  nats: ReadinessCheck;
  jetstream: ReadinessCheck;
  mongodb?: ReadinessCheck;
  consumers?: ReadinessCheck;
}): () => Promise<ReadinessReport> {
  const checks = [options.nats, options.jetstream, options.mongodb, options.consumers].filter((check): check is ReadinessCheck => check !== undefined);
  return async () => {
    const results = await Promise.all(
      checks.map(async ({ name, check }) => [
        name,
        await check().catch((error: unknown) => {
          // A check that throws answers not-ready; logged so an operator sees why /readyz says 503.
          options.logger.warn({ check: name, err: ensureError(error) }, 'readiness check failed');
          return false;
        }),
      ] as const),
    );
    const draining = options.isDraining();
    return { ready: !draining && results.every(([, ok]) => ok), checks: Object.fromEntries(results), draining };
  };
}

/**
 * The small HTTP server of the orchestrator and the workers: `/healthz` (the process is alive),
 * `/readyz` (`createReadiness`), `/metrics`.
 */
export function createHealthServer(options: { port: number; host: string; logger: Logger; readiness: () => Promise<ReadinessReport>; metrics?: Metrics }) {
  let server: Server | undefined;
  const { readiness } = options;
  return {
    readiness,
    async start(): Promise<number> {
      server = createServer((request, response) => {
        const path = (request.url ?? '/').split('?')[0];
        if (path === '/healthz') {
          response.writeHead(200, { 'content-type': 'application/json' }).end('{"status":"ok"}');
        } else if (path === '/readyz') {
          void readiness().then(({ ready, checks, draining }) => {
            response.writeHead(ready ? 200 : 503, { 'content-type': 'application/json' }).end(JSON.stringify({ status: ready ? 'ready' : 'unavailable', checks, draining }));
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
