import { AbideError, EgressDeniedError } from '@abide/shared';
import { StreamableHTTPError } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { UnauthorizedError } from '@modelcontextprotocol/sdk/client/auth.js';
import { ErrorCode, McpError } from '@modelcontextprotocol/sdk/types.js';
import { z } from 'zod';
import { ResponseTooLargeError } from './bounded-fetch.ts';

/**
 * How a failure of an MCP call maps to Abide's errors (issue 13), decided from the error's class
 * and code, never its text:
 *
 * - an `AbideError` already decided (egress refused, secret missing, pool full) → itself;
 * - a response over the size bound (`boundedFetch`) → final `tool_error` (a retry would get the same);
 * - the SDK's request timeout → final `tool_timeout`;
 * - the connection closed, HTTP 404 (the server forgot the session), 408, 429, 5xx, any failure to
 *   connect or read → retryable `tool_error` (the pool drops the connection; the consumer naks with backoff);
 * - HTTP 401/403 and other 4xx → final `tool_error` naming only the status;
 * - a response that is not MCP (a result failing the SDK's schema, a parse error, an unexpected
 *   content type, a JSON-RPC "invalid request" / "method not found") → final `mcp_protocol_error`;
 * - any other JSON-RPC error from the server (unknown tool, invalid params, internal error) →
 *   final `tool_error` with the server's message, which the model sees.
 *
 * Messages name `destination` (scheme, host, port) and a status or JSON-RPC code, never a response
 * body or a network error's details (those go to the worker's log).
 */
export function mcpFailure(error: unknown, destination: string, timeoutMs: number): AbideError {
  if (AbideError.isInstance(error)) return error;
  const denied = EgressDeniedError.find(error);
  if (denied) return denied;
  const tooLarge = findInCauses(error, ResponseTooLargeError);
  if (tooLarge) return new AbideError('tool_error', tooLarge.message, { cause: error });
  if (error instanceof McpError) {
    switch (error.code) {
      case ErrorCode.RequestTimeout:
        return new AbideError('tool_timeout', `the MCP server at ${destination} did not answer within ${timeoutMs} ms`);
      case ErrorCode.ConnectionClosed:
        return new AbideError('tool_error', `the connection to the MCP server at ${destination} closed`, { retryable: true, cause: error });
      case ErrorCode.ParseError:
      case ErrorCode.InvalidRequest:
      case ErrorCode.MethodNotFound:
        return new AbideError('mcp_protocol_error', `the MCP server at ${destination} answered JSON-RPC error ${error.code}`, { cause: error });
      default:
        return new AbideError('tool_error', `the MCP server at ${destination} answered JSON-RPC error ${error.code}: ${shorten(String(error.message))}`, { cause: error });
    }
  }
  if (error instanceof StreamableHTTPError) {
    const status = error.code;
    if (status === undefined || status === 404 || status === 408 || status === 429 || status >= 500) {
      return new AbideError('tool_error', `HTTP ${status ?? 'error'} from the MCP server at ${destination}`, { retryable: true, cause: error });
    }
    if (status === -1) return new AbideError('mcp_protocol_error', `the MCP server at ${destination} answered an unexpected content type`, { cause: error });
    return new AbideError('tool_error', `HTTP ${status} from the MCP server at ${destination}`, { cause: error });
  }
  if (error instanceof UnauthorizedError) return new AbideError('tool_error', `HTTP 401 from the MCP server at ${destination}`, { cause: error });
  if (error instanceof z.core.$ZodError) {
    return new AbideError('mcp_protocol_error', `the MCP server at ${destination} answered something that is not a valid MCP result`, { cause: error });
  }
  return new AbideError('tool_error', `could not reach the MCP server at ${destination}`, { retryable: true, cause: error });
}

/** True when the connection should be dropped from the pool (the next attempt opens a new session). */
export function isBrokenConnection(failure: AbideError): boolean {
  return failure.retryable || failure.code === 'mcp_protocol_error';
}

function findInCauses<T extends Error>(error: unknown, type: new (...args: never[]) => T): T | undefined {
  let current: unknown = error;
  for (let depth = 0; depth < 6 && current instanceof Error; depth += 1) {
    if (current instanceof type) return current;
    current = current.cause;
  }
  return undefined;
}

function shorten(text: string, limit = 500): string {
  const oneLine = text.replace(/\s+/g, ' ').trim();
  return oneLine.length > limit ? `${oneLine.slice(0, limit)}…` : oneLine;
}
