import type { RunState, ToolCallRecord } from './run-state.ts';

/**
 * What one transition changed in a run's state (issue 9, item 2): stored in the transition
 * document instead of the whole state, so the bytes written per step do not grow with the run.
 *
 * - `set`: top-level fields stored whole. The header fields (`headerFields`) are always here;
 *   any other field is here only when it changed (and is not encoded as below);
 * - `unset`: top-level fields the new state no longer has;
 * - `append`: append-only arrays (`messages`, `llmAttempts`) as the tail added, with the length
 *   the array had before (`from`) and has after (`length`), so a tail applied to the wrong base
 *   is detected instead of folded silently;
 * - `toolCalls`: the tool-call records added or changed, by index, each with its `toolCallId`
 *   checked against the base, with the length before and after.
 * A change that is not of that shape (a rewritten message, a removed or reordered tool call)
 * stores that field whole in `set`.
 */
export type RunDelta = {
  set: Partial<RunState>;
  unset?: string[];
  append?: Partial<Record<AppendField, { from: number; length: number; items: unknown[] }>>;
  toolCalls?: { from: number; length: number; changed: { index: number; record: ToolCallRecord }[] };
};

/** Small fields every delta carries whole, so a transition's header reads without a fold (history). */
export const headerFields = ['status', 'step', 'awaiting', 'nextDeadlineAt', 'usage', 'updatedAt'] as const;

const appendFields = ['messages', 'llmAttempts'] as const;
type AppendField = (typeof appendFields)[number];

/** A stored delta that does not apply to the state it is folded onto (wrong base or corrupt data). */
export class RunDeltaMismatchError extends Error {
  override readonly name = 'RunDeltaMismatchError';
}

/** Deep equality of JSON-like values (plain objects, arrays, primitives; `undefined` members count as absent). */
export function sameValue(left: unknown, right: unknown): boolean {
  if (left === right) return true;
  if (typeof left !== 'object' || typeof right !== 'object' || left === null || right === null) return false;
  if (left instanceof Date || right instanceof Date) {
    return left instanceof Date && right instanceof Date && left.getTime() === right.getTime();
  }
  if (Array.isArray(left) || Array.isArray(right)) {
    if (!Array.isArray(left) || !Array.isArray(right) || left.length !== right.length) return false;
    for (let index = 0; index < left.length; index += 1) if (!sameValue(left[index], right[index])) return false;
    return true;
  }
  const leftRecord = left as Record<string, unknown>;
  const rightRecord = right as Record<string, unknown>;
  const leftKeys = Object.keys(leftRecord).filter((key) => leftRecord[key] !== undefined);
  const rightKeys = Object.keys(rightRecord).filter((key) => rightRecord[key] !== undefined);
  if (leftKeys.length !== rightKeys.length) return false;
  for (const key of leftKeys) if (!(key in rightRecord) || !sameValue(leftRecord[key], rightRecord[key])) return false;
  return true;
}

function isPrefix(prefix: readonly unknown[], whole: readonly unknown[]): boolean {
  if (prefix.length > whole.length) return false;
  for (let index = 0; index < prefix.length; index += 1) if (!sameValue(prefix[index], whole[index])) return false;
  return true;
}

/** The keyed change of `toolCalls`, or null when it is not one (a record removed or moved). */
function toolCallChanges(previous: readonly ToolCallRecord[], next: readonly ToolCallRecord[]): RunDelta['toolCalls'] | null {
  if (next.length < previous.length) return null;
  const changed: { index: number; record: ToolCallRecord }[] = [];
  for (let index = 0; index < next.length; index += 1) {
    const before = previous[index];
    const after = next[index]!;
    if (before && before.toolCallId !== after.toolCallId) return null;
    if (!before || !sameValue(before, after)) changed.push({ index, record: after });
  }
  return { from: previous.length, length: next.length, changed };
}

/** The delta that turns `previous` into `next` (`applyDelta(previous, encodeDelta(previous, next))` equals `next`). */
export function encodeDelta(previous: RunState, next: RunState): RunDelta {
  const before = previous as Record<string, unknown>;
  const after = next as Record<string, unknown>;
  const delta: RunDelta = { set: {} };
  const set = delta.set as Record<string, unknown>;
  for (const field of headerFields) if (after[field] !== undefined) set[field] = after[field];
  for (const [field, value] of Object.entries(after)) {
    if (value === undefined || field in set) continue;
    if (sameValue(before[field], value)) continue;
    if ((appendFields as readonly string[]).includes(field) && Array.isArray(before[field]) && Array.isArray(value)) {
      const base = before[field] as unknown[];
      if (isPrefix(base, value)) {
        delta.append ??= {};
        delta.append[field as AppendField] = { from: base.length, length: value.length, items: value.slice(base.length) };
        continue;
      }
    }
    if (field === 'toolCalls' && Array.isArray(before[field]) && Array.isArray(value)) {
      const changes = toolCallChanges(before[field] as ToolCallRecord[], value as ToolCallRecord[]);
      if (changes) {
        delta.toolCalls = changes;
        continue;
      }
    }
    set[field] = value;
  }
  const unset = Object.keys(before).filter((field) => before[field] !== undefined && after[field] === undefined);
  if (unset.length > 0) delta.unset = unset;
  return delta;
}

/** The state `delta` turns `previous` into; throws `RunDeltaMismatchError` if it does not fit `previous`. */
export function applyDelta(previous: RunState, delta: RunDelta): RunState {
  const next: Record<string, unknown> = { ...previous };
  for (const field of delta.unset ?? []) delete next[field];
  for (const [field, change] of Object.entries(delta.append ?? {})) {
    const base = previous[field as AppendField] as unknown[] | undefined;
    if (!Array.isArray(base) || base.length !== change.from || change.from + change.items.length !== change.length) {
      throw new RunDeltaMismatchError(`${field}: a tail from ${change.from} to ${change.length} does not fit ${Array.isArray(base) ? base.length : 'no'} items`);
    }
    next[field] = [...base, ...change.items];
  }
  if (delta.toolCalls) {
    const toolCalls = [...previous.toolCalls];
    if (toolCalls.length !== delta.toolCalls.from) {
      throw new RunDeltaMismatchError(`toolCalls: a change made on ${delta.toolCalls.from} calls does not fit ${toolCalls.length}`);
    }
    for (const { index, record } of delta.toolCalls.changed) {
      const existing = toolCalls[index];
      if (index > toolCalls.length || (existing && existing.toolCallId !== record.toolCallId)) {
        throw new RunDeltaMismatchError(`toolCalls[${index}]: ${record.toolCallId} does not fit the base (${existing?.toolCallId ?? `${toolCalls.length} calls`})`);
      }
      toolCalls[index] = record;
    }
    if (toolCalls.length !== delta.toolCalls.length) {
      throw new RunDeltaMismatchError(`toolCalls: ${toolCalls.length} calls after the change, ${delta.toolCalls.length} expected`);
    }
    next.toolCalls = toolCalls;
  }
  Object.assign(next, delta.set);
  return next as RunState;
}
