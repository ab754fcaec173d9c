import { builtinToolNames, runErrorCodes, type Metrics, type ToolDefinition } from '@abide/shared';

/**
 * A tool's metric label: its kind, never the tenant's tool name (finding 17: tenant input as a
 * label makes unbounded series). `builtin:<name>` for the fixed built-ins, `http` for HTTP tools.
 */
export function toolMetricLabel(tool: Pick<ToolDefinition, 'kind' | 'name'>): string {
  if (tool.kind === 'builtin') return (builtinToolNames as readonly string[]).includes(tool.name) ? `builtin:${tool.name}` : 'builtin:other';
  return tool.kind === 'http' ? 'http' : 'other';
}

/** An outcome label from a fixed set: the outcome kind, or a run error code (anything else is `error`). */
export function outcomeMetricLabel(outcome: string): string {
  if (['success', 'denied', 'cancelled', 'handed_back'].includes(outcome) || (runErrorCodes as readonly string[]).includes(outcome)) return outcome;
  return 'error';
}

/** The tool-worker's Prometheus series. */
export function createToolMetrics(metrics: Metrics) {
  let inFlight = 0;
  const calls = metrics.counter('tool_calls_total', 'Tool calls finished by this worker, by tool kind (builtin:<name>, http) and outcome (success, error code, cancelled)', ['tool', 'outcome']);
  const cacheHits = metrics.counter('tool_result_cache_hits_total', 'Tool requests answered from TOOL_RESULTS without executing, by tool kind', ['tool']);
  const outcomeUnknown = metrics.counter('tool_outcome_unknown_total', 'Interrupted tool calls found (stale started marker), by tool kind and policy', ['tool', 'policy']);
  const retries = metrics.counter('tool_retryable_failures_total', 'Tool calls handed back for a retry, by tool kind', ['tool']);
  const skipped = metrics.counter('tool_calls_skipped_total', 'Tool requests of cancelled runs acked without executing');
  metrics.gauge('tool_calls_in_flight', 'Tool calls executing now', () => inFlight);
  const durations = metrics.histogram(
    'tool_call_duration_seconds',
    'Tool executions (the tool running, not the queueing) by tool kind and outcome; handed_back: the worker shut down or the failure is retried',
    ['tool', 'outcome'],
  );
  return {
    /** `tool` is a `toolMetricLabel`. */
    callFinished(tool: string, outcome: string) {
      calls.inc({ tool, outcome: outcomeMetricLabel(outcome) });
    },
    cacheHit(tool: string) {
      cacheHits.inc({ tool });
    },
    outcomeUnknown(tool: string, policy: string) {
      outcomeUnknown.inc({ tool, policy });
    },
    retryableFailure(tool: string) {
      retries.inc({ tool });
    },
    skippedCancelled() {
      skipped.inc();
    },
    /** Counts the execution in flight; call the returned `ended` once with its outcome label (or `handed_back`). */
    executionStarted() {
      inFlight += 1;
      const startedAt = performance.now();
      return function ended(tool: string, outcome: string): void {
        inFlight -= 1;
        durations.observe({ tool, outcome: outcomeMetricLabel(outcome) }, (performance.now() - startedAt) / 1_000);
      };
    },
  };
}
export type ToolMetrics = ReturnType<typeof createToolMetrics>;
