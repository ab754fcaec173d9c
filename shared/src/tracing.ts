import {
  context,
  isSpanContextValid,
  propagation,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
  type Attributes,
  type Context,
  type Link,
  type Span,
  type TextMapGetter,
  type TextMapSetter,
  type Tracer,
} from '@opentelemetry/api';
import type { Sampler, SpanExporter } from '@opentelemetry/sdk-trace';
import { headers as natsHeaders, type MsgHdrs } from '@nats-io/transport-node';
import type { Logger } from './logger.ts';

/**
 * Tracing (issue 10, docs/decisions.md "Operations"): OpenTelemetry spans at Abide's boundaries,
 * W3C trace context in NATS headers. Off unless an OTLP endpoint is configured: then no SDK is
 * started, the OpenTelemetry API stays a no-op, and every helper here costs a function call.
 */

export const tracesSamplers = ['always_on', 'always_off', 'traceidratio', 'parentbased_always_on', 'parentbased_always_off', 'parentbased_traceidratio'] as const;

/** What every service's config carries for tracing (the standard `OTEL_*` variables it honours). */
export type TracingSettings = {
  OTEL_SDK_DISABLED: boolean;
  OTEL_SERVICE_NAME?: string | undefined;
  OTEL_EXPORTER_OTLP_ENDPOINT?: string | undefined;
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT?: string | undefined;
  OTEL_EXPORTER_OTLP_PROTOCOL: 'http/protobuf' | 'http/json';
  OTEL_TRACES_SAMPLER: (typeof tracesSamplers)[number];
  OTEL_TRACES_SAMPLER_ARG?: number | undefined;
  /** Milliseconds between two exports of the batch span processor. */
  OTEL_BSP_SCHEDULE_DELAY: number;
};

/** The tracer name of every Abide span. */
export const tracerName = 'abide';

/** The tracer spans are started with: the provider `startTracing` registered, else the API's no-op. */
export function abideTracer(): Tracer {
  return trace.getTracer(tracerName);
}

/**
 * The OTLP/HTTP traces URL: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` as is, else
 * `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces` (the OTLP exporter specification); undefined when
 * tracing is off (no endpoint, or `OTEL_SDK_DISABLED=true`).
 */
export function tracesUrl(settings: TracingSettings): string | undefined {
  if (settings.OTEL_SDK_DISABLED) return undefined;
  if (settings.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) return settings.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT;
  if (settings.OTEL_EXPORTER_OTLP_ENDPOINT) return `${settings.OTEL_EXPORTER_OTLP_ENDPOINT.replace(/\/+$/, '')}/v1/traces`;
  return undefined;
}

type SdkTrace = typeof import('@opentelemetry/sdk-trace');

function samplerOf(settings: TracingSettings, { AlwaysOnSampler, AlwaysOffSampler, ParentBasedSampler, TraceIdRatioBasedSampler }: SdkTrace): Sampler {
  const ratio = new TraceIdRatioBasedSampler(settings.OTEL_TRACES_SAMPLER_ARG ?? 1);
  switch (settings.OTEL_TRACES_SAMPLER) {
    case 'always_on':
      return new AlwaysOnSampler();
    case 'always_off':
      return new AlwaysOffSampler();
    case 'traceidratio':
      return ratio;
    case 'parentbased_always_on':
      return new ParentBasedSampler({ root: new AlwaysOnSampler() });
    case 'parentbased_always_off':
      return new ParentBasedSampler({ root: new AlwaysOffSampler() });
    case 'parentbased_traceidratio':
      return new ParentBasedSampler({ root: ratio });
  }
}

/** The OTLP/HTTP exporter for `protocol`, loaded only when tracing is on. */
async function createOtlpExporter(url: string, protocol: TracingSettings['OTEL_EXPORTER_OTLP_PROTOCOL']): Promise<SpanExporter> {
  if (protocol === 'http/json') {
    const { OTLPTraceExporter } = await import('@opentelemetry/exporter-trace-otlp-http');
    return new OTLPTraceExporter({ url });
  }
  const { OTLPTraceExporter } = await import('@opentelemetry/exporter-trace-otlp-proto');
  return new OTLPTraceExporter({ url });
}

