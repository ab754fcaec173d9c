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
  /** How often held leases are refreshed. @default 5000 */
  refreshMs?: number;
  now?: () => number;
  random?: () => number;
};

/** Default staleness of a lease; KV `TENANT_LEASES` keeps entries 4 times as long (jetstream.ts). */
export const leaseStaleMs = 30_000;

/**
 * A per-tenant counting semaphore in KV `TENANT_LEASES`, the same across every replica
 * (issue 8, DESIGN §8): slot `k` of a tenant is key `<kind>.<tenant>.<k>` (k < limit). Every race
 * is decided by the server: a slot is taken with an atomic create, taken over from a crashed holder
 * with a compare-and-swap on the revision the taker read, refreshed by a CAS on our own revision
 * and released by a delete conditional on it, so no two processes ever hold one slot at once.
 *
 * Crash windows: a holder that dies keeps its slot until the slot is `staleMs` old (no refresh),
 * then the next acquirer takes it over; the bucket's max age removes it anyway later. A holder
 * whose refresh is late by more than `staleMs` (a stalled event loop) may lose its slot to a
 * taker: its next refresh fails the CAS, it logs and stops counting the lease, so the tenant is
 * over its limit by one for the rest of that call at most.
 */
type HeldLease = { revision: number; label: string; refreshing?: Promise<void> | undefined };

export function createTenantLeases(options: TenantLeasesOptions) {
  const { bucket, kind, limit, holder, logger } = options;
  const staleMs = options.staleMs ?? leaseStaleMs;
  const refreshMs = options.refreshMs ?? 5_000;
  const now = options.now ?? Date.now;
  const random = options.random ?? Math.random;
  const log = logger.child({ leaseKind: kind });
  /** Held leases: key → the revision we wrote last. */
  const held = new Map<string, HeldLease>();
  let timer: ReturnType<typeof setInterval> | undefined;

  const valueOf = (label: string) => encodeJson({ holder: `${holder}/${label}`, at: new Date(now()).toISOString() });

  function makeLease(key: string, revision: number, label: string): Lease {
    const lease: HeldLease = { revision, label };
    held.set(key, lease);
    let released = false;
    return {
      key,
      async release() {
        if (released) return;
        released = true;
        const stillHeld = held.get(key) === lease;
        held.delete(key);
        if (!stillHeld) return; // lost to a taker already (see refresh)
        // A refresh in flight moves the revision: delete the one it wrote.
        await lease.refreshing;
        try {
          await bucket.delete(key, { previousSeq: lease.revision });
        } catch (error) {
          // Not deleted (taken over meanwhile, or NATS unreachable): the slot turns stale and is taken over.
          log.warn({ key, err: ensureError(error) }, 'could not release a tenant lease; it frees itself when stale');
        }
      },
    };
  }

  /** Takes over `key` if its holder stopped refreshing it; undefined if it is live or another taker won. */
  async function takeOverIfStale(key: string, entry: LeaseKvEntry, label: string): Promise<Lease | undefined> {
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
      return makeLease(key, revision, label);
    } catch (error) {
      // Another taker's CAS won (or it was refreshed, or deleted): not ours.
      log.debug({ key, err: ensureError(error) }, 'stale lease taken by another');
      return undefined;
    }
  }

  async function tryKey(key: string, label: string): Promise<Lease | undefined> {
    let createError: unknown;
    // In a NATS cluster the read below may be answered by a replica that has not yet applied the
    // write our create collided with (or the delete that freed the slot): a few tries, a moment
    // apart, let it catch up instead of failing the request.
    for (let attempt = 0; attempt < 5; attempt += 1) {
      if (attempt > 1) await new Promise((resolve) => setTimeout(resolve, 50 * attempt));
      try {
        return makeLease(key, await bucket.create(key, valueOf(label)), label);
      } catch (error) {
        // Usually the slot is held (read below); kept to rethrow if the key turns out to be empty twice.
        createError = error;
      }
      const entry = await bucket.get(key);
      if (entry && entry.operation === 'PUT') return takeOverIfStale(key, entry, label);
      // Released between our create and our read: create again.
    }
    throw createError;
  }

  async function refreshOne(key: string, lease: HeldLease): Promise<void> {
    try {
      lease.revision = await bucket.update(key, valueOf(lease.label), lease.revision);
    } catch (error) {
      const entry = await bucket.get(key).catch((readError: unknown) => {
        // NATS unreachable: keep the lease and try again at the next tick.
        log.warn({ key, err: ensureError(readError) }, 'could not refresh a tenant lease');
        return undefined;
      });
      if (entry === undefined) return;
      if (held.get(key) === lease && (!entry || entry.operation !== 'PUT' || entry.revision !== lease.revision)) {
        // Taken over as stale (our refresh came too late): stop counting it; the call goes on.
        held.delete(key);
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
     * Takes a free slot of `tenantId`, probing from a random one; undefined when all `limit` are
     * held. `label` says what the slot is for (a run id, a connection id).
     */
    async tryAcquire(tenantId: string, label: string): Promise<Lease | undefined> {
      const first = Math.floor(random() * limit);
      for (let offset = 0; offset < limit; offset += 1) {
        const lease = await tryKey(kvKeys.tenantLease(kind, tenantId, (first + offset) % limit), label);
        if (lease) return lease;
      }
      return undefined;
    },
    /** Leases held by this process now. */
    get held() {
      return held.size;
    },
    limit,
    /** Starts refreshing held leases every `refreshMs`. */
    start(): void {
      timer ??= setInterval(() => {
        refresh().catch((error: unknown) => log.warn({ err: ensureError(error) }, 'tenant lease refresh failed'));
      }, refreshMs);
      timer.unref();
    },
    /** Stops refreshing. Held leases are released by their owners (or turn stale). */
    stop(): void {
      if (timer) clearInterval(timer);
      timer = undefined;
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
