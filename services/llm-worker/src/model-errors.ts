import { APICallError, EmptyResponseBodyError, InvalidResponseDataError, RetryError } from 'ai';
import { AbideError } from '@abide/shared';

/** How a failed model call is handled: retried later (transient) or final. */
export type ModelFailure = {
  retryable: boolean;
  /** Wait before the retry, from the provider's `Retry-After` (capped). */
  retryAfterMs?: number;
  message: string;
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
 */
export function classifyModelError(error: unknown, options: { maxRetryAfterMs: number }): ModelFailure {
  if (AbideError.isInstance(error)) {
    return { retryable: error.retryable, message: error.message, ...(error.retryAfterMs === undefined ? {} : { retryAfterMs: error.retryAfterMs }) };
  }
  if (RetryError.isInstance(error)) return classifyModelError(error.lastError, options);
  if (APICallError.isInstance(error)) {
    const status = error.statusCode;
    const retryable = error.isRetryable || (status !== undefined && (transientStatuses.has(status) || status >= 500));
    const message = `${status === undefined ? 'request failed' : `HTTP ${status}`}: ${error.message}${error.responseBody ? ` — ${error.responseBody}` : ''}`;
    const retryAfterMs = retryable ? retryAfterFrom(error.responseHeaders, options.maxRetryAfterMs) : undefined;
    return { retryable, message: truncate(message), ...(retryAfterMs === undefined ? {} : { retryAfterMs }) };
  }
  if (EmptyResponseBodyError.isInstance(error)) return { retryable: true, message: truncate(error.message) };
  if (InvalidResponseDataError.isInstance(error)) {
    // The openai-compatible provider reports a stream that stopped without its final chunk
    // (a dropped connection, a restarted server) this way: the answer was cut off, not wrong.
    return { retryable: /without a finish reason/i.test(error.message), message: truncate(error.message) };
  }
  if (isNetworkError(error, 0)) return { retryable: true, message: truncate(describe(error)) };
  if (isPlainObject(error)) {
    // A provider's error object sent inside the stream (`{ message, type, code }`).
    const text = [error.type, error.code, error.message].filter((part) => typeof part === 'string').join(' ');
    return { retryable: transientErrorWords.test(text), message: truncate(text || JSON.stringify(error)) };
  }
  return { retryable: false, message: truncate(describe(error)) };
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
