import { listCursorSchema } from '@abide/shared';
import type { RunListPosition } from './ports.ts';
import { parseOr400 } from './validation.ts';

/** The cursor of `GET /v1/runs` (`listCursorSchema`): `<createdAt>~<runId>` of the page's last run. */
export function encodeListCursor(position: RunListPosition): string {
  return `${position.createdAt}~${position.runId}`;
}

/** Decodes a cursor of the form `encodeListCursor` makes; anything else is 400 `invalid_cursor`. */
export function decodeListCursor(cursor: unknown): RunListPosition {
  const text = parseOr400(listCursorSchema, cursor, 'query.cursor', 'invalid_cursor');
  const separator = text.indexOf('~');
  return { createdAt: text.slice(0, separator), runId: text.slice(separator + 1) };
}
