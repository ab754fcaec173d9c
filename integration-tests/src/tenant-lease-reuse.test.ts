import { Kvm } from '@nats-io/kv';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buckets } from '@abide/shared';
import { waitForStatus } from './harness/run-checks.ts';
import { Stack, testKeys } from './harness/stack.ts';

/**
 * Issue 9: a worker keeps a tenant's released model/tool slot warm (`TENANT_LEASE_KEEP_IDLE`) and
 * reuses it for the tenant's next message with no KV write, and so does the gateway with a
 * tenant's connection and subscription slots; each gives every warm slot back when it is stopped
 * (SIGTERM) instead of leaving it to turn stale. The idle time is long here (60 s), so neither
 * outcome can come from the idle expiry.
 */
describe('warm tenant slots in the workers and the gateway', () => {
  let stack: Stack;
  let nats: NatsConnection;

  beforeAll(async () => {
    stack = await Stack.start({ env: { TENANT_LEASE_KEEP_IDLE: '60s', TENANT_MAX_LLM_CALLS: '32', TENANT_MAX_TOOL_CALLS: '32' } });
    nats = await connect({ servers: stack.servers.natsUrl.split(',') });
  });

  afterAll(async () => {
    await nats?.close();
    await stack?.stop();
  });

  /** Every revision of the tenant's `kind` slots in `TENANT_LEASES`, oldest first. */
  async function slotHistory(kind: 'llm' | 'tool' | 'subscription' | 'connection', tenantId: string) {
    const leases = await new Kvm(nats).open(buckets.tenantLeases);
    const entries: { key: string; operation: string; revision: number }[] = [];
    for await (const entry of await leases.history({ key: `${kind}.${tenantId}.>` })) entries.push({ key: entry.key, operation: entry.operation, revision: entry.revision });
    return entries.sort((left, right) => left.revision - right.revision);
  }

  /** The gateway's `abide_event_subscriptions` gauge (open run subscriptions). */
  async function openSubscriptions(): Promise<number> {
    const text = await (await fetch(`${stack.service('gateway').healthUrl}/metrics`)).text();
    const line = text.split('\n').find((candidate) => candidate.startsWith('abide_event_subscriptions '));
    if (!line) throw new Error(`no abide_event_subscriptions in the gateway's metrics:\n${text.slice(0, 500)}`);
    return Number(line.split(' ')[1]);
  }

  it('reuses one slot per kind for every step and stream of two runs, deleting none, and deletes them when the services stop', async () => {
    const agent = {
      model: { provider: 'scripted', steps: [{ toolCalls: [{ toolName: 'echo', args: { text: 'hi' } }] }, { text: 'Done.' }] },
      tools: [{ name: 'echo', kind: 'builtin', inputSchema: { type: 'object' } }],
    };
    expect((await stack.api(testKeys.a, 'PUT', '/v1/agents/echoer', agent)).status).toBe(200);
    // Two runs created over one WebSocket, one after the other, each followed to its end (a subscription each).
    const socket = await stack.socket(testKeys.a);
    for (let index = 0; index < 2; index += 1) {
      socket.send({ type: 'run.create', requestId: `r${index}`, agentId: 'echoer', input: 'go' });
      const { runId } = await socket.waitFor((frame) => frame.type === 'run.created' && frame.requestId === `r${index}`);
      const events = await socket.untilTerminal(runId);
      expect(events.at(-1)?.type, JSON.stringify(events.at(-1))).toBe('run.completed');
      // The run's subscription ended (its slot released) before the next one is asked for.
      await expect.poll(openSubscriptions, { timeout: 10_000 }).toBe(0);
    }

    // Four model steps and two tool calls, each taken and released, all in one slot per kind, still
    // held; the same for the two runs' subscriptions. (The bucket keeps one revision per key: a
    // delete at release would show as a DEL, and a fresh create would have probed from a random slot.)
    for (const kind of ['llm', 'tool', 'subscription'] as const) {
      const history = await slotHistory(kind, 'tenant-a');
      expect(new Set(history.map((entry) => entry.key)).size, `${kind}: ${JSON.stringify(history)}`).toBe(1);
      expect(history.every((entry) => entry.operation === 'PUT'), `${kind}: ${JSON.stringify(history)}`).toBe(true);
    }

    // A graceful stop gives the warm slots back before the process exits (not 60 s later, not when stale).
    expect(await stack.service('llm-worker').stop('SIGTERM')).toBe(0);
    expect(await stack.service('tool-worker').stop('SIGTERM')).toBe(0);
    // The gateway's too: the socket it closes at shutdown releases its connection slot, kept warm until then.
    expect(await stack.service('gateway').stop('SIGTERM')).toBe(0);
    await socket.closed;
    for (const kind of ['llm', 'tool', 'subscription', 'connection'] as const) {
      const history = await slotHistory(kind, 'tenant-a');
      expect(history.at(-1)?.operation, `${kind}: ${JSON.stringify(history)}`).toBe('DEL');
    }
  });
});
