import { pino } from 'pino';
import { startTracing, type StartTracingOptions, type Tracing } from '../tracing.ts';

/** A span as the tracing SDK hands it to an exporter. */
export type ExportedSpan = Parameters<Awaited<ReturnType<NonNullable<StartTracingOptions['createExporter']>>>['export']>[0][number];

/**
 * Tracing for unit tests (exported as `@abide/shared/testing`): the service's real set-up,
 * sampling every trace, exporting into `exported` in memory (on `tracing.shutdown()`: the batch
 * delay is an hour, so nothing is exported before).
 */
export async function startCapturedTracing(service: string): Promise<{ tracing: Tracing; exported: ExportedSpan[] }> {
  const exported: ExportedSpan[] = [];
  const tracing = await startTracing(
    { OTEL_SDK_DISABLED: false, OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318', OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json', OTEL_TRACES_SAMPLER: 'parentbased_always_on', OTEL_BSP_SCHEDULE_DELAY: 3_600_000 },
    service,
    pino({ level: 'silent' }),
    {
      createExporter: () => ({
        export(spans, done) {
          exported.push(...spans);
          done({ code: 0 });
        },
        async shutdown() {},
      }),
    },
  );
  return { tracing, exported };
}
