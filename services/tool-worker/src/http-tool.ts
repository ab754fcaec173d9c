import { AbideError, type ToolOutcome } from '@abide/shared';
import { isEgressAllowed } from './egress.ts';
import { errorOutcome, idempotencyKeyFor, type ToolInvocation } from './tool-invocation.ts';

export type HttpToolOptions = {
  /** `TOOL_EGRESS_ALLOW`: the hosts HTTP tools may call (see `egress.ts`). */
  egressAllow: readonly string[];
  /** The worker's environment, for `headersFromEnv` (header → variable name). */
  environment: Readonly<Record<string, string | undefined>>;
  /** Largest response body accepted. @default 1048576 (1 MiB) */
  maxResponseBytes?: number;
  /** Longest `Retry-After` honoured (longer ones are cut to this). @default 60000 */
  maxRetryAfterMs?: number;
  /** Characters of an error response's body quoted in the error message. @default 500 */
  errorBodyChars?: number;
  fetch?: typeof globalThis.fetch;
};

/**
 * HTTP tools (DESIGN §8): the call's args go as JSON to `tool.http.url` with the call's
 * `Idempotency-Key` (`<runId>:<toolCallId>`, the same on every attempt).
 *
 * - 2xx → success: the JSON body (a body that is not JSON → `{ text }`, an empty one → `null`).
 * - 408, 429, 5xx, network failure → a retryable `tool_error` (honouring `Retry-After`).
 * - other 4xx, any 3xx (redirects are never followed: a redirect could leave the egress allow
 *   list), a body over the size limit, a missing `headersFromEnv` variable → final `tool_error`.
 * - a host outside `TOOL_EGRESS_ALLOW` → final `tool_not_allowed`; the timeout → final `tool_timeout`.
 * - the invocation's signal aborting → its reason is thrown.
 */
export function createHttpTool(options: HttpToolOptions) {
  const maxResponseBytes = options.maxResponseBytes ?? 1_048_576;
  const maxRetryAfterMs = options.maxRetryAfterMs ?? 60_000;
  const errorBodyChars = options.errorBodyChars ?? 500;
  const fetchImplementation = options.fetch ?? globalThis.fetch;

  async function run(invocation: ToolInvocation): Promise<ToolOutcome> {
    const { tool, signal } = invocation;
    signal.throwIfAborted();
    if (!tool.http) return errorOutcome('tool_error', `tool "${tool.name}" has no http configuration`);
    const { url, method } = tool.http;
    if (!isEgressAllowed(url, options.egressAllow)) {
      return errorOutcome('tool_not_allowed', `calls to ${describeDestination(url)} are not allowed (TOOL_EGRESS_ALLOW)`);
    }
    const headers = new Headers();
    for (const [name, value] of Object.entries(tool.http.headers ?? {})) headers.set(name, value);
    for (const [name, variable] of Object.entries(tool.http.headersFromEnv ?? {})) {
      const value = options.environment[variable];
      if (value === undefined || value === '') {
        return errorOutcome('tool_error', `header "${name}" needs the environment variable ${variable}, which is not set on the tool-worker`);
      }
      headers.set(name, value);
    }
    // Set last so that a tool's static headers cannot replace them.
    headers.set('content-type', 'application/json');
    headers.set('idempotency-key', idempotencyKeyFor(invocation.runId, invocation.toolCallId));
    if (!headers.has('accept')) headers.set('accept', 'application/json');

    const timeout = AbortSignal.timeout(invocation.timeoutMs);
    const requestSignal = AbortSignal.any([signal, timeout]);
    const timedOut = () => timeout.aborted && !signal.aborted;
    let response: Response;
    try {
      invocation.onExternalEffect();
      response = await fetchImplementation(url, {
        method,
        headers,
        body: JSON.stringify(invocation.args ?? null),
        redirect: 'manual',
        signal: requestSignal,
      });
    } catch (error) {
      if (signal.aborted) throw signal.reason;
      if (timedOut()) return timeoutOutcome(invocation.timeoutMs);
      throw new AbideError('tool_error', `HTTP request to ${describeDestination(url)} failed: ${networkErrorText(error)}`, { retryable: true, cause: error });
    }

    let body: string;
    try {
      body = await readBody(response, maxResponseBytes);
    } catch (error) {
      if (signal.aborted) throw signal.reason;
      if (timedOut()) return timeoutOutcome(invocation.timeoutMs);
      if (error instanceof ResponseTooLargeError) return errorOutcome('tool_error', error.message);
      throw new AbideError('tool_error', `reading the response of ${describeDestination(url)} failed: ${networkErrorText(error)}`, { retryable: true, cause: error });
    }

    const { status } = response;
    if (status >= 200 && status < 300) return { kind: 'success', value: parseBody(body) };
    if (status === 408 || status === 429 || status >= 500) {
      const retryAfterMs = parseRetryAfter(response.headers.get('retry-after'), maxRetryAfterMs);
      throw new AbideError('tool_error', `HTTP ${status}: ${shorten(body, errorBodyChars)}`, { retryable: true, ...(retryAfterMs !== undefined ? { retryAfterMs } : {}) });
    }
    if (status >= 300 && status < 400) {
      return errorOutcome('tool_error', `HTTP ${status}: redirects are not followed (the tool's url must answer directly)`);
    }
    return errorOutcome('tool_error', `HTTP ${status}: ${shorten(body, errorBodyChars)}`);
  }

  return { run };
}
export type HttpTool = ReturnType<typeof createHttpTool>;

