/**
 * A real nats-server with the production users and permissions: deploy/nats/local.conf (which
 * includes deploy/nats/auth.conf), a free port, a fresh store, a password per user.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { inboxPrefixes } from '@abide/shared';
import { ensureNatsServerBinary, freePort } from '../../../scripts/lib/servers.ts';
import { repoRoot } from './render.ts';

/** NATS user → the environment variable of nats-server holding its password (deploy/nats/auth.conf). */
export const natsPasswordVariables = {
  gateway: 'NATS_GATEWAY_PASSWORD',
  orchestrator: 'NATS_ORCHESTRATOR_PASSWORD',
  'llm-worker': 'NATS_LLM_WORKER_PASSWORD',
  'tool-worker': 'NATS_TOOL_WORKER_PASSWORD',
  'approvals-publisher': 'NATS_APPROVALS_PUBLISHER_PASSWORD',
  admin: 'NATS_ADMIN_PASSWORD',
} as const;
export type NatsUser = keyof typeof natsPasswordVariables;

export type AuthNats = {
  url: string;
  password(user: NatsUser): string;
  /** Connects as `user` with its own inbox prefix (`inboxPrefixes`), or with `inboxPrefix` when given. */
  connectAs(user: NatsUser, options?: { inboxPrefix?: string }): Promise<NatsConnection>;
  /** The server's recent output (for failure messages). */
  output(): string;
  stop(): Promise<void>;
};

export async function startAuthNats(): Promise<AuthNats> {
  const binary = await ensureNatsServerBinary();
  const dataDir = await mkdtemp(join(tmpdir(), 'abide-nats-auth-'));
  const port = await freePort();
  const password = (user: NatsUser) => `test-${user}-${port}`;
  const env: NodeJS.ProcessEnv = { ...process.env };
  for (const user of Object.keys(natsPasswordVariables) as NatsUser[]) env[natsPasswordVariables[user]] = password(user);
  const server: ChildProcess = spawn(binary, ['-c', join(repoRoot, 'deploy/nats/local.conf'), '-p', String(port), '-sd', dataDir], {
    env,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let output = '';
  server.stderr?.on('data', (chunk: Buffer) => (output = (output + chunk.toString()).slice(-8_000)));
  const url = `nats://127.0.0.1:${port}`;
  const connections: NatsConnection[] = [];

  const deadline = Date.now() + 20_000;
  for (;;) {
    if (server.exitCode !== null) throw new Error(`nats-server exited with ${server.exitCode}:\n${output}`);
    try {
      const probe = await connect({ servers: url, user: 'admin', pass: password('admin'), reconnect: false });
      await jetstreamManager(probe);
      await probe.close();
      break;
    } catch (error) {
      if (Date.now() > deadline) throw new Error(`nats-server did not become ready: ${(error as Error).message}\n${output}`);
      await new Promise((done) => setTimeout(done, 200));
    }
  }

  return {
    url,
    password,
    async connectAs(user, options = {}) {
      const inboxPrefix = options.inboxPrefix ?? (user === 'admin' ? undefined : inboxPrefixes[user]);
      const connection = await connect({ servers: url, user, pass: password(user), name: `test-${user}`, ...(inboxPrefix ? { inboxPrefix } : {}) });
      connections.push(connection);
      return connection;
    },
    output: () => output,
    async stop() {
      await Promise.all(connections.map((connection) => connection.close().catch(() => undefined)));
      if (server.exitCode === null && server.signalCode === null) {
        const exited = new Promise((done) => server.once('exit', done));
        server.kill('SIGTERM');
        await exited;
      }
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}