export type Tracing = {
  /** False when no endpoint is configured: nothing was started or registered. */
  readonly enabled: boolean;
  /** Exports the spans still buffered, then unregisters the provider (graceful shutdown). */
  shutdown(): Promise<void>;
};

export type StartTracingOptions = {
  /** Builds the span exporter (tests); @default the OTLP/HTTP exporter of `OTEL_EXPORTER_OTLP_PROTOCOL` */
  createExporter?: (url: string, protocol: TracingSettings['OTEL_EXPORTER_OTLP_PROTOCOL']) => SpanExporter | Promise<SpanExporter>;
};

/**
 * Starts tracing for a service's process, from its composition root: a tracer provider with a
 * batch span processor and the OTLP exporter, registered as the OpenTelemetry API's global
 * provider with the W3C trace-context propagator and an AsyncLocalStorage context manager. The
 * API's globals are the one place spans and contexts meet across modules (a span started in a
 * consumer is the parent of the publishes its handler makes); they are set here once, and
 * unset by `shutdown`. With no endpoint configured nothing is created or even loaded (`enabled` false).
 */
export async function startTracing(settings: TracingSettings, service: string, logger: Logger, options: StartTracingOptions = {}): Promise<Tracing> {
  const url = tracesUrl(settings);
  if (!url) return { enabled: false, shutdown: async () => {} };
  const [sdk, { resourceFromAttributes }, { AsyncLocalStorageContextManager }, { W3CTraceContextPropagator }, { ATTR_SERVICE_NAME }] = await Promise.all([
    import('@opentelemetry/sdk-trace'),
    import('@opentelemetry/resources'),
    import('@opentelemetry/context-async-hooks'),
    import('@opentelemetry/core'),
    import('@opentelemetry/semantic-conventions'),
  ]);
  const exporter = await (options.createExporter ?? createOtlpExporter)(url, settings.OTEL_EXPORTER_OTLP_PROTOCOL);
  const provider = new sdk.TracerProvider({
    resource: resourceFromAttributes({ [ATTR_SERVICE_NAME]: settings.OTEL_SERVICE_NAME ?? service }),
    sampler: samplerOf(settings, sdk),
    spanProcessors: [new sdk.BatchSpanProcessor({ exporter, scheduledDelayMillis: settings.OTEL_BSP_SCHEDULE_DELAY })],
  });
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  trace.setGlobalTracerProvider(provider);
  logger.info({ url, protocol: settings.OTEL_EXPORTER_OTLP_PROTOCOL, sampler: settings.OTEL_TRACES_SAMPLER }, 'tracing on');
  return {
    enabled: true,
    async shutdown() {
      try {
        await provider.shutdown();
      } catch (error) {
        // Spans lost at exit are not worth failing the shutdown for; say so.
        logger.warn({ err: error }, 'could not export the last spans');
      }
      trace.disable();
      propagation.disable();
      context.disable();
    },
  };
}

// ------------------------------------------------------------------------------ trace context

const natsHeaderSetter: TextMapSetter<MsgHdrs> = {
  set: (carrier, key, value) => carrier.set(key, value),
};
const natsHeaderGetter: TextMapGetter<MsgHdrs | undefined> = {
  get: (carrier, key) => carrier?.get(key) || undefined,
  keys: (carrier) => carrier?.keys() ?? [],
};

/** Sets the trace-context headers (`traceparent`, `tracestate`) of `parent` on `headers`, creating them if there are any to set. */
export function injectTraceHeaders(parent: Context, headers: MsgHdrs | undefined): MsgHdrs | undefined {
  const fields: Record<string, string> = {};
  propagation.inject(parent, fields);
  const keys = Object.keys(fields);
  if (keys.length === 0) return headers;
  const target = headers ?? natsHeaders();
  for (const key of keys) natsHeaderSetter.set(target, key, fields[key]!);
  return target;
}

/** The context a message's trace-context headers carry (the root context when none). */
export function extractTraceContext(headers: MsgHdrs | undefined): Context {
  if (!headers) return ROOT_CONTEXT;
  return propagation.extract(ROOT_CONTEXT, headers, natsHeaderGetter);
}

/** The `traceparent` of the span active in `parent` (what a transition stores to carry its run's trace); undefined when tracing is off. */
export function traceparentOf(parent: Context = context.active()): string | undefined {
  const fields: Record<string, string> = {};
  propagation.inject(parent, fields);
  return fields.traceparent;
}

