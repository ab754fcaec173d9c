/**
 * Stable error codes. Public ones map to an HTTP status in one place (`httpStatusByCode`);
 * the gateway's error handler and its docs test use that registry.
 */
export const httpStatusByCode = {
  invalid_json: 400,
  invalid_request: 400,
  invalid_cursor: 400,
  invalid_args: 400,
  unauthorized: 401,
  forbidden: 403,
  agent_not_found: 404,
  run_not_found: 404,
  approval_not_found: 404,
  not_found: 404,
  method_not_allowed: 405,
  conversation_busy: 409,
  approval_conflict: 409,
  run_not_suspended: 409,
  run_finished: 409,
  cursor_expired: 410,
  run_history_pruned: 410,
  payload_too_large: 413,
  unsupported_media_type: 415,
  idempotency_key_reused: 422,
  mcp_list_failed: 422,
  upgrade_required: 426,
  rate_limited: 429,
  too_many_in_flight: 429,
  internal: 500,
  unavailable: 503,
  subscription_interrupted: 503,
} as const;
export type PublicErrorCode = keyof typeof httpStatusByCode;

/** Codes a run can fail with (`run.failed` `error.code`), and a tool call's error result (`tool.result` `error.code`). */
export const runErrorCodes = [
  'max_steps_exceeded',
  'model_error',
  'model_timeout',
  'tool_error',
  'tool_timeout',
  'tool_not_allowed',
  'tool_not_found',
  'egress_denied',
  'secret_not_found',
  'delivery_exhausted',
  'approval_timeout',
  'outcome_unknown',
  'model_output_too_large',
  'message_too_large',
  'mcp_protocol_error',
  'internal',
] as const;
export type RunErrorCode = (typeof runErrorCodes)[number];

/**
 * Internal codes, never answered over HTTP nor recorded on a run: `cancelled` (the run was
 * cancelled; in-flight work stops), `shutting_down` (the process hands its message back for
 * another instance), `not_ready` (retry later, e.g. a call owned by another worker).
 */
export type InternalErrorCode = 'invalid_message' | 'not_ready' | 'config_invalid' | 'cancelled' | 'shutting_down';
export type ErrorCode = PublicErrorCode | RunErrorCode | InternalErrorCode;

/** The one base error of Abide: a stable `code`, whether a retry may help, and the cause. */
export class AbideError extends Error {
  override readonly name: string = 'AbideError';
  readonly code: ErrorCode;
  readonly retryable: boolean;
  /** Wait before a retry, in ms (when known, e.g. from a `Retry-After`). */
  readonly retryAfterMs: number | undefined;

  constructor(code: ErrorCode, message: string, options: { retryable?: boolean; cause?: unknown; retryAfterMs?: number } = {}) {
    super(message, { cause: options.cause });
    this.code = code;
    this.retryable = options.retryable ?? false;
    this.retryAfterMs = options.retryAfterMs;
  }

  static isInstance(error: unknown): error is AbideError {
    return error instanceof AbideError;
  }
}

/** A message that cannot be parsed or does not fit its subject: terminate it, never retry. */
export class InvalidMessageError extends AbideError {
  override readonly name = 'InvalidMessageError';
  readonly subject: string;
  constructor(subject: string, message: string, cause?: unknown) {
    super('invalid_message', message, { retryable: false, cause });
    this.subject = subject;
  }
}

/**
 * The process is shutting down mid-work: the message is handed back (`nak` without delay) so
 * another instance takes it. Both workers raise this one error for it.
 */
export class ShuttingDownError extends AbideError {
  override readonly name = 'ShuttingDownError';
  constructor(message: string, cause?: unknown) {
    super('shutting_down', message, { retryable: true, retryAfterMs: 0, cause });
  }
}

/** An error of the public API; its HTTP status comes from the registry. */
export class ApiError extends AbideError {
  override readonly name = 'ApiError';
  readonly status: number;
  readonly headers: Record<string, string>;
  constructor(code: PublicErrorCode, message: string, options: { cause?: unknown; headers?: Record<string, string> } = {}) {
    super(code, message, { cause: options.cause });
    this.status = httpStatusByCode[code];
    this.headers = options.headers ?? {};
  }
}

/** Wraps anything thrown into an `Error` (for logging and for `cause`). */
export function ensureError(value: unknown): Error {
  if (value instanceof Error) return value;
  return new Error(typeof value === 'string' ? value : JSON.stringify(value));
}

/** What to do with a JetStream message whose handling threw. */
export type AckDecision = { action: 'term'; reason: string } | { action: 'nak'; delayMs: number | undefined };

/**
 * The error decides the ack (STYLE 8): a non-retryable `AbideError` → `term`; a retryable one →
 * `nak` after its delay (or the consumer's backoff); anything unknown → `nak` with backoff.
 */
export function ackDecisionFor(error: unknown): AckDecision {
  if (AbideError.isInstance(error) && !error.retryable) return { action: 'term', reason: `${error.code}: ${error.message}`.slice(0, 256) };
  if (AbideError.isInstance(error)) return { action: 'nak', delayMs: error.retryAfterMs };
  return { action: 'nak', delayMs: undefined };
}

/** True for MongoDB's duplicate-key error (E11000), the one race arbiter Abide relies on. */
export function isDuplicateKeyError(error: unknown): boolean {
  return typeof error === 'object' && error !== null && (error as { code?: unknown }).code === 11000;
}
