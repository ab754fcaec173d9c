import type { ClientEvent } from '@abide/shared';

/** What the text of one model step adds to a stream. */
export type TextPiece =
  | { kind: 'open'; step: number; partId: string }
  | { kind: 'delta'; step: number; partId: string; text: string }
  | { kind: 'close'; step: number; partId: string };

/**
 * The text of a run's model steps as pieces, derived deterministically from its events (in
 * relay order): the deltas of the first attempt seen for a step stream live; `message.completed`
 * (the attempt the run recorded) adds whatever the deltas lacked. A retried attempt whose text
 * diverges from what was streamed cannot be taken back in these append-only protocols: the part
 * streamed so far is closed and the recorded text follows as a new part (`<step>-final`).
 */
export function createRunTextTracker() {
  const open = new Map<number, { partId: string; attempt: number; text: string }>();
  const closed = new Set<number>();

  return {
    next(event: ClientEvent): TextPiece[] {
      if (event.type === 'message.delta') {
        const step = event.step as number;
        const attempt = event.attempt as number;
        const text = event.text as string;
        if (closed.has(step) || text === '') return [];
        const current = open.get(step);
        if (!current) {
          const partId = `text-${step}`;
          open.set(step, { partId, attempt, text });
          return [{ kind: 'open', step, partId }, { kind: 'delta', step, partId, text }];
        }
        if (current.attempt !== attempt) return [];
        current.text += text;
        return [{ kind: 'delta', step, partId: current.partId, text }];
      }
      if (event.type === 'message.completed') {
        const step = event.step as number;
        const text = event.text as string;
        if (closed.has(step)) return [];
        closed.add(step);
        const current = open.get(step);
        open.delete(step);
        if (!current) {
          if (text === '') return [];
          const partId = `text-${step}`;
          return [{ kind: 'open', step, partId }, { kind: 'delta', step, partId, text }, { kind: 'close', step, partId }];
        }
        if (text.startsWith(current.text)) {
          const rest = text.slice(current.text.length);
          return [...(rest === '' ? [] : [{ kind: 'delta' as const, step, partId: current.partId, text: rest }]), { kind: 'close', step, partId: current.partId }];
        }
        const partId = `text-${step}-final`;
        return [
          { kind: 'close', step, partId: current.partId },
          ...(text === '' ? [] : [{ kind: 'open' as const, step, partId }, { kind: 'delta' as const, step, partId, text }, { kind: 'close' as const, step, partId }]),
        ];
      }
      return [];
    },
    /** Closes the parts still open (a run that ended without `message.completed` for them). */
    closeAll(): TextPiece[] {
      const pieces: TextPiece[] = [...open.entries()].map(([step, part]) => ({ kind: 'close', step, partId: part.partId }));
      for (const step of open.keys()) closed.add(step);
      open.clear();
      return pieces;
    },
  };
}
