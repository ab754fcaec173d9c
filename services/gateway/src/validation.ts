import { ApiError, type PublicErrorCode } from '@abide/shared';
import type { z } from 'zod';

/** Formats the first few issues of a zod error as `where.path: message`. */
export function describeIssues(where: string, issues: readonly z.core.$ZodIssue[]): string {
  return issues
    .slice(0, 3)
    .map((issue) => `${[where, ...issue.path.map(String)].join('.')}: ${issue.message}`)
    .join('; ');
}

/**
 * Parses `value` with `schema`, or throws `ApiError(code)` (default `invalid_request`) whose
 * message names the offending field, e.g. `body.model.provider: Invalid input`.
 */
export function parseOr400<Schema extends z.ZodType>(schema: Schema, value: unknown, where: string, code: PublicErrorCode = 'invalid_request'): z.infer<Schema> {
  const parsed = schema.safeParse(value);
  if (!parsed.success) throw new ApiError(code, describeIssues(where, parsed.error.issues));
  return parsed.data;
}
