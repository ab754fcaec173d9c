import { pino, type Logger } from 'pino';
import { activeTraceId } from './tracing.ts';

export type { Logger };

/** Paths redacted from every log line (secrets never reach the logs). */
export const redactedPaths = [
  'authorization',
  'headers.authorization',
  'req.headers.authorization',
  'request.headers.authorization',
  'apiKey',
  'password',
  'NATS_PASSWORD',
  'ABIDE_API_KEYS',
  '*.apiKey',
  '*.password',
  '*.authorization',
];

/**
 * The pino logger of a service: JSON lines with `service` bound; bind `runId`, `tenantId`, `step`
 * with `child`. A line written while a span is active (tracing on) carries its `traceId`.
 */
export function createLogger(service: string, level: string, destination?: pino.DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service, pid: process.pid },
      redact: { paths: redactedPaths, censor: '[redacted]' },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      mixin: () => {
        const traceId = activeTraceId();
        return traceId ? { traceId } : {};
      },
    },
    destination,
  );
}
