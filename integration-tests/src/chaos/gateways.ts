import { setTimeout as sleep } from 'node:timers/promises';
import type { Stack } from '../harness/stack.ts';
import type { Random } from './random.ts';

export type GatewayResponse = { status: number; body: any };

/**
 * The public API through whichever gateway replica is alive, as a client behind a load
 * balancer sees it: a request that fails because its gateway died (connection refused or reset,
 * 503 while draining or not ready) is sent again to a live one. Only idempotent requests go
 * through here (creation with an Idempotency-Key, approval decisions, reads).
 */
export class GatewayPool {
  readonly #stack: Stack;
  readonly #random: Random;
  readonly #key: string;
  /** Requests sent again after their gateway failed. */
  retries = 0;

  constructor(stack: Stack, random: Random, key: string) {
    this.#stack = stack;
    this.#random = random;
    this.#key = key;
  }

  /** Base URLs of the gateway replicas whose process runs now (all of them if none does). */
  liveUrls(): string[] {
    const gateways = this.#stack.services.filter((service) => service.name === 'gateway');
    const live = gateways.filter((service) => service.running);
    return (live.length ? live : gateways).map((service) => service.healthUrl);
  }

  pickUrl(): string {
    return this.#random.pick(this.liveUrls());
  }

  async request(method: string, path: string, body?: unknown, headers: Record<string, string> = {}, timeoutMs = 60_000): Promise<GatewayResponse> {
    const deadline = Date.now() + timeoutMs;
    let lastFailure = '';
    for (let attempt = 0; Date.now() < deadline; attempt += 1) {
      if (attempt > 0) {
        this.retries += 1;
        await sleep(Math.min(1_000, 50 * 2 ** attempt));
      }
      const url = this.pickUrl();
      let response: Response;
      try {
        response = await fetch(`${url}${path}`, {
          method,
          headers: {
            authorization: `Bearer ${this.#key}`,
            ...(body === undefined ? {} : { 'content-type': 'application/json' }),
            ...headers,
          },
          ...(body === undefined ? {} : { body: JSON.stringify(body) }),
          // Generous: an overloaded machine (two cores, every service and both servers) answers slowly.
          signal: AbortSignal.timeout(30_000),
        });
      } catch (error) {
        lastFailure = `${url}: ${(error as Error).message}`;
        continue;
      }
      const text = await response.text().catch(() => '');
      if (response.status === 503 || response.status === 502) {
        lastFailure = `${url}: ${response.status} ${text.slice(0, 200)}`;
        continue;
      }
      let parsed: unknown = text;
      try {
        parsed = text ? JSON.parse(text) : undefined;
      } catch {
        // Not JSON (an SSE body): keep the text.
      }
      return { status: response.status, body: parsed };
    }
    throw new Error(`${method} ${path}: no gateway answered within ${timeoutMs} ms (last: ${lastFailure})`);
  }
}