/** `{ traceparent }` of the active span, or nothing: for spreading into a stored document (MongoDB would store an undefined field as null). */
export function traceparentField(parent: Context = context.active()): { traceparent?: string } {
  const traceparent = traceparentOf(parent);
  return traceparent ? { traceparent } : {};
}

/** `{ traceparent }` of `span`, or nothing when tracing is off. */
export function spanTraceparentField(span: Span): { traceparent?: string } {
  return traceparentField(trace.setSpan(ROOT_CONTEXT, span));
}

/** The active trace context (where a handler runs: its message's, see `createConsumerRunner`). */
export function activeTraceContext(): Context {
  return context.active();
}

/** The context of a stored `traceparent` (the root context when none, or when tracing is off). */
export function contextFromTraceparent(traceparent: string | undefined): Context {
  if (!traceparent) return ROOT_CONTEXT;
  return propagation.extract(ROOT_CONTEXT, { traceparent });
}

/** The span active now, if any (tracing off: none that records). */
export function activeSpan(): Span | undefined {
  return trace.getActiveSpan();
}

/** The trace id of the span active now, for log lines; undefined when none. */
export function activeTraceId(): string | undefined {
  const spanContext = trace.getActiveSpan()?.spanContext();
  return spanContext && isSpanContextValid(spanContext) ? spanContext.traceId : undefined;
}

/** The link to the span a context carries (for a span that continues another trace), if any. */
export function linkTo(other: Context, attributes?: Attributes): Link[] {
  const spanContext = trace.getSpanContext(other);
  return spanContext && isSpanContextValid(spanContext) ? [{ context: spanContext, ...(attributes ? { attributes } : {}) }] : [];
}

/** Records `error` on `span` and marks it failed. */
export function recordSpanError(span: Span, error: unknown): void {
  const exception = error instanceof Error ? error : new Error(String(error));
  span.recordException(exception);
  span.setStatus({ code: SpanStatusCode.ERROR, message: exception.message.slice(0, 200) });
}

/**
 * The attributes every worker span of a run's step starts with (`llm.step`, `tool.call`): the
 * run, its tenant, the step and the delivery attempt. Bounded: never arguments or contents.
 */
export function stepDeliveryAttributes(delivery: { message: { runId: string; tenantId: string; payload: { step: number } }; deliveryCount: number }) {
  const { runId, tenantId, payload } = delivery.message;
  return { 'abide.run.id': runId, 'abide.tenant.id': tenantId, 'abide.run.step': payload.step, 'abide.attempt': delivery.deliveryCount };
}

/**
 * Runs `work` inside a new span (active for everything `work` awaits), ending it when `work`
 * settles; a throw is recorded on the span (status ERROR) and rethrown.
 */
export async function inSpan<T>(
  name: string,
  options: { kind?: SpanKind; attributes?: Attributes; links?: Link[]; parent?: Context },
  work: (span: Span) => Promise<T>,
): Promise<T> {
  const parent = options.parent ?? context.active();
  const span = abideTracer().startSpan(
    name,
    { kind: options.kind ?? SpanKind.INTERNAL, ...(options.attributes ? { attributes: options.attributes } : {}), ...(options.links ? { links: options.links } : {}) },
    parent,
  );
  try {
    return await context.with(trace.setSpan(parent, span), () => work(span));
  } catch (error) {
    recordSpanError(span, error);
    throw error;
  } finally {
    span.end();
  }
}

/**
 * The span name of a publish to `subject`: its kind, without the ids it carries (run ids,
 * tenant ids and tool names would make span names unbounded).
 */
export function publishSpanName(subject: string): string {
  const tokens = subject.split('.');
  if (tokens[0] === 'run' && tokens[1] === 'in') return `publish run.in ${tokens[3] ?? ''}`.trimEnd();
  if (tokens[0] === 'run' || tokens[0] === 'llm' || tokens[0] === 'tool') return `publish ${tokens[0]}.${tokens[1] ?? ''}`;
  return `publish ${tokens[0] ?? ''}`;
}

export { SpanKind, SpanStatusCode, type Context as TraceContext, type Span };
