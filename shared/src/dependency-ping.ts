import { ensureError } from './errors.ts';
import type { Logger } from './logger.ts';

/**
 * Pings a dependency for a readiness answer: true when it answers. A ping that throws answers
 * not-ready, and the reason is logged (warn) so an operator sees why `/readyz` says 503.
 */
export async function pingDependency(name: string, ping: () => Promise<boolean>, logger: Logger): Promise<boolean> {
  try {
    return await ping();
  } catch (error) {
    // Converted to "not ready" (the probe's answer), logged so the cause is not lost.
    logger.warn({ dependency: name, err: ensureError(error) }, 'readiness ping failed');
    return false;
  }
}
