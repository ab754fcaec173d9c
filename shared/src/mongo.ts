import { MongoClient, type Collection, type Db, type Document, type WriteConcernSettings } from 'mongodb';
import { collections } from './names.ts';
import { createWriteBatcher, type WriteBatcher } from './write-batcher.ts';

/** `MONGO_WRITE_CONCERN` (shared/src/config.ts). */
export type MongoWriteConcern = 'majority' | 'journaled' | 'acknowledged';

const writeConcerns: Record<MongoWriteConcern, WriteConcernSettings> = {
  majority: { w: 'majority', journal: true },
  journaled: { w: 1, journal: true },
  acknowledged: { w: 1 },
};

/**
 * MongoDB access. Only features FerretDB 1.24 implements correctly are used (DESIGN §3): no
 * transactions, change streams, TTL/partial indexes, `arrayFilters`, `$lookup`. Every race is
 * decided by an insert whose `_id` exists (E11000).
 */
export function createMongoClient(url: string, writeConcern: MongoWriteConcern = 'majority'): MongoClient {
  return new MongoClient(url, {
    // Durable by default (issue 9): a step is acknowledged from the journal, not from memory.
    writeConcern: writeConcerns[writeConcern],
    serverSelectionTimeoutMS: 5_000,
    connectTimeoutMS: 5_000,
    retryWrites: false,
    retryReads: true,
    appName: 'abide',
  });
}

/** Indexes of DESIGN §3. */
export const indexes: { collection: string; key: Record<string, 1 | -1>; name: string }[] = [
  { collection: collections.runs, key: { tenantId: 1, conversationId: 1, createdAt: -1 }, name: 'tenant_conversation_created' },
  { collection: collections.runs, key: { tenantId: 1, status: 1, createdAt: -1 }, name: 'tenant_status_created' },
  { collection: collections.runs, key: { tenantId: 1, createdAt: -1 }, name: 'tenant_created' },
];

/**
 * Creates the indexes idempotently at start-up, one `createIndexes` command per index:
 * FerretDB 1.24 panics (and drops the connection) on a multi-index `createIndexes` whose
 * indexes already exist.
 */
export async function ensureIndexes(db: Db): Promise<void> {
  for (const index of indexes) {
    await db.collection(index.collection).createIndex(index.key, { name: index.name });
  }
}

type Stored = Document & { _id: string };

export type Collections = {
  agents: Collection<Stored>;
  agentVersions: Collection<Stored>;
  runs: Collection<Stored>;
  runTransitions: Collection<Stored>;
  conversationLocks: Collection<Stored>;
  /** Each conversation's latest ended run, by the conversation lock's `_id` (`conversation-heads.ts`). */
  conversations: Collection<Stored>;
  runWork: Collection<Stored>;
  runDeadlines: Collection<Stored>;
  runRetention: Collection<Stored>;
  /** When deadline and retention items fall due, by `_id` (`work-timeline.ts`). */
  workTimeline: Collection<Stored>;
  /** The runs whose read model says `running` / `suspended`, one `{ _id: runId }` each (`abide_runs` counts them). */
  runsRunning: Collection<Stored>;
  runsSuspended: Collection<Stored>;
  /**
   * Group-committed writes (`write-batcher.ts`) to the collections every step writes: one
   * batcher per collection per process, so concurrent runs share each sync. Reads, and writes
   * whose result needs a matched count, use the collections directly.
   */
  writes: { runs: WriteBatcher<Stored>; runTransitions: WriteBatcher<Stored>; runWork: WriteBatcher<Stored>; runDeadlines: WriteBatcher<Stored>; runRetention: WriteBatcher<Stored>; workTimeline: WriteBatcher<Stored>; runsRunning: WriteBatcher<Stored>; runsSuspended: WriteBatcher<Stored>; conversationLocks: WriteBatcher<Stored>; conversations: WriteBatcher<Stored> };
};

/** The collections (call once per process, in its composition root: the batchers live here). */
export function getCollections(db: Db): Collections {
  const found = {
    agents: db.collection<Stored>(collections.agents),
    agentVersions: db.collection<Stored>(collections.agentVersions),
    runs: db.collection<Stored>(collections.runs),
    runTransitions: db.collection<Stored>(collections.runTransitions),
    conversationLocks: db.collection<Stored>(collections.conversationLocks),
    conversations: db.collection<Stored>(collections.conversations),
    runWork: db.collection<Stored>(collections.runWork),
    runDeadlines: db.collection<Stored>(collections.runDeadlines),
    runRetention: db.collection<Stored>(collections.runRetention),
    workTimeline: db.collection<Stored>(collections.workTimeline),
    runsRunning: db.collection<Stored>(collections.runsRunning),
    runsSuspended: db.collection<Stored>(collections.runsSuspended),
  };
  return {
    ...found,
    writes: {
      runs: createWriteBatcher(found.runs),
      runTransitions: createWriteBatcher(found.runTransitions),
      runWork: createWriteBatcher(found.runWork),
      runDeadlines: createWriteBatcher(found.runDeadlines),
      runRetention: createWriteBatcher(found.runRetention),
      workTimeline: createWriteBatcher(found.workTimeline),
      runsRunning: createWriteBatcher(found.runsRunning),
      runsSuspended: createWriteBatcher(found.runsSuspended),
      conversationLocks: createWriteBatcher(found.conversationLocks),
      conversations: createWriteBatcher(found.conversations),
    },
  };
}
