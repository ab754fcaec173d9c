import { setTimeout as sleep } from 'node:timers/promises';
import { decodeJson, outboxEntryId, type ClientEvent, type LoadedSummary } from '@abide/shared';
import type { EventRelay } from './event-relay.ts';
import { CursorExpiredError } from './http-errors.ts';
import type { EventSource, GatewayStore } from './ports.ts';
import { loadTenantRunSummary } from './run-access.ts';
import { isEnded, toRunView } from './run-views.ts';

export type OpenRunEventsRequest = {
  tenantId: string;
  runId: string;
  /** The `seq` of the last event the client holds; undefined = from the run's first event. */
  after: number | undefined;
  signal: AbortSignal;
  /**
   * The run was created by this request a moment ago (`createRun` answered `created: true`): it
   * exists, is the tenant's and is young, so the reader starts at once and the checks run
   * beside it (`followCreated`). Only with `after` undefined.
   */
  created?: boolean;
};

/**
 * Opens a run's event stream for SSE and WebSocket alike:
 * - another tenant's or a missing run → 404 `run_not_found`;
 * - a cursor older than the events' retention → 410 `cursor_expired` with the run's state. The
 *   rule: the stream's first sequence is past `after + 1` (something after the cursor may be
 *   gone) and the run is older than `EVENTS_MAX_AGE` (so its events are the ones expiring) or its
 *   first event is gone (the stream reached `EVENTS_MAX_BYTES` and discarded its oldest events);
 * - a run that had ended (its terminal transition published) when the subscription started is
 *   followed up to its last stored message; null when nothing is left to send (the client holds
 *   the terminal event already).
 */
