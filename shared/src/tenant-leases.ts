import { z } from 'zod';
import { ensureError } from './errors.ts';
import { decodeJson, encodeJson } from './jetstream.ts';
import type { Logger } from './logger.ts';
import { kvKeys, type TenantLeaseKind } from './names.ts';

/** What the semaphore needs of a KV entry (a nats.js `KvEntry` fits). `created` is the server's time of this revision. */
export type LeaseKvEntry = { value: Uint8Array; revision: number; operation: 'PUT' | 'DEL' | 'PURGE'; created: Date };

/** What the semaphore needs of KV `TENANT_LEASES` (a nats.js `KV` fits); unit tests pass an in-memory fake. */
export type LeaseBucket = {
  get(key: string): Promise<LeaseKvEntry | null>;
  /** Atomic create: fails if the key holds a value. */
  create(key: string, data: Uint8Array): Promise<number>;
  /** Compare-and-swap: fails unless the key's last revision is `revision`. */
  update(key: string, data: Uint8Array, revision: number): Promise<number>;
  /** With `previousSeq`: deletes only if the key's last revision is still that one. */
  delete(key: string, options?: { previousSeq: number }): Promise<void>;
};

/** The value of a lease: who holds it (process and what for) and since when, for operators. */
export const leaseValueSchema = z.looseObject({ holder: z.string(), at: z.string() });

/** A slot held by this process; `release` frees it (at most once, never someone else's). */
export type Lease = { readonly key: string; release(): Promise<void> };

/** Cancels a callback scheduled with `TenantLeasesOptions.schedule`. */
export type CancelScheduled = () => void;

export type TenantLeasesOptions = {
  bucket: LeaseBucket;
  kind: TenantLeaseKind;
  /** Slots per tenant (the limit, across every replica). */
  limit: number;
  /** Names this process in lease values (e.g. `tool-worker/<host>/<pid>`). */
  holder: string;
  logger: Logger;
  /** A lease not refreshed for this long (by the server's clock of its last revision) may be taken over. @default 30000 */
  staleMs?: number;
  /**
   * How often held leases are refreshed. Each refresh is a KV write (a stream append synced to
   * disk), per held lease: an idle open connection costs one every `refreshMs`. @default staleMs / 3
   */
  refreshMs?: number;
  /**
   * How long a released slot stays held ("warm") for this process's next `tryAcquire` of the same
   * tenant, which then reuses it without a KV operation; a warm slot idle this long is deleted. 0
   * deletes at release; the services use `TENANT_LEASE_KEEP_IDLE`. @default 0
   */
  keepIdleMs?: number;
  now?: () => number;
  random?: () => number;
  /** Runs `callback` after `ms` (an unref'd timer); tests pass a manual scheduler. */
  schedule?: (callback: () => void, ms: number) => CancelScheduled;
};

/** Default staleness of a lease; KV `TENANT_LEASES` keeps entries 4 times as long (jetstream.ts). */
export const leaseStaleMs = 30_000;

function scheduleUnref(callback: () => void, ms: number): CancelScheduled {
  const timer = setTimeout(callback, ms);
  timer.unref();
  return () => clearTimeout(timer);
}

/**
 * A slot this process holds: in use while `handle` is set, else warm (kept for reuse, `keepIdleMs`).
 * `label` says what it is for; the lease value shows it as of the slot's last write (take,
 * takeover or refresh): a reuse sets it without writing, the next refresh writes it, and a warm
 * slot shows its last user's.
 */
type HeldLease = {
  readonly key: string;
  readonly tenantId: string;
  revision: number;
  label: string;
  /** `now()` when our last write of this slot (create, takeover, refresh) was acknowledged. */
  writtenAt: number;
  refreshing?: Promise<void> | undefined;
  handle?: Lease | undefined;
  /** While warm: when it went idle, and its idle expiry's cancel. */
  idleSince?: number | undefined;
  cancelIdle?: CancelScheduled | undefined;
};

/**
 * A per-tenant counting semaphore in KV `TENANT_LEASES`, the same across every replica
 * (issue 8, DESIGN §8): slot `k` of a tenant is key `<kind>.<tenant>.<k>` (k < limit). Every race
 * is decided by the server: a slot is taken with an atomic create, taken over from a crashed holder
 * with a compare-and-swap on the revision the taker read, refreshed by a CAS on our own revision
 * and released by a delete conditional on it, so no two processes ever hold one slot at once.
 * With `keepIdleMs`, a released slot stays ours (in KV, refreshed like any held slot) for that
 * long and the next acquisition of its tenant in this process takes it back with no KV operation;
 * it still counts against the limit, so the limit holds, but another replica finds it taken until
 * it expires (deleted, the same conditional delete) or `stop` releases it.
 *
 * Crash windows: a holder that dies keeps its slots (warm ones included) until they are `staleMs`
 * old (no refresh), then the next acquirer takes them over; the bucket's max age removes them
 * anyway later. A holder whose refresh is late by more than `staleMs` (a stalled event loop) may
 * lose its slot to a taker: its next refresh fails the CAS, it logs and stops counting the lease,
 * so the tenant is over its limit by one for the rest of that call at most. A warm slot is reused
 * only while our last write of it is younger than `staleMs / 2`, so a stall cannot make us reuse
 * a slot a taker may already have.
 */
