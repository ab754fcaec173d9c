import { ApiError, isoDateSchema, runIdSchema } from '@abide/shared';
import { z } from 'zod';
import type { RunListPosition } from './ports.ts';

const positionSchema = z.object({ createdAt: isoDateSchema, runId: runIdSchema }).strict();

/** The opaque cursor of `GET /v1/runs`: base64url of `{ createdAt, runId }` of the page's last run. */
export function encodeListCursor(position: RunListPosition): string {
  return Buffer.from(JSON.stringify({ createdAt: position.createdAt, runId: position.runId })).toString('base64url');
}

/** Decodes a cursor made by `encodeListCursor`; anything else is 400 `invalid_cursor`. */
export function decodeListCursor(cursor: string): RunListPosition {
  const invalid = () => new ApiError('invalid_cursor', 'query.cursor: not a cursor returned by this API');
  if (!/^[A-Za-z0-9_-]+$/.test(cursor)) throw invalid();
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
  } catch {
    // Not JSON inside: a forged or truncated cursor, answered as such.
    throw invalid();
  }
  const parsed = positionSchema.safeParse(value);
  if (!parsed.success) throw invalid();
  return parsed.data;
}
