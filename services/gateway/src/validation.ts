import { ApiError, type PublicErrorCode } from '@abide/shared';
import type { z } from 'zod';

type Issue = z.core.$ZodIssue;

/**
 * The issue that explains a failed union best: the one that got deepest into the value (a bad
 * key inside nested JSON is reported at that key, not as "invalid input" at the value's root).
 */
function deepestIssue(issue: Issue, base: PropertyKey[]): { path: PropertyKey[]; message: string } {
  const path = [...base, ...issue.path];
  if (issue.code === 'invalid_union' && issue.errors.length > 0) {
    let best: { path: PropertyKey[]; message: string } | undefined;
    for (const option of issue.errors) {
      for (const inner of option) {
        const candidate = deepestIssue(inner, path);
        if (!best || candidate.path.length > best.path.length) best = candidate;
      }
    }
    if (best && best.path.length > path.length) return best;
  }
  if (issue.code === 'invalid_key' && issue.issues[0]) return { path, message: issue.issues[0].message };
  return { path, message: issue.message };
}

const pathSegment = (segment: PropertyKey) => {
  const text = String(segment);
  return /^[A-Za-z0-9_-]+$/.test(text) ? `.${text}` : `[${JSON.stringify(text)}]`;
};

/** Formats the first few issues of a zod error as `where.path: message` (odd keys as `["a.b"]`). */
export function describeIssues(where: string, issues: readonly Issue[]): string {
  return issues
    .slice(0, 3)
    .map((issue) => {
      const { path, message } = deepestIssue(issue, []);
      return `${where}${path.map(pathSegment).join('')}: ${message}`;
    })
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
