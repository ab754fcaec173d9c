import { ApiError } from '@abide/shared';

export type RateLimitOptions = {
  /** Tokens a tenant may spend at once. @default 50 */
  burst: number;
  /** Tokens added per second. @default 20 */
  perSecond: number;
};

/** Run creation per tenant (docs/api.md, "Rate limits"). */
export const defaultRunCreationLimit: RateLimitOptions = { burst: 50, perSecond: 20 };

/** Tenants whose buckets are tracked at once; full buckets are forgotten first. */
const maxTrackedTenants = 10_000;

/**
 * A per-tenant token bucket, in this process (each replica limits on its own). `take` throws
 * `ApiError('rate_limited')` with `Retry-After` when the tenant has no token left.
 */
export function createRateLimiter(options: RateLimitOptions = defaultRunCreationLimit, now: () => number = Date.now, what = 'runs created') {
  const buckets = new Map<string, { tokens: number; at: number }>();

  function refill(tenantId: string): { tokens: number; at: number } {
    const time = now();
    const bucket = buckets.get(tenantId) ?? { tokens: options.burst, at: time };
    bucket.tokens = Math.min(options.burst, bucket.tokens + ((time - bucket.at) / 1000) * options.perSecond);
    bucket.at = time;
    return bucket;
  }

  function forgetFullBuckets(): void {
    for (const [tenantId] of buckets) {
      if (refill(tenantId).tokens >= options.burst) buckets.delete(tenantId);
    }
  }

  return {
    take(tenantId: string): void {
      const bucket = refill(tenantId);
      if (bucket.tokens < 1) {
        const retryAfterSeconds = Math.max(1, Math.ceil((1 - bucket.tokens) / options.perSecond));
        throw new ApiError('rate_limited', `too many ${what}; retry in ${retryAfterSeconds} s`, { headers: { 'retry-after': String(retryAfterSeconds) } });
      }
      bucket.tokens -= 1;
      if (!buckets.has(tenantId) && buckets.size >= maxTrackedTenants) forgetFullBuckets();
      buckets.set(tenantId, bucket);
    },
  };
}
export type RateLimiter = ReturnType<typeof createRateLimiter>;
