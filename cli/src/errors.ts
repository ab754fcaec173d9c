import type { PublicErrorCode } from '@abide/shared';

/** Exit codes scripts can rely on (documented in cli/README.md and the README). */
export const exitCodes = {
  ok: 0,
  /** Something unexpected: a 500, a bug, an answer that is not the API's. */
  failure: 1,
  /** Bad arguments, or a request the API refused as invalid (400, 413, 415). */
  usage: 2,
  /** The API key is missing or refused (401), or the origin is forbidden (403). */
  unauthorized: 3,
  /** No such agent, run or pending call for this key's tenant (404). */
  notFound: 4,
  /** A conflict: busy conversation, decided or finished run, reused idempotency key, expired cursor (409, 410, 422). */
  conflict: 5,
  /** Try again later: rate limited, gateway not ready, or the gateway cannot be reached (429, 503, network). */
  unavailable: 6,
  /** `--follow` / `runs follow`: the run failed. */
  runFailed: 10,
  /** `--follow` / `runs follow`: the run was cancelled. */
  runCancelled: 11,
} as const;
export type ExitCode = (typeof exitCodes)[keyof typeof exitCodes];

/** What the CLI says and does for each public error code of the API. */
export const errorCodeGuide: Record<PublicErrorCode, { exit: ExitCode; hint: string }> = {
  invalid_json: { exit: exitCodes.usage, hint: 'the request body is not valid JSON' },
  invalid_request: { exit: exitCodes.usage, hint: 'the API refused the request as invalid' },
  invalid_cursor: { exit: exitCodes.usage, hint: 'the cursor was not returned by this API' },
  invalid_args: { exit: exitCodes.usage, hint: "the arguments do not match the tool's input schema" },
  unauthorized: { exit: exitCodes.unauthorized, hint: 'check ABIDE_API_KEY (or --api-key)' },
  forbidden: { exit: exitCodes.unauthorized, hint: 'the gateway refused this client' },
  agent_not_found: { exit: exitCodes.notFound, hint: 'no such agent for this API key (abide agents put <file.json> creates one)' },
  run_not_found: { exit: exitCodes.notFound, hint: 'no such run for this API key' },
  approval_not_found: { exit: exitCodes.notFound, hint: 'no such pending tool call (see abide approvals)' },
  not_found: { exit: exitCodes.notFound, hint: 'no such endpoint: is ABIDE_URL an Abide gateway?' },
  method_not_allowed: { exit: exitCodes.failure, hint: 'the endpoint does not take this method: is the CLI as new as the gateway?' },
  conversation_busy: { exit: exitCodes.conflict, hint: 'another run of this conversation is active; wait for it or cancel it' },
  approval_conflict: { exit: exitCodes.conflict, hint: 'this call was already decided differently' },
  run_not_suspended: { exit: exitCodes.conflict, hint: 'the run is not waiting for an approval' },
  run_finished: { exit: exitCodes.conflict, hint: 'the run has already ended' },
  cursor_expired: { exit: exitCodes.conflict, hint: "the run's events are older than the retention; abide runs get shows its state" },
  run_history_pruned: { exit: exitCodes.conflict, hint: "the run's history was deleted after the retention (RUN_RETENTION); abide runs get shows its state" },
  payload_too_large: { exit: exitCodes.usage, hint: 'the request is larger than the gateway accepts (MAX_BODY_BYTES)' },
  unsupported_media_type: { exit: exitCodes.usage, hint: 'the gateway expects application/json' },
  idempotency_key_reused: { exit: exitCodes.conflict, hint: 'this Idempotency-Key was used with another request' },
  mcp_list_failed: { exit: exitCodes.usage, hint: "the agent's MCP server could not be listed (its url, TOOL_EGRESS_ALLOW, or the secrets its headers name)" },
  upgrade_required: { exit: exitCodes.failure, hint: 'the endpoint is a WebSocket: connect with a WebSocket client' },
  rate_limited: { exit: exitCodes.unavailable, hint: 'too many requests; try again shortly' },
  too_many_in_flight: { exit: exitCodes.unavailable, hint: 'too many WebSocket frames in flight on one connection; wait for answers, then resend' },
  internal: { exit: exitCodes.failure, hint: 'the gateway failed; its logs have the details' },
  unavailable: { exit: exitCodes.unavailable, hint: 'the gateway is not ready or is shutting down; try again shortly' },
  subscription_interrupted: { exit: exitCodes.unavailable, hint: "the run's event stream could not be resumed (NATS unavailable); follow it again with the last seq (--after)" },
};

/** A failure the CLI reports and exits with. */
export class CliError extends Error {
  override readonly name = 'CliError';
  readonly exitCode: ExitCode;
  readonly code: string;
  constructor(code: string, message: string, exitCode: ExitCode) {
    super(message);
    this.code = code;
    this.exitCode = exitCode;
  }
}

/** The CLI error for an API error answer `{ error: { code, message } }` with `status`. */
export function fromApiError(status: number, code: string | undefined, message: string | undefined): CliError {
  const guide = code === undefined ? undefined : (errorCodeGuide as Record<string, { exit: ExitCode; hint: string }>)[code];
  if (guide) return new CliError(code!, `${message ?? code} (${code}: ${guide.hint})`, guide.exit);
  const exit = status === 401 ? exitCodes.unauthorized : status === 404 ? exitCodes.notFound : status >= 500 ? exitCodes.unavailable : exitCodes.failure;
  return new CliError(code ?? `http_${status}`, `HTTP ${status}${message ? `: ${message}` : ''}`, exit);
}
