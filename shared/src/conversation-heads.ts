import { isDuplicateKeyError } from './errors.ts';
import type { Collections } from './mongo.ts';
import { lockIds } from './names.ts';
import { isTerminalStatus, type RunStatus } from './run-state.ts';

/**
 * A conversation's head (`conversations`, `_id` = the conversation lock's `_id`): its latest
 * ended run, which a new run of the conversation takes its history from. Read by `_id`, so a chat
 * turn reads one document instead of querying `runs` on `(tenantId, conversationId)`, which
 * FerretDB answers by scanning every stored run.
 *
 * Written by the run's terminal outbox (`release_conversation_lock`) before the conversation's
 * lock is deleted, so a run that takes the lock after a normal release finds its predecessor
 * here. Never moved backwards: an outbox published again later (after a crash) cannot replace
 * the head of a newer run (`runCreatedAt` decides: the runs of a conversation follow each other).
 */
export type ConversationHead = {
  _id: string;
  tenantId: string;
  conversationId: string;
  runId: string;
  /** The run's `createdAt` (ISO time): orders the conversation's runs. */
  runCreatedAt: string;
};

/**
 * Marks the database's heads as complete: every conversation with an ended run has one
 * (`buildConversationHeads` wrote those of runs ended before heads existed). Until it exists, a
 * conversation without a head may be an older one, and its history is looked up in `runs`.
 */
export const conversationHeadsCompleteId = '~complete';

/**
 * Records `run` as its conversation's latest ended run, unless a newer one is recorded
 * (idempotent). Group-committed with the other heads this process records at the same time
 * (`write-batcher.ts`): every run's end writes one, so under load they shared no sync while
 * every other write of a step did (issue 9: at 50 runs in flight it was one of the ~5.5 commands
 * a run cost the store, alone in its transaction).
 */
export async function recordConversationEnd(
  collections: { writes: Pick<Collections['writes'], 'conversations'> },
  run: { tenantId: string; conversationId: string; runId: string; createdAt: string },
): Promise<void> {
  const _id = lockIds.conversation(run.tenantId, run.conversationId);
  const head: Omit<ConversationHead, '_id'> = { tenantId: run.tenantId, conversationId: run.conversationId, runId: run.runId, runCreatedAt: run.createdAt };
  // Matches an older head (replaced) or none (inserted); a head as new or newer makes the
  // upsert's insert collide on `_id` (`'duplicate'`), and that head stands.
  await collections.writes.conversations.update(_id, { $set: head }, { upsert: true, filter: { runCreatedAt: { $lt: run.createdAt } } });
}

/**
 * The run a new run of the conversation takes its history from: its latest ended run, or null
 * for a conversation without one. `head` is undefined when the database's heads are not known
 * complete and this conversation has none: the caller looks in `runs` then.
 */
export async function readConversationHead(
  collections: Pick<Collections, 'conversations'>,
  tenantId: string,
  conversationId: string,
  headsComplete: () => Promise<boolean>,
): Promise<{ runId: string } | null | undefined> {
  const found = (await collections.conversations.findOne({ _id: lockIds.conversation(tenantId, conversationId) })) as ConversationHead | null;
  if (found && found.tenantId === tenantId && found.conversationId === conversationId) return { runId: found.runId };
  return (await headsComplete()) ? null : undefined;
}

/** Whether `buildConversationHeads` has finished on this database; true once seen, then never read again. */
export function createHeadsCompleteCheck(collections: Pick<Collections, 'conversations'>): () => Promise<boolean> {
  let complete = false;
  return async () => {
    if (complete) return true;
    complete = (await collections.conversations.findOne({ _id: conversationHeadsCompleteId }, { projection: { _id: 1 } })) !== null;
    return complete;
  };
}

/**
 * Writes the head of every conversation whose runs ended before heads existed (one pass over the
 * read models, the only scan, once per database), then marks the heads complete. Idempotent and
 * safe beside live traffic: a head written meanwhile by a terminal outbox is newer or equal and
 * stands (`recordConversationEnd`). Returns how many conversations it recorded, or null when the
 * heads were complete already. A read model that lags behind its run's end (a crash before it
 * was rewritten) is not counted as ended here; that run's terminal outbox records it when it is
 * published, so only a run whose outbox older code published and whose read model still lags
 * is missed, and its conversation continues from the run before it.
 */
export async function buildConversationHeads(collections: Pick<Collections, 'conversations' | 'runs' | 'writes'>, signal?: AbortSignal): Promise<number | null> {
  if (await collections.conversations.findOne({ _id: conversationHeadsCompleteId }, { projection: { _id: 1 } })) return null;
  const latest = new Map<string, { tenantId: string; conversationId: string; runId: string; createdAt: string }>();
  const cursor = collections.runs.find({}, { projection: { _id: 1, tenantId: 1, conversationId: 1, status: 1, createdAt: 1 } });
  for await (const document of cursor) {
    signal?.throwIfAborted();
    const run = document as unknown as { _id: string; tenantId?: string; conversationId?: string; status?: RunStatus; createdAt?: string };
    if (!run.tenantId || !run.conversationId || !run.createdAt || !run.status || !isTerminalStatus(run.status)) continue;
    const key = lockIds.conversation(run.tenantId, run.conversationId);
    const kept = latest.get(key);
    if (!kept || kept.createdAt < run.createdAt) latest.set(key, { tenantId: run.tenantId, conversationId: run.conversationId, runId: run._id, createdAt: run.createdAt });
  }
  for (const run of latest.values()) {
    signal?.throwIfAborted();
    await recordConversationEnd(collections, run);
  }
  try {
    await collections.conversations.insertOne({ _id: conversationHeadsCompleteId, at: new Date().toISOString() });
  } catch (error) {
    if (!isDuplicateKeyError(error)) throw error;
  }
  return latest.size;
}
