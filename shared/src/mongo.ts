import { MongoClient, type Collection, type Db, type Document, type WriteConcernSettings } from 'mongodb';
import { collections } from './names.ts';

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

export type Collections = {
  agents: Collection<Document & { _id: string }>;
  agentVersions: Collection<Document & { _id: string }>;
  runs: Collection<Document & { _id: string }>;
  runTransitions: Collection<Document & { _id: string }>;
  conversationLocks: Collection<Document & { _id: string }>;
  runWork: Collection<Document & { _id: string }>;
};

export function getCollections(db: Db): Collections {
  return {
    agents: db.collection(collections.agents),
    agentVersions: db.collection(collections.agentVersions),
    runs: db.collection(collections.runs),
    runTransitions: db.collection(collections.runTransitions),
    conversationLocks: db.collection(collections.conversationLocks),
    runWork: db.collection(collections.runWork),
  };
}
