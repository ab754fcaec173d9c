import { InMemorySpanExporter, type ReadableSpan } from '@opentelemetry/sdk-trace';
import { SpanKind } from '@opentelemetry/api';
import { pino } from 'pino';
import { describe, expect, it, vi } from 'vitest';
import { loadConfig, orchestratorEnvSchema } from './config.ts';
import { createLogger } from './logger.ts';
import { publishOutbox } from './outbox-publisher.ts';
import type { RunState } from './run-state.ts';
import type { TransitionDocument } from './run-store.ts';
import { inSpan, spanTraceparentField, startTracing, traceparentOf, tracesUrl } from './tracing.ts';

const silent = pino({ level: 'silent' });
const settings = (env: Record<string, string>) => loadConfig(orchestratorEnvSchema, env);

describe('tracing off by default (issue 10)', () => {
  it('creates no exporter and registers nothing without an endpoint, or when OTEL_SDK_DISABLED', async () => {
    const createExporter = vi.fn(() => new InMemorySpanExporter());
    const environments: Record<string, string>[] = [{}, { OTEL_SDK_DISABLED: 'true', OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318' }];
    for (const env of environments) {
      const tracing = await startTracing(settings(env), 'orchestrator', silent, { createExporter });
      expect(tracing.enabled).toBe(false);
      // The API stays a no-op: a span carries no context to propagate, nothing is stored with a transition.
      const traceparent = await inSpan('work', {}, async (span) => spanTraceparentField(span).traceparent ?? traceparentOf());
      expect(traceparent).toBeUndefined();
      await tracing.shutdown();
    }
    expect(createExporter).not.toHaveBeenCalled();
  });

  it('sends spans to <endpoint>/v1/traces, or to the traces endpoint as is', () => {
    expect(tracesUrl(settings({}))).toBeUndefined();
    expect(tracesUrl(settings({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318/' }))).toBe('http://collector:4318/v1/traces');
    expect(tracesUrl(settings({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://a:4318', OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'http://b:9999/traces' }))).toBe('http://b:9999/traces');
    expect(() => settings({ OTEL_EXPORTER_OTLP_PROTOCOL: 'grpc' })).toThrow(/OTEL_EXPORTER_OTLP_PROTOCOL/);
  });
});

describe('tracing on', () => {
  it('republishes an outbox in the trace stored with its transition, flushes on shutdown, and unregisters', async () => {
    const exporter = new InMemorySpanExporter();
    const createExporter = vi.fn(() => exporter);
    const tracing = await startTracing(settings({ OTEL_EXPORTER_OTLP_ENDPOINT: 'http://collector:4318', OTEL_BSP_SCHEDULE_DELAY: '3600000' }), 'orchestrator', silent, {
      createExporter,
    });
    expect(createExporter).toHaveBeenCalledWith('http://collector:4318/v1/traces', 'http/protobuf');
    // The span of the step that committed the transition (in a process that then died).
    const stored = await inSpan('run.transition', {}, async (span) => spanTraceparentField(span));
    expect(stored.traceparent).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
    const [, traceId, spanId] = stored.traceparent!.split('-');

    // A sweeper republishes it later, with no trace context of its own.
    const sent: { subject: string; traceparent: string | undefined }[] = [];
    const js = {
      async publish(subject: string, _data: Uint8Array, options: { headers?: { get(key: string): string } }) {
        sent.push({ subject, traceparent: options.headers?.get('traceparent') || undefined });
        return { stream: 'S', seq: sent.length, duplicate: false };
      },
    };
    const transition = {
      _id: 'run_1:2',
      runId: 'run_1',
      tenantId: 't1',
      version: 2,
      at: new Date(),
      cause: 'm',
      state: {} as RunState,
      outbox: [{ kind: 'inbox', inboxKind: 'start', payload: {} }],
      published: false,
      ...stored,
    } satisfies TransitionDocument;
    await publishOutbox({ js: js as never }, transition);
    expect(sent).toHaveLength(1);
    expect(sent[0]!.traceparent?.split('-')[1]).toBe(traceId);

    // Logged inside a span: the line names the trace.
    const lines: string[] = [];
    const logger = createLogger('orchestrator', 'info', { write: (line: string) => lines.push(line) });
    await inSpan('logged', {}, async () => logger.info('inside'));
    logger.info('outside');
    expect(JSON.parse(lines[0]!).traceId).toMatch(/^[0-9a-f]{32}$/);
    expect(JSON.parse(lines[1]!).traceId).toBeUndefined();

    // Nothing exported before the (hour-long) batch delay; shutdown flushes.
    expect(exporter.getFinishedSpans()).toHaveLength(0);
    const exported: ReadableSpan[] = [];
    const original = exporter.export.bind(exporter);
    exporter.export = (spans, done) => {
      exported.push(...spans);
      original(spans, done);
    };
    await tracing.shutdown();
    const publish = exported.find((span) => span.name === 'publish run.in start')!;
    expect(publish.kind).toBe(SpanKind.PRODUCER);
    expect(publish.spanContext().traceId).toBe(traceId);
    expect(publish.parentSpanContext?.spanId).toBe(spanId);
    expect(publish.attributes).toMatchObject({ 'messaging.system': 'nats', 'messaging.message.id': 'run_1:2:0' });
    expect(sent[0]!.traceparent?.split('-')[2]).toBe(publish.spanContext().spanId);
    expect(publish.resource.attributes['service.name']).toBe('orchestrator');
    // Unregistered: back to the no-op API.
    expect(await inSpan('after', {}, async (span) => spanTraceparentField(span).traceparent)).toBeUndefined();
  });
});
