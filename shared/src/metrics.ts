import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';

/**
 * Label values of one series. Every label set is bounded (a method, a route pattern, a tool
 * kind, an error code, a durable name): never a value taken from tenant input.
 */
type Labels = Record<string, string>;

/** Buckets (seconds) of the duration histograms: 5 ms to 10 min, for HTTP requests up to tool calls. */
export const durationBuckets = [0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 180, 600] as const;

/**
 * How often (ms) the event-loop lag histogram (`nodejs_eventloop_lag_*_seconds`) samples the
 * loop. A stall still shows in full (it delays the pending sample); the lag gauges read from the
 * histogram include this interval (an idle loop's `p50` is about 0.1 s).
 */
export const eventLoopSampleMs = 100;

/**
 * One process's metrics: a `prom-client` `Registry` built in the service's `main.ts` and passed
 * down (never a module singleton), behind the small interface the services use. Names get the
 * `abide_` prefix. A counter or gauge created without `labelNames` takes the label names of its
 * first use (call sites that predate declared labels keep working); a later use with other
 * names throws (prom-client refuses it), which a test catches.
 */
export function createMetrics(options: { prefix?: string; processMetrics?: boolean } = {}) {
  const prefix = options.prefix ?? 'abide_';
  const registry = new Registry();
  const collectors: (() => Promise<void>)[] = [];
  // Process metrics (memory, CPU, event-loop lag), read at scrape time. The lag histogram samples
  // every `eventLoopSampleMs` (prom-client's 10 ms default wakes an idle process 100 times a
  // second: ~0.3% of a core per process, most of an idle service's CPU; docs/decisions.md).
  if (options.processMetrics ?? true) collectDefaultMetrics({ register: registry, eventLoopMonitoringPrecision: eventLoopSampleMs });

  function lazily<Metric>(build: (labelNames: string[]) => Metric, labelNames: readonly string[] | undefined) {
    let metric = labelNames ? build([...labelNames]) : undefined;
    return (labels: Labels): Metric => (metric ??= build(Object.keys(labels).sort()));
  }

  return {
    registry,
    counter(name: string, help: string, labelNames?: readonly string[]) {
      const get = lazily((names) => new Counter({ name: prefix + name, help, labelNames: names, registers: [registry] }), labelNames);
      return {
        inc(labels: Labels = {}, by = 1) {
          get(labels).inc(labels, by);
        },
      };
    },
    gauge(name: string, help: string, collect?: () => number, labelNames?: readonly string[]) {
      const get = lazily(
        (names) =>
          new Gauge({
            name: prefix + name,
            help,
            labelNames: names,
            registers: [registry],
            ...(collect
              ? {
                  collect(this: Gauge) {
                    this.set(collect());
                  },
                }
              : {}),
          }),
        collect ? [] : labelNames,
      );
      return {
        set(value: number, labels: Labels = {}) {
          get(labels).set(labels, value);
        },
        /** Drops every series (e.g. before setting the current set of durables again). */
        reset() {
          get({}).reset();
        },
      };
    },
    histogram(name: string, help: string, labelNames: readonly string[] = [], buckets: readonly number[] = durationBuckets) {
      const histogram = new Histogram({ name: prefix + name, help, labelNames: [...labelNames], buckets: [...buckets], registers: [registry] });
      return {
        /** Records one duration, in seconds. */
        observe(labels: Labels, seconds: number) {
          histogram.observe(labels, seconds);
        },
      };
    },
    /** Runs `collect` before every scrape (e.g. reads consumer info); its failure is its own to log. */
    beforeScrape(collect: () => Promise<void>) {
      collectors.push(collect);
    },
    /** The Prometheus text format of every metric. */
    async render(): Promise<string> {
      await Promise.all(collectors.map((collect) => collect()));
      return registry.metrics();
    },
    contentType: registry.contentType,
  };
}
export type Metrics = ReturnType<typeof createMetrics>;
/** A histogram of `Metrics` (e.g. the orchestrator's commit latency, exported for its commit path). */
export type MetricsHistogram = ReturnType<Metrics['histogram']>;
/** A counter of `Metrics`. */
export type MetricsCounter = ReturnType<Metrics['counter']>;
