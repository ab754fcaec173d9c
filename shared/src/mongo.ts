import { MongoClient, type Collection, type Db, type Document } from 'mongodb';
import { collections } from './names.ts';

/**
 * MongoDB access. Only features FerretDB 1.24 implements correctly are used (DESIGN §3): no
 * transactions, change streams, TTL/partial indexes, `arrayFilters`, `$lookup`. Every race is
 * decided by an insert whose `_id` exists (E11000).
 */
export function createMongoClient(url: string): MongoClient {
  return new MongoClient(url, {
    serverSelectionTimeoutMS: 5_000,
    connectTimeoutMS: 5_000,
    retryWrites: false,
    retryReads: true,
    appName: 'abide',
  });
}

/** Indexes of DESIGN §3, created idempotently at start-up. */
export async function ensureIndexes(db: Db): Promise<void> {
  await Promise.all([
    db.collection(collections.runs).createIndexes([
      { key: { tenantId: 1, conversationId: 1, createdAt: -1 }, name: 'tenant_conversation_created' },
      { key: { tenantId: 1, status: 1, createdAt: -1 }, name: 'tenant_status_created' },
      { key: { tenantId: 1, createdAt: -1 }, name: 'tenant_created' },
      { key: { nextDeadlineAt: 1 }, name: 'next_deadline' },
    ]),
    db.collection(collections.runTransitions).createIndexes([{ key: { published: 1, at: 1 }, name: 'published_at' }]),
  ]);
}

export type Collections = {
  agents: Collection<Document & { _id: string }>;
  agentVersions: Collection<Document & { _id: string }>;
  runs: Collection<Document & { _id: string }>;
  runTransitions: Collection<Document & { _id: string }>;
  conversationLocks: Collection<Document & { _id: string }>;
};

export function getCollections(db: Db): Collections {
  return {
    agents: db.collection(collections.agents),
    agentVersions: db.collection(collections.agentVersions),
    runs: db.collection(collections.runs),
    runTransitions: db.collection(collections.runTransitions),
    conversationLocks: db.collection(collections.conversationLocks),
  };
}
