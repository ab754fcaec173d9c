import { describe, expect, it } from 'vitest';
import { encodeJson } from './jetstream.ts';
import { createLogger } from './logger.ts';
import { createTenantLeases, leaseStaleMs, type LeaseBucket, type LeaseKvEntry, type TenantLeasesOptions } from './tenant-leases.ts';

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
  /** Bucket operations, by kind, since the fake was made. */
  const calls = { get: 0, create: 0, update: 0, delete: 0 };
  const counted: LeaseBucket = {
    get: (key) => (calls.get++, bucket.get(key)),
    create: (key, data) => (calls.create++, bucket.create(key, data)),
    update: (key, data, revision) => (calls.update++, bucket.update(key, data, revision)),
    delete: (key, options) => (calls.delete++, bucket.delete(key, options)),
  };
  const callCount = () => calls.get + calls.create + calls.update + calls.delete;
  return { bucket: counted, entries, live, calls, callCount };
}

/** A manual clock and timer queue: `advance` moves the clock and runs what came due, in order. */
function createManualTime(clock: { now: number }) {
  let pending: { at: number; callback: () => void }[] = [];
  return {
    schedule(callback: () => void, ms: number) {
      const entry = { at: clock.now + ms, callback };
      pending.push(entry);
      return () => {
        pending = pending.filter((candidate) => candidate !== entry);
      };
    },
    async advance(ms: number) {
      clock.now += ms;
      for (;;) {
        const due = pending.filter((entry) => entry.at <= clock.now).sort((left, right) => left.at - right.at)[0];
        if (!due) break;
        pending = pending.filter((entry) => entry !== due);
        due.callback();
      }
      // Let the deletes the callbacks started settle (the fake bucket answers in microtasks).
      for (let tick = 0; tick < 10; tick += 1) await Promise.resolve();
    },
    get scheduled() {
      return pending.length;
    },
  };
}

function setup(limit: number) {
  const clock = { now: Date.parse('2030-01-01T00:00:00Z') };
  const fake = createFakeBucket(clock);
  const time = createManualTime(clock);
  const make = (holder: string, kind: 'tool' | 'llm' = 'tool', extra: Partial<TenantLeasesOptions> = {}) =>
    createTenantLeases({ bucket: fake.bucket, kind, limit, holder, logger: silentLogger, now: () => clock.now, schedule: time.schedule, ...extra });
  return { clock, fake, make, time };
}

