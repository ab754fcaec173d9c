import type { ClientEvent, UiMessageChunk } from '@abide/shared';
import type { LoadedRun } from './ports.ts';
import { conversationLockId } from './run-creation.ts';
import { findTenantRun } from './run-access.ts';
import { isEnded } from './run-views.ts';
import type { Services } from './services.ts';
import { createUiMessageStreamTranslator } from './ui-message-stream.ts';

/** What a run's UI stream yields: a chunk with its stable index, or a suspension the run still waits in. */
export type RunStreamItem =
  | { kind: 'chunk'; index: number; chunk: UiMessageChunk }
  | { kind: 'suspension'; event: ClientEvent; waiting: boolean };

/**
 * The run of a chat (`chatId` is the conversation) for this agent: the conversation lock names
 * the active run; with `latest`, an ended run counts too (the newest of the conversation). Another
 * tenant's conversation is never found: locks and runs are keyed by tenant.
 */
export async function findChatRun(services: Services, request: { tenantId: string; agentId: string; chatId: string; latest: boolean }): Promise<LoadedRun | null> {
  const { store } = services;
  const { tenantId, agentId, chatId } = request;
  const belongs = (run: LoadedRun | null): run is LoadedRun => run !== null && run.state.agentId === agentId && run.state.conversationId === chatId;
  const lock = await store.findLock(conversationLockId(tenantId, chatId));
  if (lock) {
    const run = await findTenantRun(store, tenantId, lock.runId);
    if (belongs(run) && !isEnded(run)) return run;
  }
  if (!request.latest) return null;
  // The newest run's summary says whether it is this agent's; its whole state is loaded only then.
  const [newest] = await store.conversationRuns(tenantId, chatId, 1);
  if (!newest || newest.state.agentId !== agentId || newest.state.conversationId !== chatId) return null;
  const run = await findTenantRun(store, tenantId, newest.state.runId);
  return belongs(run) ? run : null;
}

/**
 * A run's UI message stream from its first event (replayed from `RUN_EVENTS` in seq order, then
 * live), each chunk with its index (`start` is 0). Every `run.suspended` is reported with whether
 * the run still waits on those calls now (read from MongoDB): a response ends there if it does.
 * The iteration ends after `finish` (or after the event at `untilSeq`).
 */
export async function* runUiStream(services: Services, request: { tenantId: string; runId: string; signal: AbortSignal; untilSeq?: number; created?: boolean }): AsyncGenerator<RunStreamItem, void, undefined> {
  const { tenantId, runId, signal } = request;
  const translator = createUiMessageStreamTranslator(runId);
  let index = 0;
  yield { kind: 'chunk', index: index++, chunk: translator.start() };
  // `created`: this request created the run a moment ago (`openRunEvents`).
  const events = await services.openRunEvents({ tenantId, runId, after: undefined, signal, created: request.created ?? false });
  if (!events) return;
  for await (const event of events) {
    for (const chunk of translator.next(event)) yield { kind: 'chunk', index: index++, chunk };
    if (translator.finished || (request.untilSeq !== undefined && event.seq >= request.untilSeq)) return;
    if (event.type === 'run.suspended') {
      const run = await findTenantRun(services.store, tenantId, runId);
      const pending = (event.pendingApprovals as string[] | undefined) ?? [];
      const waiting = run !== null && run.state.status === 'suspended' && pending.some((toolCallId) => run.state.pendingApprovals.includes(toolCallId));
      yield { kind: 'suspension', event, waiting };
    }
  }
}