export function createTenantLeases(options: TenantLeasesOptions) {
  const { bucket, kind, limit, holder, logger } = options;
  const staleMs = options.staleMs ?? leaseStaleMs;
  const refreshMs = options.refreshMs ?? staleMs / 3;
  const keepIdleMs = options.keepIdleMs ?? 0;
  const now = options.now ?? Date.now;
  const random = options.random ?? Math.random;
  const schedule = options.schedule ?? scheduleUnref;
  const log = logger.child({ leaseKind: kind });
  /** Held leases (in use and warm): key → the revision we wrote last. */
  const held = new Map<string, HeldLease>();
  /** Warm leases by tenant, the most recently released last. */
  const warm = new Map<string, HeldLease[]>();
  /** Deletes under way that nobody awaits (idle expiries, skipped warm slots): `stop` waits for them. */
  const freeing = new Set<Promise<void>>();
  let timer: ReturnType<typeof setInterval> | undefined;
  let stopped = false;

  const valueOf = (label: string) => encodeJson({ holder: `${holder}/${label}`, at: new Date(now()).toISOString() });

  /** Hands `lease` to a new user; the handle's `release` ends that use (at most once). */
  function handOut(lease: HeldLease, label: string): Lease {
    let released = false;
    const handle: Lease = {
      key: lease.key,
      async release() {
        if (released) return;
        released = true;
        // Lost to a taker already (see refresh): not ours to delete.
        if (held.get(lease.key) !== lease || lease.handle !== handle) return;
        lease.handle = undefined;
        if (keepIdleMs > 0 && !stopped) keepWarm(lease);
        else await free(lease);
      },
    };
    lease.label = label;
    lease.handle = handle;
    return handle;
  }

  function makeLease(key: string, tenantId: string, revision: number, label: string): Lease {
    const lease: HeldLease = { key, tenantId, revision, label, writtenAt: now() };
    held.set(key, lease);
    return handOut(lease, label);
  }

  /** Stops holding `lease` and deletes it from the bucket if it is still our revision. */
  async function free(lease: HeldLease): Promise<void> {
    held.delete(lease.key);
    // A refresh in flight moves the revision: delete the one it wrote.
    await lease.refreshing;
    try {
      await bucket.delete(lease.key, { previousSeq: lease.revision });
    } catch (error) {
      // Not deleted (taken over meanwhile, or NATS unreachable): the slot turns stale and is taken over.
      log.warn({ key: lease.key, err: ensureError(error) }, 'could not release a tenant lease; it frees itself when stale');
    }
  }

  function freeInBackground(lease: HeldLease): void {
    const freed = free(lease);
    freeing.add(freed);
    void freed.finally(() => freeing.delete(freed));
  }

  function keepWarm(lease: HeldLease): void {
    lease.idleSince = now();
    lease.cancelIdle = schedule(() => {
      if (unwarm(lease)) freeInBackground(lease);
    }, keepIdleMs);
    const list = warm.get(lease.tenantId);
    if (list) list.push(lease);
    else warm.set(lease.tenantId, [lease]);
  }

  /** Takes `lease` out of the warm ones (its idle expiry cancelled); false if it was not warm. */
  function unwarm(lease: HeldLease): boolean {
    const list = warm.get(lease.tenantId);
    const index = list ? list.indexOf(lease) : -1;
    if (index < 0) return false;
    list!.splice(index, 1);
    if (list!.length === 0) warm.delete(lease.tenantId);
    lease.cancelIdle?.();
    lease.cancelIdle = undefined;
    lease.idleSince = undefined;
    return true;
  }

  /** A warm slot of `tenantId` for a new use, or undefined; warm slots unfit for reuse are freed on the way. */
  function reuseWarm(tenantId: string, label: string): Lease | undefined {
    for (let lease = warm.get(tenantId)?.at(-1); lease; lease = warm.get(tenantId)?.at(-1)) {
      const idleFor = now() - (lease.idleSince ?? 0);
      unwarm(lease);
      if (held.get(lease.key) !== lease) continue; // lost to a taker (refresh): not ours any more
      // Its idle expiry is overdue, or its last write is old enough that a stall may have let a
      // taker in: give it back through the server instead.
      if (idleFor > keepIdleMs || now() - lease.writtenAt >= staleMs / 2) {
        freeInBackground(lease);
        continue;
      }
      return handOut(lease, label);
    }
    return undefined;
  }

  /** Takes over `key` if its holder stopped refreshing it; undefined if it is live or another taker won. */
  async function takeOverIfStale(key: string, tenantId: string, entry: LeaseKvEntry, label: string): Promise<Lease | undefined> {
    if (now() - entry.created.getTime() < staleMs) return undefined;
    try {
      const revision = await bucket.update(key, valueOf(label), entry.revision);
      let previous: unknown;
      try {
        previous = leaseValueSchema.parse(decodeJson(entry.value)).holder;
      } catch (error) {
        // Only read for the log line: a value we cannot read is taken over all the same.
        previous = ensureError(error).message;
      }
      log.info({ key, previousHolder: previous }, 'took over a stale tenant lease');
      return makeLease(key, tenantId, revision, label);
    } catch (error) {
      // Another taker's CAS won (or it was refreshed, or deleted): not ours.
      log.debug({ key, err: ensureError(error) }, 'stale lease taken by another');
      return undefined;
    }
  }

  async function tryKey(key: string, tenantId: string, label: string): Promise<Lease | undefined> {
    let createError: unknown;
    // In a NATS cluster the read below may be answered by a replica that has not yet applied the
    // write our create collided with (or the delete that freed the slot): a few tries, a moment
    // apart, let it catch up instead of failing the request.
    for (let attempt = 0; attempt < 5; attempt += 1) {
      if (attempt > 1) await new Promise((resolve) => setTimeout(resolve, 50 * attempt));
      try {
        return makeLease(key, tenantId, await bucket.create(key, valueOf(label)), label);
      } catch (error) {
        // Usually the slot is held (read below); kept to rethrow if the key turns out to be empty twice.
        createError = error;
      }
      const entry = await bucket.get(key);
      if (entry && entry.operation === 'PUT') return takeOverIfStale(key, tenantId, entry, label);
      // Released between our create and our read: create again.
    }
    throw createError;
  }

  async function refreshOne(key: string, lease: HeldLease): Promise<void> {
    try {
      lease.revision = await bucket.update(key, valueOf(lease.label), lease.revision);
      lease.writtenAt = now();
    } catch (error) {
      const entry = await bucket.get(key).catch((readError: unknown) => {
        // NATS unreachable: keep the lease and try again at the next tick.
        log.warn({ key, err: ensureError(readError) }, 'could not refresh a tenant lease');
        return undefined;
      });
      if (entry === undefined) return;
      if (held.get(key) === lease && (!entry || entry.operation !== 'PUT' || entry.revision !== lease.revision)) {
        // Taken over as stale (our refresh came too late): stop counting it; the call goes on (a
        // warm one is simply dropped).
        held.delete(key);
        unwarm(lease);
        log.warn({ key, err: ensureError(error) }, 'lost a tenant lease to a taker (refresh was late)');
      }
    }
  }

  async function refresh(): Promise<void> {
    for (const [key, lease] of [...held]) {
      if (held.get(key) !== lease) continue; // released meanwhile
      lease.refreshing = refreshOne(key, lease);
      await lease.refreshing;
      lease.refreshing = undefined;
    }
  }

  return {
    /**
     * Takes a free slot of `tenantId`: a warm one of this process if there is one (no KV
     * operation), else one from the bucket, probing from a random one; undefined when all `limit`
     * are held. `label` says what the slot is for (a run id, a connection id).
     */
    async tryAcquire(tenantId: string, label: string): Promise<Lease | undefined> {
      const reused = reuseWarm(tenantId, label);
      if (reused) return reused;
      const first = Math.floor(random() * limit);
      for (let offset = 0; offset < limit; offset += 1) {
        const lease = await tryKey(kvKeys.tenantLease(kind, tenantId, (first + offset) % limit), tenantId, label);
        if (lease) return lease;
      }
      return undefined;
    },
    /** Slots held by this process now: in use plus warm. */
    get held() {
      return held.size;
    },
    /** Of `held`, the warm ones (released, kept for reuse). */
    get warm() {
      let count = 0;
      for (const list of warm.values()) count += list.length;
      return count;
    },
    limit,
    /** Starts refreshing held leases (warm ones included) every `refreshMs`. */
    start(): void {
      timer ??= setInterval(() => {
        refresh().catch((error: unknown) => log.warn({ err: ensureError(error) }, 'tenant lease refresh failed'));
      }, refreshMs);
      timer.unref();
    },
    /**
     * Stops refreshing and releases every warm slot (call it before the NATS connection closes);
     * leases in use are released by their owners (deleted at once from now on) or turn stale.
     */
    async stop(): Promise<void> {
      stopped = true;
      if (timer) clearInterval(timer);
      timer = undefined;
      for (const list of [...warm.values()]) {
        for (const lease of [...list]) if (unwarm(lease)) freeInBackground(lease);
      }
      await Promise.all([...freeing]);
    },
    /** One refresh pass now (tests). */
    refresh,
  };
}
export type TenantLeases = ReturnType<typeof createTenantLeases>;

/**
 * The consumer runner's `admit` (consumer.ts) for envelopes: a message is handled while it holds
 * one of its tenant's `leases` slots, and deferred when the tenant has none free.
 */
export function admitByTenant(leases: TenantLeases) {
  return async (delivery: { message: { tenantId: string; runId: string } }): Promise<(() => Promise<void>) | undefined> => {
    const lease = await leases.tryAcquire(delivery.message.tenantId, delivery.message.runId);
    return lease ? () => lease.release() : undefined;
  };
}
