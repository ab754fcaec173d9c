import type { ToolDefinition, ToolOutcome } from '@abide/shared';

/** One execution of a tool call. */
export type ToolInvocation = {
  runId: string;
  /** The run's tenant: `headersFromEnv` names this tenant's secrets. */
  tenantId: string;
  toolCallId: string;
  tool: ToolDefinition;
  args: unknown;
  /** Time the execution may take. */
  timeoutMs: number;
  /** Aborted when the run is cancelled or the worker shuts down. */
  signal: AbortSignal;
  /**
   * Called just before an effect outside the worker starts (an HTTP request is sent). Until then
   * the call can be handed back on shutdown as "not executed".
   */
  onExternalEffect(): void;
  /** Called when the tool reports progress (MCP progress notifications): extends the message's ack deadline. */
  onProgress?(): void;
};

/**
 * Executes a tool call. Resolves with a `success` or final `error` outcome; throws a retryable
 * `AbideError` for a transient failure, or the signal's reason when `signal` aborts.
 */
export type RunTool = (invocation: ToolInvocation) => Promise<ToolOutcome>;

/** The idempotency key of a tool call (DESIGN §5), the same on every attempt. */
export function idempotencyKeyFor(runId: string, toolCallId: string): string {
  return `${runId}:${toolCallId}`;
}

/** A final error outcome. */
export function errorOutcome(code: string, message: string): ToolOutcome {
  return { kind: 'error', error: { code, message } };
}
