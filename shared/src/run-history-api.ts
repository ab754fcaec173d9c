import { z } from 'zod';
import { cursorSchema } from './api.ts';
import { runStatusSchema } from './run-state.ts';

/** `GET /v1/runs/:runId/history` (DESIGN §7): a run's transitions, oldest first, paginated by version. */

export const runHistoryLimits = { defaultLimit: 50, maxLimit: 100 } as const;

export const runHistoryQuerySchema = z
  .object({
    /** Only transitions with a version greater than this (the previous page's `nextCursor`). */
    after: cursorSchema.optional(),
    limit: z.coerce.number().int().min(1).max(runHistoryLimits.maxLimit).default(runHistoryLimits.defaultLimit),
  })
  .strict();

export const runTransitionViewSchema = z.object({
  version: z.int().min(1),
  /** The id of the message that caused the transition. */
  cause: z.string(),
  status: runStatusSchema,
  step: z.int().min(0),
  /** What the run waits for after the transition (`llm`, `tools`, `approvals`), or null. */
  awaiting: z.enum(['llm', 'tools', 'approvals']).nullable(),
  at: z.string(),
});
export type RunTransitionView = z.infer<typeof runTransitionViewSchema>;

export const runHistoryResponseSchema = z.object({
  transitions: z.array(runTransitionViewSchema),
  /** Pass as `after` for the next page; null on the last page (as of the request). */
  nextCursor: z.string().nullable(),
});
export type RunHistoryResponse = z.infer<typeof runHistoryResponseSchema>;
