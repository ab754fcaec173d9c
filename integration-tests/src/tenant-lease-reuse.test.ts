import { Kvm } from '@nats-io/kv';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buckets } from '@abide/shared';
import { waitForStatus } from './harness/run-checks.ts';
import { Stack, testKeys } from './harness/stack.ts';

/**
 * Issue 9: a worker keeps a tenant's released model/tool slot warm (`TENANT_LEASE_KEEP_IDLE`) and
 * reuses it for the tenant's next message with no KV write, and gives every warm slot back when it
 * is stopped (SIGTERM) instead of leaving it to turn stale. The idle time is long here (60 s), so
 * neither outcome can come from the idle expiry.
 */
describe('warm tenant slots in the workers', () => {
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
  async function slotHistory(kind: 'llm' | 'tool', tenantId: string) {
    const leases = await new Kvm(nats).open(buckets.tenantLeases);
    const entries: { key: string; operation: string; revision: number }[] = [];
    for await (const entry of await leases.history({ key: `${kind}.${tenantId}.>` })) entries.push({ key: entry.key, operation: entry.operation, revision: entry.revision });
    return entries.sort((left, right) => left.revision - right.revision);
  }

  it('reuses one slot per kind for every step of two runs, deleting none, and deletes them when the workers stop', async () => {
    const agent = {
      model: { provider: 'scripted', steps: [{ toolCalls: [{ toolName: 'echo', args: { text: 'hi' } }] }, { text: 'Done.' }] },
      tools: [{ name: 'echo', kind: 'builtin', inputSchema: { type: 'object' } }],
    };
    expect((await stack.api(testKeys.a, 'PUT', '/v1/agents/echoer', agent)).status).toBe(200);
    for (let index = 0; index < 2; index += 1) {
      const created = await stack.api(testKeys.a, 'POST', '/v1/runs', { agentId: 'echoer', input: 'go' });
      expect(created.status, JSON.stringify(created.body)).toBe(201);
      expect((await waitForStatus(stack, testKeys.a, created.body.runId, ['completed', 'failed'])).status).toBe('completed');
    }

    // Four model steps and two tool calls, each taken and released, all in one slot per kind, still
    // held. (The bucket keeps one revision per key: a delete at release would show as a DEL, and a
    // fresh create would have probed from a random one of the 32 slots.)
    for (const kind of ['llm', 'tool'] as const) {
      const history = await slotHistory(kind, 'tenant-a');
      expect(new Set(history.map((entry) => entry.key)).size, `${kind}: ${JSON.stringify(history)}`).toBe(1);
      expect(history.every((entry) => entry.operation === 'PUT'), `${kind}: ${JSON.stringify(history)}`).toBe(true);
    }

    // A graceful stop gives the warm slots back before the process exits (not 60 s later, not when stale).
    expect(await stack.service('llm-worker').stop('SIGTERM')).toBe(0);
    expect(await stack.service('tool-worker').stop('SIGTERM')).toBe(0);
    for (const kind of ['llm', 'tool'] as const) {
      const history = await slotHistory(kind, 'tenant-a');
      expect(history.at(-1)?.operation, `${kind}: ${JSON.stringify(history)}`).toBe('DEL');
    }
  });
});
