import { describe, expect, it } from 'vitest';
import { encodeJson } from './jetstream.ts';
import { createLogger } from './logger.ts';
import { createTenantLeases, leaseStaleMs, type LeaseBucket, type LeaseKvEntry } from './tenant-leases.ts';

const silentLogger = createLogger('tenant-leases-test', 'silent');

/**
 * An in-memory KV with JetStream's semantics for what the semaphore uses: one sequence for the
 * bucket, `create` fails on a live key, `update` and a `previousSeq` delete are compare-and-swaps on
 * the key's last revision, `created` is the (server) time of the revision.
 */
function createFakeBucket(clock: { now: number }) {
  const entries = new Map<string, LeaseKvEntry>();
  let sequence = 0;
  const write = (key: string, data: Uint8Array, operation: LeaseKvEntry['operation']) => {
    sequence += 1;
    entries.set(key, { value: data, revision: sequence, operation, created: new Date(clock.now) });
    return sequence;
  };
  const bucket: LeaseBucket = {
    async get(key) {
      return entries.get(key) ?? null;
    },
    async create(key, data) {
      if (entries.get(key)?.operation === 'PUT') throw new Error('wrong last sequence');
      return write(key, data, 'PUT');
    },
    async update(key, data, revision) {
      if (entries.get(key)?.revision !== revision) throw new Error('wrong last sequence');
      return write(key, data, 'PUT');
    },
    async delete(key, options) {
      if (options && entries.get(key)?.revision !== options.previousSeq) throw new Error('wrong last sequence');
      write(key, new Uint8Array(), 'DEL');
    },
  };
  const live = () => [...entries].filter(([, entry]) => entry.operation === 'PUT').map(([key]) => key);
  return { bucket, entries, live };
}

function setup(limit: number) {
  const clock = { now: Date.parse('2030-01-01T00:00:00Z') };
  const fake = createFakeBucket(clock);
  const make = (holder: string, kind: 'tool' | 'llm' = 'tool') =>
    createTenantLeases({ bucket: fake.bucket, kind, limit, holder, logger: silentLogger, now: () => clock.now });
  return { clock, fake, make };
}

describe('tenant leases (KV semaphore)', () => {
  it('grants at most `limit` slots per tenant across processes, independently per tenant and kind, and frees one on release', async () => {
    const { fake, make } = setup(2);
    const [one, two] = [make('worker-1'), make('worker-2')];
    const granted = await Promise.all([one.tryAcquire('acme', 'r1'), two.tryAcquire('acme', 'r2'), one.tryAcquire('acme', 'r3'), two.tryAcquire('acme', 'r4')]);
    expect(granted.filter(Boolean)).toHaveLength(2);
    expect(fake.live().sort()).toEqual(['tool.acme.0', 'tool.acme.1']);
    expect(await two.tryAcquire('acme', 'r5')).toBeUndefined();
    expect(await two.tryAcquire('globex', 'g1')).toBeDefined();
    expect(await make('worker-3', 'llm').tryAcquire('acme', 'm1')).toBeDefined();

    const held = granted.find(Boolean)!;
    await held.release();
    await held.release(); // a second release is a no-op: it never deletes a later holder's slot
    const next = await one.tryAcquire('acme', 'r6');
    expect(next?.key).toBe(held.key);
    await held.release();
    expect(fake.entries.get(held.key)!.operation).toBe('PUT');
  });

  it("takes over a crashed holder's slot once it is stale, not before; the late holder learns it lost it and never deletes the taker's", async () => {
    const { clock, fake, make } = setup(1);
    const crashed = make('worker-1');
    const lease = (await crashed.tryAcquire('acme', 'r1'))!;
    const other = make('worker-2');
    clock.now += leaseStaleMs - 1;
    expect(await other.tryAcquire('acme', 'r2')).toBeUndefined();
    clock.now += 1;
    const taken = await other.tryAcquire('acme', 'r2');
    expect(taken?.key).toBe(lease.key);

    expect(crashed.held).toBe(1);
    await crashed.refresh(); // the CAS on its old revision fails: it stops counting the lease
    expect(crashed.held).toBe(0);
    await lease.release();
    expect(fake.entries.get(lease.key)!.operation).toBe('PUT');
    expect(new TextDecoder().decode(fake.entries.get(lease.key)!.value)).toContain('worker-2/r2');
  });

  it('keeps a refreshed slot live past the stale time', async () => {
    const { clock, make } = setup(1);
    const holder = make('worker-1');
    await holder.tryAcquire('acme', 'r1');
    const other = make('worker-2');
    for (let tick = 0; tick < 10; tick += 1) {
      clock.now += leaseStaleMs / 2;
      await holder.refresh();
      expect(await other.tryAcquire('acme', 'r2')).toBeUndefined();
    }
    expect(holder.held).toBe(1);
  });

  it('lets only one of two takers win a stale slot', async () => {
    const { clock, fake, make } = setup(1);
    await fake.bucket.create('tool.acme.0', encodeJson({ holder: 'gone', at: '' })); // a holder that crashed
    clock.now += leaseStaleMs;
    const results = await Promise.all([make('a').tryAcquire('acme', 'x'), make('b').tryAcquire('acme', 'y')]);
    expect(results.filter(Boolean)).toHaveLength(1);
  });
});