export function createRunEventsOpener(deps: {
  store: GatewayStore;
  events: EventSource;
  relay: EventRelay;
  eventsMaxAgeMs: number;
  now?: () => number;
  /** How long a created run's reader may read nothing before the run is checked (`followCreated`). @default 2500 */
  createdRunCheckMs?: number;
}) {
  const now = deps.now ?? Date.now;
  const createdRunCheckMs = deps.createdRunCheckMs ?? 2_500;

  /**
   * True when the run's first event is no longer stored although the run is young: `RUN_EVENTS`
   * discards its oldest events when it reaches `EVENTS_MAX_BYTES`. The run's first event is the
   * first of transition 2's outbox (`<runId>:2:0`); the first message stored on the run's subject
   * is read (asked only when the stream has discarded messages past the client's cursor).
   * Transitions no longer carry the sequence of their events (docs/decisions.md, "one write per step").
   */
  async function firstEventEvicted(runId: string, run: { version: number; published: boolean }): Promise<boolean> {
    if (run.version < 2) return false;
    // Nothing stored for a run whose events are known published: all of them were discarded.
    if ((await deps.events.lastSequenceOf(runId)) === null) return run.published;
    const reading = new AbortController();
    try {
      for await (const stored of deps.events.read(runId, { after: undefined, signal: reading.signal })) {
        // A bus event carries its eventId as `id` (shared/src/events.ts).
        const event = decodeJson(stored.data) as { id?: unknown };
        return event.id !== outboxEntryId(runId, 2, 0);
      }
      return false;
    } finally {
      reading.abort();
    }
  }

  /**
   * The run's summary (rolled forward from the read model: no transition's whole state is read),
   * unless the client's cursor is older than the stream keeps (410 `cursor_expired`) or the run
   * is missing or another tenant's (404).
   */
  async function loadUnexpired(tenantId: string, runId: string, after: number | undefined): Promise<LoadedSummary> {
    const [run, firstSequence] = await Promise.all([loadTenantRunSummary(deps.store, tenantId, runId), deps.events.firstSequence()]);
    if (firstSequence > 0 && (after ?? 0) + 1 < firstSequence) {
      const aged = Date.parse(run.state.createdAt) < now() - deps.eventsMaxAgeMs;
      if (aged || (await firstEventEvicted(runId, run))) throw new CursorExpiredError(toRunView(run));
    }
    return run;
  }

  /**
   * A run this request has just created, from its first event. The run exists, is the caller's
   * and is young, so nothing is read before its reader (an ordered consumer) starts, and no check
   * waits on the database: the one refusal left, a first event already discarded by the size
   * limit (`EVENTS_MAX_BYTES`), shows in the first message read, which must be the run's first
   * event (`<runId>:2:0`, the first entry of transition 2's outbox, `firstEventEvicted`); any other
   * is answered 410 `cursor_expired` and nothing is forwarded. A reader that has read nothing after
   * `createdRunCheckMs` (the orchestrator is slow, or every event of the run is gone already) runs
   * the usual checks until they answer (a check that fails is tried again after as long), so a
   * run whose events are all gone is refused rather than followed forever. The run follows to its
   * terminal event like any other that had not ended when the subscription started.
   */
  async function* followCreated(request: OpenRunEventsRequest): AsyncGenerator<ClientEvent, void, undefined> {
    const { tenantId, runId } = request;
    const reading = new AbortController();
    const stop = () => reading.abort();
    request.signal.addEventListener('abort', stop, { once: true });
    const events = deps.relay.follow(runId, { after: undefined, signal: reading.signal });
    // Converted, not dropped: a reader failure is rethrown below (after a check under way).
    const first = events.next().then((result) => ({ result }), (error: unknown) => ({ error }));
    const late = new AbortController();
    try {
      // Until the first event: every `createdRunCheckMs`, the usual checks, until one answers. A
      // check that fails (the bus or the store unreachable: a reader reads nothing then either)
      // refuses nothing; the relay's own bound ends a reader that cannot resume.
      for (let checked = false; !checked; ) {
        const waited = await Promise.race([first, sleep(createdRunCheckMs, undefined, { signal: late.signal }).then(() => 'late' as const, () => 'late' as const)]);
        if (waited !== 'late') break;
        try {
          await loadUnexpired(tenantId, runId, undefined);
          checked = true;
        } catch (error) {
          if (error instanceof CursorExpiredError) throw error;
        }
      }
      const started = await first;
      if ('error' in started) throw started.error;
      if (started.result.done) return;
      if (started.result.value.eventId !== outboxEntryId(runId, 2, 0)) {
        throw new CursorExpiredError(toRunView(await loadTenantRunSummary(deps.store, tenantId, runId)));
      }
      yield started.result.value;
      yield* events;
    } finally {
      late.abort();
      request.signal.removeEventListener('abort', stop);
      // Ends a reader still waiting for its first event, so that its consumer is removed.
      reading.abort();
      await events.return();
    }
  }

  return async function openRunEvents(request: OpenRunEventsRequest): Promise<AsyncGenerator<ClientEvent, void, undefined> | null> {
    const { tenantId, runId, after, signal } = request;
    if (request.created && after === undefined) return followCreated(request);
    const run = await loadUnexpired(tenantId, runId, after);
    if (!(isEnded(run) && run.published)) return deps.relay.follow(runId, { after, signal });
    // Ended, and its last events are stored: read ahead to the first event to send, so that a
    // client holding the terminal event already gets null (SSE: 204) rather than an empty stream.
    const endAtSeq = (await deps.events.lastSequenceOf(runId)) ?? 0;
    if (endAtSeq === 0 || (after !== undefined && endAtSeq <= after)) return null;
    const events = deps.relay.follow(runId, { after, endAtSeq, signal });
    const first = await events.next();
    if (first.done) return null;
    return prepend(first.value, events);
  };
}

async function* prepend<Item>(first: Item, rest: AsyncGenerator<Item, void, undefined>): AsyncGenerator<Item, void, undefined> {
  try {
    yield first;
    yield* rest;
  } finally {
    // Stopped after `first`: close `rest` too, so its reader (an ordered consumer) is removed.
    await rest.return();
  }
}
export type OpenRunEvents = ReturnType<typeof createRunEventsOpener>;
