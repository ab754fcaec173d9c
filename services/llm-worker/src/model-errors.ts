import { APICallError, EmptyResponseBodyError, InvalidResponseDataError, RetryError } from 'ai';
import { AbideError, EgressDeniedError, originOf, runErrorCodes, type RunErrorCode } from '@abide/shared';

/** How a failed model call is handled: retried later (transient) or final. */
export type ModelFailure = {
  retryable: boolean;
  /** Wait before the retry, from the provider's `Retry-After` (capped). */
  retryAfterMs?: number;
  /** The run's error code when final: `model_error`, or the code of an `AbideError` (`egress_denied`, `secret_not_found`). */
  code: RunErrorCode;
  /** What the tenant sees: sanitized, never a response body or an errno. */
  message: string;
  /** What the worker's log gets for operators (may quote a truncated response body); never published. */
  detail?: string;
};

export type ClassifyOptions = {
  maxRetryAfterMs: number;
  /** The model server's `scheme://host:port`, named when it cannot be reached. */
  origin?: string;
};

const transientStatuses = new Set([408, 409, 425, 429]);
const networkErrorCodes = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'ETIMEDOUT',
  'EPIPE',
  'EAI_AGAIN',
  'ENOTFOUND',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'UND_ERR_SOCKET',
  'UND_ERR_CONNECT_TIMEOUT',
  'UND_ERR_HEADERS_TIMEOUT',
  'UND_ERR_BODY_TIMEOUT',
  'UND_ERR_CLOSED',
]);
/** Words of a provider's in-stream error object that mean "try again later". */
const transientErrorWords = /overload|rate.?limit|server_error|internal_error|unavailable|timeout|capacity|try again/i;

/**
 * Sorts a model call's failure (DESIGN §4, issue 4): network errors, 408/429/5xx, overload and
 * a stream cut off before its end are transient; any other 4xx, a bad configuration and model
 * output that cannot be used are final. `maxRetryAfterMs` caps a provider's `Retry-After`, so a
 * retry stays inside the consumer's redelivery budget (and the duplicate window).
 *
 * The message is sanitized (issue 8): an HTTP status may be named, a response body never, and
 * every failure to connect (refused, reset, timeout, DNS, not HTTP) reads the same "could not
 * reach <origin>", so a failed call is no oracle for what listens behind an address.
 */
export function classifyModelError(error: unknown, options: ClassifyOptions): ModelFailure {
  const unreachable = `could not reach ${options.origin ?? 'the model server'}`;
  const denied = EgressDeniedError.find(error);
  if (denied) return { retryable: false, code: denied.code as RunErrorCode, message: denied.message };
  if (AbideError.isInstance(error)) {
    const code: RunErrorCode = (runErrorCodes as readonly string[]).includes(error.code) ? (error.code as RunErrorCode) : 'model_error';
    return { retryable: error.retryable, code, message: error.message, ...(error.retryAfterMs === undefined ? {} : { retryAfterMs: error.retryAfterMs }) };
  }
  if (RetryError.isInstance(error)) return classifyModelError(error.lastError, options);
  if (APICallError.isInstance(error)) {
    const status = error.statusCode;
    const retryable = error.isRetryable || (status !== undefined && (transientStatuses.has(status) || status >= 500));
    const origin = error.url ? originOf(error.url) : options.origin;
    const message = status === undefined ? `could not reach ${origin ?? 'the model server'}` : `HTTP ${status} from ${origin ?? 'the model server'}`;
    const detail = truncate(`${error.message}${error.responseBody ? ` — ${error.responseBody}` : ''}`, 500);
    const retryAfterMs = retryable ? retryAfterFrom(error.responseHeaders, options.maxRetryAfterMs) : undefined;
    return { retryable, code: 'model_error', message, detail, ...(retryAfterMs === undefined ? {} : { retryAfterMs }) };
  }
  if (EmptyResponseBodyError.isInstance(error)) return { retryable: true, code: 'model_error', message: 'the model server sent an empty response' };
  if (InvalidResponseDataError.isInstance(error)) {
    // The openai-compatible provider reports a stream that stopped without its final chunk
    // (a dropped connection, a restarted server) this way: the answer was cut off, not wrong.
    const cutOff = /without a finish reason/i.test(error.message);
    return {
      retryable: cutOff,
      code: 'model_error',
      message: cutOff ? 'the model server ended the stream without a finish reason' : 'the model server sent a response that is not a valid chat completion',
      detail: truncate(error.message, 500),
    };
  }
  if (isNetworkError(error, 0)) return { retryable: true, code: 'model_error', message: unreachable, detail: truncate(describe(error), 500) };
  if (isPlainObject(error)) {
    // A provider's error object sent inside the stream (`{ message, type, code }`): its type and
    // code are shown when they look like identifiers; its text only goes to the log.
    const text = [error.type, error.code, error.message].filter((part) => typeof part === 'string').join(' ');
    const identifiers = [error.type, error.code].filter((part): part is string => typeof part === 'string' && /^[A-Za-z0-9_.-]{1,64}$/.test(part));
    return {
      retryable: transientErrorWords.test(text),
      code: 'model_error',
      message: `the model server reported an error${identifiers.length > 0 ? `: ${identifiers.join(' ')}` : ''}`,
      detail: truncate(text || JSON.stringify(error), 500),
    };
  }
  // The AI SDK's own errors (`AI_JSONParseError`, `AI_TypeValidationError`, …) quote what the
  // server sent: the tenant sees their name only. Anything else is this worker's own message.
  if (error instanceof Error && error.name.startsWith('AI_')) {
    return { retryable: false, code: 'model_error', message: `the model call failed (${error.name})`, detail: truncate(describe(error), 500) };
  }
  return { retryable: false, code: 'model_error', message: truncate(describe(error), 300) };
}

/** Milliseconds from `retry-after-ms` or `retry-after` (seconds or an HTTP date), capped. */
export function retryAfterFrom(headers: Record<string, string> | undefined, maxMs: number): number | undefined {
  if (!headers) return undefined;
  const lower = Object.fromEntries(Object.entries(headers).map(([name, value]) => [name.toLowerCase(), value]));
  let ms: number | undefined;
  const millis = lower['retry-after-ms'];
  const after = lower['retry-after'];
  if (millis !== undefined && Number.isFinite(Number(millis))) ms = Number(millis);
  else if (after !== undefined && after.trim() !== '' && Number.isFinite(Number(after))) ms = Number(after) * 1_000;
  else if (after !== undefined && !Number.isNaN(Date.parse(after))) ms = Date.parse(after) - Date.now();
  if (ms === undefined) return undefined;
  return Math.round(Math.min(maxMs, Math.max(0, ms)));
}

function isNetworkError(error: unknown, depth: number): boolean {
  if (depth > 4 || !(error instanceof Error)) return false;
  const code = (error as { code?: unknown }).code;
  if (typeof code === 'string' && networkErrorCodes.has(code)) return true;
  if (error.name === 'TypeError' && /fetch failed|terminated|network|socket/i.test(error.message)) return true;
  return isNetworkError(error.cause, depth + 1);
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !(value instanceof Error) && !Array.isArray(value);
}

function describe(error: unknown): string {
  if (error instanceof Error) return `${error.name}: ${error.message}`;
  return typeof error === 'string' ? error : JSON.stringify(error) ?? String(error);
}

function truncate(text: string, max = 2_000): string {
  return text.length > max ? `${text.slice(0, max)}…` : text;
}