const keepIdleMs = 1_000;
const valueOf = (entry: LeaseKvEntry | undefined) => new TextDecoder().decode(entry!.value);

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

  it('deletes a released slot at once without keepIdleMs (the gateway\'s leases)', async () => {
    const { fake, make, time } = setup(1);
    const leases = make('gateway-1', 'tool');
    const lease = (await leases.tryAcquire('acme', 'c1'))!;
    await lease.release();
    expect(fake.live()).toEqual([]);
    expect([leases.held, leases.warm, time.scheduled]).toEqual([0, 0, 0]);
  });

  it('keeps a released slot warm and reuses it for the same tenant with no bucket call, labelled for its new use at the next refresh', async () => {
    const { fake, make } = setup(2);
    const leases = make('worker-1', 'llm', { keepIdleMs });
    const first = (await leases.tryAcquire('acme', 'run-1'))!;
    const revision = fake.entries.get(first.key)!.revision;
    const before = fake.callCount();
    await first.release();
    expect([leases.held, leases.warm]).toEqual([1, 1]);
    const second = (await leases.tryAcquire('acme', 'run-2'))!;
    await second.release();
    const third = (await leases.tryAcquire('acme', 'run-3'))!;
    expect(fake.callCount()).toBe(before);
    expect([second.key, third.key]).toEqual([first.key, first.key]);
    expect(fake.entries.get(first.key)!.revision).toBe(revision);
    expect([leases.held, leases.warm]).toEqual([1, 0]);
    // An earlier use's handle can no longer release the slot its successor holds.
    await first.release();
    await second.release();
    expect(fake.live()).toEqual([first.key]);
    expect([leases.held, leases.warm]).toEqual([1, 0]);

    // Another tenant's acquisition does not take acme's warm slot.
    await third.release();
    const other = (await leases.tryAcquire('globex', 'g-1'))!;
    expect(other.key).toMatch(/^llm\.globex\./);
    expect(leases.warm).toBe(1);

    const reused = (await leases.tryAcquire('acme', 'run-4'))!;
    await leases.refresh();
    expect(valueOf(fake.entries.get(reused.key))).toContain('worker-1/run-4');
  });

  it('deletes a warm slot once it has been idle for keepIdleMs, not before, with the conditional delete', async () => {
    const { fake, make, time } = setup(1);
    const leases = make('worker-1', 'tool', { keepIdleMs });
    const lease = (await leases.tryAcquire('acme', 'run-1'))!;
    await lease.release();
    await time.advance(keepIdleMs - 1);
    expect(fake.live()).toEqual([lease.key]);
    const deletesBefore = fake.calls.delete;
    await time.advance(1);
    expect(fake.calls.delete).toBe(deletesBefore + 1);
    expect(fake.live()).toEqual([]);
    expect([leases.held, leases.warm]).toEqual([0, 0]);
    // Now free for another process.
    expect(await make('worker-2').tryAcquire('acme', 'run-2')).toBeDefined();
  });

  it('restarts the idle time at each reuse: a slot in use is never expired', async () => {
    const { fake, make, time } = setup(1);
    const leases = make('worker-1', 'tool', { keepIdleMs });
    let lease = (await leases.tryAcquire('acme', 'run-1'))!;
    for (let step = 0; step < 5; step += 1) {
      await lease.release();
      await time.advance(keepIdleMs / 2);
      lease = (await leases.tryAcquire('acme', `run-${step}`))!;
      await time.advance(keepIdleMs * 3); // a long call: in use, not idle
      expect(fake.live()).toEqual([lease.key]);
    }
    expect(fake.calls.delete).toBe(0);
  });

  it('refreshes a warm slot, so it never turns stale while held', async () => {
    const { clock, fake, make } = setup(1);
    // An idle time longer than the stale time, to show the refresh (not the expiry) keeps it.
    const leases = make('worker-1', 'tool', { keepIdleMs: leaseStaleMs * 10 });
    const lease = (await leases.tryAcquire('acme', 'run-1'))!;
    await lease.release();
    const other = make('worker-2');
    for (let tick = 0; tick < 6; tick += 1) {
      const revision = fake.entries.get(lease.key)!.revision;
      clock.now += leaseStaleMs / 2;
      await leases.refresh();
      expect(fake.entries.get(lease.key)!.revision).toBeGreaterThan(revision);
      expect(await other.tryAcquire('acme', 'run-2')).toBeUndefined();
    }
    expect([leases.held, leases.warm]).toEqual([1, 1]);
  });

  it('does not reuse a warm slot whose last write is old (a stalled process may have lost it): it goes back through the bucket', async () => {
    const { clock, fake, make } = setup(1);
    const leases = make('worker-1', 'tool', { keepIdleMs: leaseStaleMs * 10 });
    const lease = (await leases.tryAcquire('acme', 'run-1'))!;
    await lease.release();
    clock.now += leaseStaleMs; // no refresh ran: a taker may have taken it over
    const taken = (await make('worker-2').tryAcquire('acme', 'run-2'))!;
    expect(taken.key).toBe(lease.key);
    expect(await leases.tryAcquire('acme', 'run-3')).toBeUndefined();
    expect(valueOf(fake.entries.get(lease.key))).toContain('worker-2/run-2');
    expect([leases.held, leases.warm]).toEqual([0, 0]);
  });

  it('drops a warm slot a taker won (refresh finds it lost) without deleting the taker\'s', async () => {
    const { clock, fake, make, time } = setup(1);
    const leases = make('worker-1', 'tool', { keepIdleMs });
    const lease = (await leases.tryAcquire('acme', 'run-1'))!;
    await lease.release();
    clock.now += leaseStaleMs;
    const taken = (await make('worker-2').tryAcquire('acme', 'run-2'))!;
    await leases.refresh();
    expect([leases.held, leases.warm, time.scheduled]).toEqual([0, 0, 0]);
    await time.advance(keepIdleMs);
    expect(fake.live()).toEqual([taken.key]);
    expect(valueOf(fake.entries.get(taken.key))).toContain('worker-2/run-2');
  });

  it('releases every warm slot on stop, leaves slots in use to their owners, and deletes at release after stop', async () => {
    const { fake, make, time } = setup(3);
    const leases = make('worker-1', 'tool', { keepIdleMs });
    const [a, b, c] = [(await leases.tryAcquire('acme', 'r1'))!, (await leases.tryAcquire('acme', 'r2'))!, (await leases.tryAcquire('globex', 'g1'))!];
    await a.release();
    await c.release();
    expect([leases.held, leases.warm]).toEqual([3, 2]);
    await leases.stop();
    expect(fake.live()).toEqual([b.key]);
    expect([leases.held, leases.warm, time.scheduled]).toEqual([1, 0, 0]);
    await b.release();
    expect(fake.live()).toEqual([]);
    expect(leases.held).toBe(0);
  });

  it('never grants more than the limit across two processes sharing the bucket while one holds warm slots, and frees them to the other after the idle time', async () => {
    const { fake, make, time } = setup(2);
    const one = make('worker-1', 'tool', { keepIdleMs });
    const two = make('worker-2', 'tool', { keepIdleMs });
    const held = [(await one.tryAcquire('acme', 'r1'))!, (await one.tryAcquire('acme', 'r2'))!];
    for (const lease of held) await lease.release();
    expect([one.held, one.warm]).toEqual([2, 2]);
    // Both slots are warm in `one`: `two` is refused, `one` reuses them, and no third is granted anywhere.
    expect(await two.tryAcquire('acme', 'r3')).toBeUndefined();
    const reused = [await one.tryAcquire('acme', 'r4'), await one.tryAcquire('acme', 'r5'), await one.tryAcquire('acme', 'r6')];
    expect(reused.filter(Boolean)).toHaveLength(2);
    expect(await two.tryAcquire('acme', 'r7')).toBeUndefined();
    expect(fake.live()).toHaveLength(2);

    for (const lease of reused) await lease?.release();
    await time.advance(keepIdleMs);
    expect([one.held, one.warm]).toEqual([0, 0]);
    const granted = await Promise.all([two.tryAcquire('acme', 'r8'), two.tryAcquire('acme', 'r9'), one.tryAcquire('acme', 'r10')]);
    expect(granted.filter(Boolean)).toHaveLength(2);
    expect(fake.live()).toHaveLength(2);
  });
});
