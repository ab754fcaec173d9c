import type { Metrics } from '@abide/shared';

/** The tool-worker's Prometheus series. */
export function createToolMetrics(metrics: Metrics) {
  let inFlight = 0;
  const calls = metrics.counter('tool_calls_total', 'Tool calls finished by this worker, by tool and outcome (success, error code, cancelled)');
  const cacheHits = metrics.counter('tool_result_cache_hits_total', 'Tool requests answered from TOOL_RESULTS without executing, by tool');
  const outcomeUnknown = metrics.counter('tool_outcome_unknown_total', 'Interrupted tool calls found (stale started marker), by tool and policy');
  const retries = metrics.counter('tool_retryable_failures_total', 'Tool calls handed back for a retry, by tool');
  const skipped = metrics.counter('tool_calls_skipped_total', 'Tool requests of cancelled runs acked without executing');
  metrics.gauge('tool_calls_in_flight', 'Tool calls executing now', () => inFlight);
  return {
    callFinished(tool: string, outcome: string) {
      calls.inc({ tool, outcome });
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
    executionStarted() {
      inFlight += 1;
    },
    executionEnded() {
      inFlight -= 1;
    },
  };
}
export type ToolMetrics = ReturnType<typeof createToolMetrics>;
