import { flushCompileCache } from 'node:module';
import { ensureError } from './errors.ts';
import type { Logger } from './logger.ts';

/**
 * SIGTERM / SIGINT drain the service (DESIGN §9): `stop` stops pulling, finishes or hands back
 * in-flight work within the grace period, closes connections; then the process exits 0.
 * A second signal exits at once with 1.
 */
export function installShutdown(options: { logger: Logger; stop(): Promise<void>; hardLimitMs: number }): void {
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals) => {
    if (stopping) {
      options.logger.warn({ signal }, 'second signal; exiting now');
      process.exit(1);
    }
    stopping = true;
    options.logger.info({ signal }, 'draining');
    const hardLimit = setTimeout(() => {
      options.logger.error('shutdown took too long; exiting');
      process.exit(1);
    }, options.hardLimitMs);
    hardLimit.unref();
    options
      .stop()
      .then(() => {
        options.logger.info('stopped');
        process.exit(0);
      })
      .catch((error: unknown) => {
        options.logger.error({ err: ensureError(error) }, 'shutdown failed');
        process.exit(1);
      });
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
}

/** Logs a fatal start-up error and exits 1 (config errors name the variable). */
export function exitOnStartupError(logger: Logger | undefined, error: unknown): never {
  const failure = ensureError(error);
  if (logger) logger.fatal({ err: failure }, 'failed to start');
  else process.stderr.write(`${failure.message}\n`);
  process.exit(1);
}

/**
 * Writes Node's module compile cache (`NODE_COMPILE_CACHE`, shared/src/node-options.ts) once the
 * service has started. Node writes it by itself only at a clean exit, so a service killed before
 * one (SIGKILL, out of memory, a crash) would leave the next start without it, loading the type
 * stripper again. Without the variable this does nothing; a failed write is silent (Node's
 * choice: the cache only saves work).
 */
export function persistCompileCache(): void {
  flushCompileCache();
}
