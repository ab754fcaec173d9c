import { AbideError, EgressDeniedError, originOf, SecretNotFoundError, type EgressPolicy, type Logger, type TenantSecrets, type ToolOutcome } from '@abide/shared';
import { errorOutcome, idempotencyKeyFor, type ToolInvocation } from './tool-invocation.ts';

export type HttpToolOptions = {
  /** The egress policy of `TOOL_EGRESS_ALLOW`; its `fetch` makes every request. */
  egress: Pick<EgressPolicy, 'assertUrlAllowed' | 'fetch'>;
  /** The calling tenant's secrets, for `headersFromEnv` (header → secret name). */
  secrets: TenantSecrets;
  /** Where what a tenant is not shown goes (response bodies, network error details). */
  logger?: Pick<Logger, 'warn'>;
  /** Largest response body accepted. @default 1048576 (1 MiB) */
  maxResponseBytes?: number;
  /** Longest `Retry-After` honoured (longer ones are cut to this). @default 60000 */
  maxRetryAfterMs?: number;
  /** Characters of an error response's body logged for operators (never shown to the tenant). @default 500 */
  loggedBodyChars?: number;
};

/**
 * HTTP tools (DESIGN §8): the call's args go as JSON to `tool.http.url` with the call's
 * `Idempotency-Key` (`<runId>:<toolCallId>`, the same on every attempt).
 *
 * - 2xx → success: the JSON body (a body that is not JSON → `{ text }`, an empty one → `null`).
 * - 408, 429, 5xx, any failure to connect or read → a retryable `tool_error` (honouring `Retry-After`).
 * - other 4xx, any 3xx (redirects are never followed: a redirect could leave the egress allow
 *   list), a body over the size limit → final `tool_error`.
 * - a destination the egress policy refuses → final `egress_denied`; a `headersFromEnv` name that
 *   is not a secret of the calling tenant → final `secret_not_found`; the timeout → final `tool_timeout`.
 * - the invocation's signal aborting → its reason is thrown.
 *
 * What the tenant sees is sanitized (issue 8): an HTTP status but never a response body, and one
 * message for every connection failure ("could not reach <scheme://host:port>"), so an error
 * tells nothing about what listens behind an address. The details go to the worker's log.
 */
export function createHttpTool(options: HttpToolOptions) {
  const maxResponseBytes = options.maxResponseBytes ?? 1_048_576;
  const maxRetryAfterMs = options.maxRetryAfterMs ?? 60_000;
  const loggedBodyChars = options.loggedBodyChars ?? 500;

  async function run(invocation: ToolInvocation): Promise<ToolOutcome> {
    const { tool, signal } = invocation;
    signal.throwIfAborted();
    if (!tool.http) return errorOutcome('tool_error', `tool "${tool.name}" has no http configuration`);
    const { url, method } = tool.http;
    const destination = originOf(url);
    const log = (fields: Record<string, unknown>, message: string) =>
      options.logger?.warn({ runId: invocation.runId, tenantId: invocation.tenantId, tool: tool.name, destination, ...fields }, message);
    try {
      options.egress.assertUrlAllowed(url);
    } catch (error) {
      if (error instanceof EgressDeniedError) return errorOutcome(error.code, error.message);
      throw error;
    }
    const headers = new Headers();
    for (const [name, value] of Object.entries(tool.http.headers ?? {})) headers.set(name, value);
    for (const [name, secretName] of Object.entries(tool.http.headersFromEnv ?? {})) {
      try {
        headers.set(name, await options.secrets.read(invocation.tenantId, secretName));
      } catch (error) {
        if (error instanceof SecretNotFoundError) return errorOutcome(error.code, error.message);
        throw error;
      }
    }
    // Set last so that a tool's static headers cannot replace them.
    headers.set('content-type', 'application/json');
    headers.set('idempotency-key', idempotencyKeyFor(invocation.runId, invocation.toolCallId));
    if (!headers.has('accept')) headers.set('accept', 'application/json');

    const timeout = AbortSignal.timeout(invocation.timeoutMs);
    const requestSignal = AbortSignal.any([signal, timeout]);
    const timedOut = () => timeout.aborted && !signal.aborted;
    const unreachable = (error: unknown, stage: string) => {
      log({ err: error instanceof Error ? error : new Error(String(error)), stage }, 'HTTP tool: could not reach the destination');
      return new AbideError('tool_error', `could not reach ${destination}`, { retryable: true, cause: error });
    };
    let response: Response;
    try {
      invocation.onExternalEffect();
      response = await options.egress.fetch(url, {
        method,
        headers,
        body: JSON.stringify(invocation.args ?? null),
        redirect: 'manual',
        signal: requestSignal,
      });
    } catch (error) {
      if (signal.aborted) throw signal.reason;
      if (timedOut()) return timeoutOutcome(invocation.timeoutMs);
      const denied = EgressDeniedError.find(error);
      if (denied) return errorOutcome(denied.code, denied.message);
      throw unreachable(error, 'request');
    }

    let body: string;
    try {
      body = await readBody(response, maxResponseBytes);
    } catch (error) {
      if (signal.aborted) throw signal.reason;
      if (timedOut()) return timeoutOutcome(invocation.timeoutMs);
      if (error instanceof ResponseTooLargeError) return errorOutcome('tool_error', error.message);
      throw unreachable(error, 'response body');
    }

    const { status } = response;
    if (status >= 200 && status < 300) return { kind: 'success', value: parseBody(body) };
    log({ status, body: shorten(body, loggedBodyChars) }, 'HTTP tool answered an error status');
    if (status === 408 || status === 429 || status >= 500) {
      const retryAfterMs = parseRetryAfter(response.headers.get('retry-after'), maxRetryAfterMs);
      throw new AbideError('tool_error', `HTTP ${status} from ${destination}`, { retryable: true, ...(retryAfterMs !== undefined ? { retryAfterMs } : {}) });
    }
    if (status >= 300 && status < 400) {
      return errorOutcome('tool_error', `HTTP ${status} from ${destination}: redirects are not followed (the tool's url must answer directly)`);
    }
    return errorOutcome('tool_error', `HTTP ${status} from ${destination}`);
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

function shorten(text: string, limit: number): string {
  const oneLine = text.replace(/\s+/g, ' ').trim();
  return oneLine.length > limit ? `${oneLine.slice(0, limit)}…` : oneLine || '(empty body)';
}
