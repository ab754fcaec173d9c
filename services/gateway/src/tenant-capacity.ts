import { ApiError, type Lease, type TenantLeases } from '@abide/shared';
import type { Backend } from './ports.ts';

/** `Retry-After` of a refused connection or subscription: a slot frees when another stream of the tenant ends. */
const retryAfterSeconds = 5;

const noLease: Lease = { key: 'unlimited', release: async () => {} };

/**
 * The gateway's per-tenant caps on open SSE streams + WebSockets and on event subscriptions
 * (issue 8), held in KV `TENANT_LEASES` so they hold across replicas. A refused acquisition
 * throws 429 `rate_limited` with `Retry-After` (an `error` frame on a WebSocket).
 */
export function createTenantCapacity(capacity: Backend['capacity']) {
  async function acquire(leases: TenantLeases | undefined, what: string, tenantId: string, label: string): Promise<Lease> {
    if (!leases) return noLease;
    const lease = await leases.tryAcquire(tenantId, label);
    if (lease) return lease;
    throw new ApiError('rate_limited', `the tenant has ${leases.limit} open ${what}, its limit; close one first`, {
      headers: { 'retry-after': String(retryAfterSeconds) },
    });
  }
  return {
    /** An SSE stream or a WebSocket. */
    acquireConnection: (tenantId: string, label: string) => acquire(capacity?.connections, 'connections (SSE streams and WebSockets)', tenantId, label),
    /** A run event subscription (an SSE stream, a WebSocket `subscribe`). */
    acquireSubscription: (tenantId: string, label: string) => acquire(capacity?.subscriptions, 'event subscriptions', tenantId, label),
  };
}
export type TenantCapacity = ReturnType<typeof createTenantCapacity>;
