import { describe, expect, it } from 'vitest';
import type { Agent, Collections, RunStore } from '@abide/shared';
import type { Db } from 'mongodb';
import { createAgentCache } from '@abide/shared';
import { createMongoStore } from './mongo-store.ts';

const agentOf = (tenantId: string, version: number, system = `v${version}`): Agent => ({
  tenantId,
  agentId: 'helper',
  version,
  system,
  model: { provider: 'scripted', steps: [{ text: 'hello' }] },
  tools: [],
  maxSteps: 10,
  limits: {},
  createdAt: '2030-01-01T00:00:00.000Z',
  updatedAt: '2030-01-01T00:00:00.000Z',
} as unknown as Agent);

/** `agents` and `agent_versions` over memory (by `_id`; projections applied to the top level), recording each read. */
function memoryAgents() {
  const reads: { collection: string; _id: string; projected: boolean }[] = [];
  const collection = (name: string) => {
    const documents = new Map<string, Record<string, unknown>>();
    return {
      documents,
      async findOne(filter: { _id: string }, options?: { projection?: Record<string, 1> }) {
        reads.push({ collection: name, _id: filter._id, projected: options?.projection !== undefined });
        const found = documents.get(filter._id);
        if (!found) return null;
        if (!options?.projection) return structuredClone(found);
        return Object.fromEntries(Object.entries(found).filter(([key]) => key === '_id' || key in options.projection!));
      },
      async insertOne(document: { _id: string }) {
        if (documents.has(document._id)) throw Object.assign(new Error('E11000 duplicate key'), { code: 11000 });
        documents.set(document._id, structuredClone(document));
      },
      async replaceOne(filter: { _id: string; version: { $lt: number } }, document: Record<string, unknown>) {
        const found = documents.get(filter._id);
        if (!found || (found.version as number) >= filter.version.$lt) return { matchedCount: 0 };
        documents.set(filter._id, structuredClone(document));
        return { matchedCount: 1 };
      },
    };
  };
  const agents = collection('agents');
  const agentVersions = collection('agent_versions');
  const collections = { agents, agentVersions } as unknown as Collections;
  /** A gateway replica's store over the shared collections (each with its own cache). */
  const replica = () => createMongoStore({ db: {} as Db, collections, runStore: {} as RunStore });
  return { reads, agents, agentVersions, replica };
}

/** An agent PUT as `agents.ts` does it: the version insert, then `agents`. */
async function put(store: ReturnType<ReturnType<typeof memoryAgents>['replica']>, agent: Agent) {
  expect(await store.insertAgentVersion(agent)).toBe(true);
  await store.writeAgent(agent);
}

describe('agent lookups with a cache of immutable versions', () => {
  it('reads only the next version\'s probe once a version is cached; a copy, never the cached object', async () => {
    const db = memoryAgents();
    const gateway = db.replica();
    await put(gateway, agentOf('t1', 1));
    db.reads.length = 0;
    const first = await gateway.findAgent('t1', 'helper');
    expect(first).toEqual(agentOf('t1', 1));
    expect(db.reads).toEqual([{ collection: 'agent_versions', _id: 't1:helper:2', projected: true }]);
    first!.system = 'changed by a caller';
    expect((await gateway.findAgent('t1', 'helper'))!.system).toBe('v1');
  });

  it('serves the next lookup the version a PUT made, through this replica or another, or half-written by one that died', async () => {
    const db = memoryAgents();
    const gatewayA = db.replica();
    const gatewayB = db.replica();
    await put(gatewayA, agentOf('t1', 1));
    expect((await gatewayA.findAgent('t1', 'helper'))!.version).toBe(1);
    // Another replica's PUT: `agents` names version 2.
    await put(gatewayB, agentOf('t1', 2));
    expect(await gatewayA.findAgent('t1', 'helper')).toEqual(agentOf('t1', 2));
    // A PUT that died between its two writes: version 3 is only in `agent_versions`.
    expect(await gatewayB.insertAgentVersion(agentOf('t1', 3))).toBe(true);
    expect(await gatewayA.findAgent('t1', 'helper')).toEqual(agentOf('t1', 3));
    // `agents` was changed under the cache (two PUTs since): still the one in force.
    await put(gatewayB, agentOf('t1', 4));
    await put(gatewayB, agentOf('t1', 5));
    expect(await gatewayA.findAgent('t1', 'helper')).toEqual(agentOf('t1', 5));
  });

  it('never serves one tenant\'s agent to another tenant with the same agent id', async () => {
    const db = memoryAgents();
    const gateway = db.replica();
    await put(gateway, agentOf('t1', 1, 't1 secret prompt'));
    expect((await gateway.findAgent('t1', 'helper'))!.system).toBe('t1 secret prompt');
    expect(await gateway.findAgent('t2', 'helper')).toBeNull();
    await put(gateway, agentOf('t2', 1, 't2 prompt'));
    expect(await gateway.findAgent('t2', 'helper')).toEqual(agentOf('t2', 1, 't2 prompt'));
    expect((await gateway.findAgent('t1', 'helper'))!.system).toBe('t1 secret prompt');

    const cache = createAgentCache();
    cache.remember(agentOf('t1', 1));
    expect(cache.latest('t2', 'helper')).toBeUndefined();
    expect(cache.latest('t1', 'helper')).toEqual(agentOf('t1', 1));
  });

  it('is bounded by count and by bytes, least recently used out first, and never moves back a version', () => {
    const cache = createAgentCache({ maxEntries: 2, maxBytes: 10_000 });
    cache.remember(agentOf('t1', 1));
    cache.remember(agentOf('t2', 1));
    cache.latest('t1', 'helper');
    cache.remember(agentOf('t3', 1));
    expect(cache.latest('t2', 'helper')).toBeUndefined();
    expect(cache.latest('t1', 'helper')).toBeDefined();
    cache.remember(agentOf('t1', 3));
    cache.remember(agentOf('t1', 2));
    expect(cache.latest('t1', 'helper')!.version).toBe(3);
    cache.remember(agentOf('t4', 1, 'x'.repeat(20_000)));
    expect(cache.latest('t4', 'helper')).toBeUndefined();
    expect(cache.stats().bytes).toBeLessThanOrEqual(10_000);
  });
});
