import { setTimeout as sleep } from 'node:timers/promises';
import { JetStreamApiCodes, JetStreamApiError, jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { consumers, streams } from '@abide/shared';
import { waitForStatus } from './harness/run-checks.ts';
import { Stack, testKeys } from './harness/stack.ts';

type Readiness = { status: number; consumers: boolean | undefined };

/**
 * Issue 10, finding 2: the orchestrator watches its consumers. Its durable on `RUN_INBOX` is
 * deleted under it (with a plain NATS client, as an operator or a broken script would): the
 * supervisor restarts the consume loop and provisions the durable again, `/readyz` says so while
 * it cannot consume, and runs created afterwards complete.
 */
describe('consumer supervision in the orchestrator', () => {
  let stack: Stack;
  let nats: NatsConnection;
  let jsm: JetStreamManager;

  beforeAll(async () => {
    stack = await Stack.start();
    nats = await connect({ servers: stack.servers.natsUrl });
    jsm = await jetstreamManager(nats);
    const agent = { model: { provider: 'scripted', steps: [{ text: 'Still here.' }] } };
    expect((await stack.api(testKeys.a, 'PUT', '/v1/agents/supervised', agent)).status).toBe(200);
  });
  afterAll(async () => {
    await nats?.close();
    await stack?.stop();
  });

  async function readiness(): Promise<Readiness> {
    const response = await fetch(`${stack.service('orchestrator').healthUrl}/readyz`, { signal: AbortSignal.timeout(5_000) });
    const body = (await response.json()) as { checks?: Record<string, boolean> };
    return { status: response.status, consumers: body.checks?.consumers };
  }

  async function until(what: string, condition: () => Promise<boolean>, timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!(await condition())) {
      if (Date.now() > deadline) throw new Error(`${what} not within ${timeoutMs} ms; readiness ${JSON.stringify(await readiness())}\n${stack.logs(30)}`);
      await sleep(100);
    }
  }

  async function restarts(): Promise<number> {
    const text = await (await fetch(`${stack.service('orchestrator').healthUrl}/metrics`)).text();
    return Number(/^abide_consumer_restarts_total\{durable="orchestrator"\} (\d+)$/m.exec(text)?.[1] ?? 0);
  }

  async function consumerExists(): Promise<boolean> {
    try {
      await jsm.consumers.info(streams.runInbox, consumers.orchestrator);
      return true;
    } catch (error) {
      if (error instanceof JetStreamApiError && error.code === JetStreamApiCodes.ConsumerNotFound) return false;
      throw error;
    }
  }

  async function runCompletes(input: string): Promise<void> {
    const created = await stack.api(testKeys.a, 'POST', '/v1/runs', { agentId: 'supervised', input });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    expect(await waitForStatus(stack, testKeys.a, created.body.runId, ['completed', 'failed', 'cancelled'], 60_000)).toMatchObject({ status: 'completed' });
  }

  it('restarts the consume loop when its durable is deleted, provisions it again, and runs created afterwards complete', { timeout: 120_000 }, async () => {
    expect((await readiness()).status).toBe(200);
    await runCompletes('before');

    await jsm.consumers.delete(streams.runInbox, consumers.orchestrator);
    // The run's input waits in RUN_INBOX (a work queue) until the orchestrator consumes again.
    await runCompletes('after the deletion');
    expect(await consumerExists()).toBe(true);
    expect(await restarts()).toBeGreaterThanOrEqual(1);
    await until('ready', async () => (await readiness()).status === 200, 30_000);
    expect(await readiness()).toEqual({ status: 200, consumers: true });
  });

  it('answers not ready while its durable keeps vanishing, and ready again once the supervisor can consume it', { timeout: 180_000 }, async () => {
    // An operator's script deleting the durable again and again: the loop never consumes for long.
    let deleting = true;
    const deleter = (async () => {
      while (deleting) {
        await jsm.consumers.delete(streams.runInbox, consumers.orchestrator).catch((error: unknown) => {
          // Already gone (between the orchestrator's re-creations): nothing to delete this time.
          if (!(error instanceof JetStreamApiError && error.code === JetStreamApiCodes.ConsumerNotFound)) throw error;
        });
        await sleep(100);
      }
    })();
    try {
      await until('not ready with consumers down', async () => {
        const now = await readiness();
        return now.status === 503 && now.consumers === false;
      }, 60_000);
    } finally {
      deleting = false;
      await deleter;
    }
    await until('ready again', async () => (await readiness()).status === 200, 90_000);
    expect(await readiness()).toEqual({ status: 200, consumers: true });
    expect(await consumerExists()).toBe(true);
    await runCompletes('after the outage');
  });
});
