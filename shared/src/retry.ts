import { ConfigError } from './config.ts';
import type { Logger } from './logger.ts';

/** Resolves after `ms`, or rejects with the signal's reason when `signal` aborts. */
export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(signal.reason);
      return;
    }
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * Runs `operation` until it succeeds, waiting `min(maxMs, baseMs × 2^attempt)` (with jitter)
 * between attempts and logging each failure; stops when `signal` aborts. A `ConfigError` (a
 * configuration that can never work) is thrown at once. Used at start-up, so a service started
 * before NATS or MongoDB waits for them instead of exiting (DESIGN §9).
 */
export async function retryWithBackoff<T>(
  what: string,
  operation: () => Promise<T>,
  options: { logger: Logger; signal: AbortSignal; baseMs?: number; maxMs?: number },
): Promise<T> {
  const baseMs = options.baseMs ?? 250;
  const maxMs = options.maxMs ?? 10_000;
  for (let attempt = 0; ; attempt += 1) {
    options.signal.throwIfAborted();
    try {
      return await operation();
    } catch (error) {
      if (options.signal.aborted || error instanceof ConfigError) throw error;
      const delayMs = Math.round(Math.min(maxMs, baseMs * 2 ** attempt) * (0.5 + Math.random() / 2));
      options.logger.warn({ err: error, attempt: attempt + 1, retryInMs: delayMs }, `${what} failed; retrying`);
      await sleep(delayMs, options.signal);
    }
  }
}