class ResponseTooLargeError extends Error {
  override readonly name = 'ResponseTooLargeError';
}

/** Reads the body as text, refusing (and cancelling) one larger than `limit` bytes. */
async function readBody(response: Response, limit: number): Promise<string> {
  const declared = Number(response.headers.get('content-length'));
  if (Number.isFinite(declared) && declared > limit) {
    await response.body?.cancel().catch(() => {
      // The body is discarded either way; a failed cancel only means the socket closes later.
    });
    throw new ResponseTooLargeError(`response body larger than ${limit} bytes`);
  }
  if (!response.body) return '';
  const reader = response.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > limit) {
      await reader.cancel().catch(() => {
        // As above: the body is discarded either way.
      });
      throw new ResponseTooLargeError(`response body larger than ${limit} bytes`);
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function parseBody(body: string): unknown {
  if (body.trim() === '') return null;
  try {
    return JSON.parse(body);
  } catch {
    // Not JSON: the tool answered text, which the model gets as such.
    return { text: body };
  }
}

/** `Retry-After` in seconds or as an HTTP date, in ms, capped; undefined when absent or unreadable. */
export function parseRetryAfter(header: string | null, capMs: number, now = Date.now()): number | undefined {
  if (!header) return undefined;
  const text = header.trim();
  const milliseconds = /^\d+$/.test(text) ? Number(text) * 1_000 : Date.parse(text) - now;
  if (!Number.isFinite(milliseconds)) return undefined;
  return Math.min(capMs, Math.max(0, milliseconds));
}

function timeoutOutcome(timeoutMs: number): ToolOutcome {
  return errorOutcome('tool_timeout', `the HTTP tool did not answer within ${timeoutMs} ms`);
}

/** Scheme, host and port only: a URL's path or query may carry what logs should not. */
function describeDestination(url: string): string {
  try {
    const parsed = new URL(url);
    return `${parsed.protocol}//${parsed.host}`;
  } catch {
    // The tool schema validated the URL; this is only a fallback for the message.
    return 'the tool url';
  }
}

function networkErrorText(error: unknown): string {
  if (error instanceof Error) {
    const cause = error.cause instanceof Error ? ` (${(error.cause as Error & { code?: string }).code ?? error.cause.message})` : '';
    return `${error.message}${cause}`;
  }
  return String(error);
}

function shorten(text: string, limit: number): string {
  const oneLine = text.replace(/\s+/g, ' ').trim();
  return oneLine.length > limit ? `${oneLine.slice(0, limit)}…` : oneLine || '(empty body)';
}
