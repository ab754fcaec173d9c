import { isTerminalEventType } from '@abide/shared';

/** The parts of a bus event the forwarding rules look at. */
export type FilterableEvent = { id: string; type: string; payload: unknown };

/**
 * The forwarding rules of one subscription (DESIGN §6), as a pure state machine:
 * never the same `eventId` twice, nothing after the terminal event, and no `message.delta`
 * of a step whose `message.completed` was forwarded (its text replaces the deltas).
 * Remembers the ids it forwarded: a run's event count bounds it.
 */
export function createEventFilter() {
  const forwarded = new Set<string>();
  const completedSteps = new Set<number>();
  let finished = false;
  return {
    /** True once the terminal event was forwarded: nothing more will be. */
    get finished() {
      return finished;
    },
    /** Whether `event` is to be forwarded; records it if so. */
    accept(event: FilterableEvent): boolean {
      if (finished || forwarded.has(event.id)) return false;
      const step = (event.payload as { step?: unknown } | null)?.step;
      if (event.type === 'message.delta' && typeof step === 'number' && completedSteps.has(step)) return false;
      forwarded.add(event.id);
      if (event.type === 'message.completed' && typeof step === 'number') completedSteps.add(step);
      if (isTerminalEventType(event.type)) finished = true;
      return true;
    },
  };
}
export type EventFilter = ReturnType<typeof createEventFilter>;

/** The events of `sequence` a subscription forwards, in order. */
export function filterEvents<Event extends FilterableEvent>(sequence: Iterable<Event>): Event[] {
  const filter = createEventFilter();
  const out: Event[] = [];
  for (const event of sequence) {
    if (filter.accept(event)) out.push(event);
    if (filter.finished) break;
  }
  return out;
}
