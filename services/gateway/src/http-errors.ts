import { ApiError, type PublicErrorCode, type RunView } from '@abide/shared';
import { isDependencyUnavailable } from '@abide/shared/mongo';
import { hasZodFastifySchemaValidationErrors } from 'fastify-type-provider-zod';
import type { z } from 'zod';
import { describeIssues } from './validation.ts';

/** A cursor older than the events' retention (410); carries the run's current state so the client can resync. */
export class CursorExpiredError extends ApiError {
  readonly run: RunView;
  constructor(run: RunView, message = 'this cursor is older than the retention of the run\'s events; the run\'s current state is attached') {
    super('cursor_expired', message);
    this.run = run;
  }
}

/** How `toApiError` words and codes what it meets: the body limit, and the route's cursor fields (`RouteConfig.cursorFields`). */
export type ErrorContext = { maxBodyBytes: number; cursorFields?: readonly string[] | undefined };

/** Where fastify says a request part failed its schema (`validationContext`), as the API names it in messages. */
const partNames: Record<string, string> = { body: 'body', querystring: 'query', params: 'params', headers: 'headers' };

/**
 * A request refused by its route's zod schema (fastify-type-provider-zod's validation error,
 * one entry per zod issue) as the API's 400: the message names the fields (`body.agentId: …`,
 * like `parseOr400`), the code is `invalid_cursor` when a cursor field is at fault.
 */
function schemaValidationError(error: { validation: Array<{ instancePath: string; keyword: string; message: string; params: Record<string, unknown> }>; validationContext?: string }, cursorFields: readonly string[]): ApiError {
  const where = partNames[error.validationContext ?? ''] ?? 'request';
  // Back to zod issues (the library keeps every field of an issue but its path, code and message in `params`).
  const issues = error.validation.map((entry) => ({
    ...entry.params,
    code: entry.keyword,
    message: entry.message,
    path: entry.instancePath === '/' ? [] : entry.instancePath.slice(1).split('/'),
  })) as unknown as z.core.$ZodIssue[];
  const isCursor = (issue: z.core.$ZodIssue) => {
    const field = issue.path.length > 0 ? `${where}.${String(issue.path[0])}` : where;
    return cursorFields.includes(where) || cursorFields.includes(field);
  };
  const cursorIssues = issues.filter(isCursor);
  const code: PublicErrorCode = cursorIssues.length > 0 ? 'invalid_cursor' : 'invalid_request';
  return new ApiError(code, describeIssues(where, cursorIssues.length > 0 ? cursorIssues : issues));
}

/**
 * Every error the gateway can meet, as the `ApiError` it is answered with (DESIGN §7): fastify's
 * body errors, a route schema's refusal, unreachable dependencies; anything else is 500 `internal`
 * with no internals in the message.
 */
export function toApiError(error: unknown, context: ErrorContext): ApiError {
  if (error instanceof ApiError) return error;
  if (hasZodFastifySchemaValidationErrors(error)) return schemaValidationError(error as unknown as Parameters<typeof schemaValidationError>[0], context.cursorFields ?? []);
  const fastifyCode = (error as { code?: unknown } | null)?.code;
  switch (fastifyCode) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return new ApiError('payload_too_large', `the request body is larger than ${context.maxBodyBytes} bytes`);
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return new ApiError('invalid_json', 'the request body is not valid JSON');
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return new ApiError('unsupported_media_type', 'send request bodies as application/json');
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return new ApiError('invalid_request', 'the Content-Length header does not match the body');
    case 'FST_ERR_VALIDATION':
      return new ApiError('invalid_request', (error as Error).message);
    default:
      break;
  }
  if (error instanceof SyntaxError && (error as { statusCode?: unknown }).statusCode === 400) {
    return new ApiError('invalid_json', 'the request body is not valid JSON');
  }
  // By class (`isDependencyUnavailable`, JetStream's election-time 503 included), never by `error.name`.
  if (isDependencyUnavailable(error)) {
    return new ApiError('unavailable', 'a backing service is unreachable; retry shortly', { cause: error, headers: { 'retry-after': '1' } });
  }
  const statusCode = (error as { statusCode?: unknown } | null)?.statusCode;
  if (typeof statusCode === 'number' && statusCode >= 400 && statusCode < 500) {
    return new ApiError('invalid_request', (error as Error).message);
  }
  return new ApiError('internal', 'internal error', { cause: error });
}

/** The JSON body of an error answer: `{ error: { code, message } }` (plus `run` for `cursor_expired`). */
export function errorBody(error: ApiError): Record<string, unknown> {
  return { error: { code: error.code, message: error.message }, ...(error instanceof CursorExpiredError ? { run: error.run } : {}) };
}
