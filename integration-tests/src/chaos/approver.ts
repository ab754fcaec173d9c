import { setTimeout as sleep } from 'node:timers/promises';
import type { GatewayPool } from './gateways.ts';
import type { RunPlan } from './workload.ts';

/**
 * Decides the chaos runs' approvals over HTTP, as the plan says (approve or deny, after a
 * seeded delay), through any live gateway. A decision whose answer was lost with its gateway is
 * sent again: the ledger answers the repeat `already_decided`. Learns of approvals from the
 * followers' `approval.requested` events and, as a backstop, from the pending-approvals inbox.
 */
export class Approver {
  /** `<runId>:<toolCallId>` → the decision the gateway accepted. */
  readonly decided = new Map<string, boolean>();
  readonly problems: string[] = [];
  readonly answers: Record<string, number> = {};
  readonly #pool: GatewayPool;
  readonly #plans: Map<string, RunPlan>;
  readonly #inFlight = new Set<string>();
  #timer: NodeJS.Timeout | undefined;
  #polling = false;
  #stopped = false;

  constructor(pool: GatewayPool, plansByRunId: Map<string, RunPlan>) {
    this.#pool = pool;
    this.#plans = plansByRunId;
  }

  request(runId: string, toolCallId: string): void {
    const key = `${runId}:${toolCallId}`;
    const plan = this.#plans.get(runId);
    if (!plan || this.decided.has(key) || this.#inFlight.has(key) || this.#stopped) return;
    this.#inFlight.add(key);
    const approved = plan.approves(toolCallId);
    setTimeout(() => {
      this.#decide(runId, toolCallId, approved)
        .catch((error: Error) => this.problems.push(`${key}: decision not delivered: ${error.message}`))
        .finally(() => this.#inFlight.delete(key));
    }, plan.decisionDelayMs(toolCallId));
  }

  async #decide(runId: string, toolCallId: string, approved: boolean): Promise<void> {
    const key = `${runId}:${toolCallId}`;
    const body = approved ? { approved: true } : { approved: false, reason: 'chaos says no' };
    for (let attempt = 0; attempt < 20; attempt += 1) {
      const response = await this.#pool.request('POST', `/v1/runs/${runId}/approvals/${toolCallId}`, body);
      const answer = `${response.status} ${response.body?.status ?? response.body?.error?.code ?? ''}`.trim();
      this.answers[answer] = (this.answers[answer] ?? 0) + 1;
      if (response.status === 202 || (response.status === 200 && response.body?.status === 'already_decided')) {
        this.decided.set(key, approved);
        return;
      }
      if (response.status < 500) {
        this.problems.push(`${key}: deciding ${approved ? 'approve' : 'deny'} answered ${answer}`);
        return;
      }
      // A 5xx from a gateway that lost its backend for a moment: the decision is idempotent, send it again.
      await sleep(500);
    }
    throw new Error('still failing after 20 attempts');
  }

  /** Polls the pending-approvals inbox every `intervalMs` (the events are the main road). */
  start(intervalMs = 10_000): void {
    const tick = async () => {
      if (this.#polling || this.#stopped) return;
      this.#polling = true;
      try {
        const response = await this.#pool.request('GET', '/v1/approvals?status=pending', undefined, {}, 10_000);
        if (response.status === 200) for (const pending of response.body.approvals ?? []) this.request(pending.runId, pending.toolCallId);
      } catch {
        // No gateway answered this time: the next tick asks again.
      } finally {
        this.#polling = false;
      }
    };
    this.#timer = setInterval(() => void tick(), intervalMs);
  }

  /** Waits for the decisions being sent, then stops polling. */
  async stop(): Promise<void> {
    this.#stopped = true;
    clearInterval(this.#timer);
    while (this.#inFlight.size > 0) await sleep(100);
  }
}
