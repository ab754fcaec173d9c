/**
 * Runs NATS (JetStream) and a MongoDB-compatible server for local development.
 *
 *   node scripts/servers.ts                      # 127.0.0.1:4222 and 127.0.0.1:27017, until Ctrl-C
 *   node scripts/servers.ts --nats-port 0        # 0: any free port
 *   node scripts/servers.ts --install-only       # just make sure the binaries exist (CI)
 *   node scripts/servers.ts --cluster 3          # three NATS nodes (4222-4224) with routes; run services with JS_REPLICAS=3
 *
 * A server whose URL is already set (`NATS_URL`, `MONGO_URL`) is not started.
 * `ABIDE_LOCAL_STORE=postgres`: FerretDB on PostgreSQL (data in `postgres/`) instead of SQLite.
 * Data and logs: `.abide/data/{nats,mongo}/` (a cluster: `nats-1/` … `nats-N/`) (or `--data-dir`).
 */
import { parseArgs } from 'node:util';
import { ensureMongoServerBinary, ensureNatsServerBinary, ensurePostgresBinaries, errorMessage, startServersFromEnv, type Log, type ManagedServer } from './lib/servers.ts';
import { onStopSignals } from './lib/stop-signals.ts';

const usage = `usage: node scripts/servers.ts [--nats-port N] [--mongo-port N] [--cluster N] [--data-dir DIR] [--install-only]`;

const log: Log = (message) => process.stderr.write(`[servers] ${message}\n`);

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      'nats-port': { type: 'string', default: '4222' },
      'mongo-port': { type: 'string', default: '27017' },
      'data-dir': { type: 'string' },
      'install-only': { type: 'boolean', default: false },
      cluster: { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(`${usage}\n`);
    return;
  }

  if (values['install-only']) {
    const started = Date.now();
    const [natsServer, mongo] = await Promise.all([ensureNatsServerBinary(log), ensureMongoServerBinary(log)]);
    log(`nats-server: ${natsServer}`);
    log(`${mongo.kind}: ${mongo.path}`);
    // Optional (only ABIDE_LOCAL_STORE=postgres needs it): reported, not required.
    const postgres = await ensurePostgresBinaries().catch((error: unknown) => errorMessage(error)); // absent on this platform: say so below
    log(typeof postgres === 'string' ? `postgres: not available (${postgres})` : `postgres ${postgres.version}: ${postgres.postgres}`);
    log(`binaries ready in ${((Date.now() - started) / 1000).toFixed(1)} s`);
    return;
  }

  const clusterSize = values.cluster === undefined ? undefined : Number(values.cluster);
  if (clusterSize !== undefined && (!Number.isInteger(clusterSize) || clusterSize < 2 || clusterSize > 7)) {
    throw new Error(`--cluster takes a node count from 2 to 7, got "${values.cluster}"\n${usage}`);
  }
  const servers = await startServersFromEnv(process.env, {
    natsCluster: clusterSize,
    natsPort: parsePort(values['nats-port'], '--nats-port'),
    mongoPort: parsePort(values['mongo-port'], '--mongo-port'),
    dataRoot: values['data-dir'],
    log,
    detached: true,
    onUnexpectedExit: (name, info) => log(`${name} exited unexpectedly (${info.signal ?? `exit code ${info.code}`}); see its log file`),
  });

  const rows: [string, ManagedServer | undefined, string][] = servers.natsCluster
    ? servers.natsCluster.nodes.map((node) => [`NATS ${node.name}`, node.server, `${node.server.url}  monitor ${node.monitorUrl}`])
    : [['NATS', servers.nats, servers.natsUrl]];
  rows.push(['MongoDB', servers.mongo, `${servers.mongoUrl}  (store: ${servers.store})`]);
  if (servers.postgres) rows.push(['Postgres', servers.postgres, servers.postgres.url]);
  for (const [label, server, url] of rows) {
    const origin = server ? `${server.kind}, pid ${server.pid}, log ${server.logFile}` : 'from the environment, not started here';
    process.stdout.write(`${label.padEnd(8)} ${url}  (${origin})\n`);
  }
  const replicas = servers.natsCluster ? ` JS_REPLICAS=${servers.natsCluster.nodes.length}` : '';
  process.stdout.write(`\nexport NATS_URL=${servers.natsUrl} MONGO_URL=${servers.mongoUrl}${replicas}\n\nCtrl-C stops the servers.\n`);

  onStopSignals({
    stop(signal) {
      log(`${signal}: stopping the servers`);
      servers.stop().then(
        () => process.exit(0),
        (error: unknown) => {
          log(`stopping failed: ${errorMessage(error)}`);
          process.exit(1);
        },
      );
    },
    kill(signal) {
      log(`${signal} again: killing the servers`);
      servers.nats?.kill('SIGKILL');
      for (const node of servers.natsCluster?.nodes ?? []) node.server.kill('SIGKILL');
      servers.mongo?.kill('SIGKILL');
      servers.postgres?.kill('SIGKILL');
      process.exit(1);
    },
  });
  // Stay up until a signal arrives, even if a server dies meanwhile.
  setInterval(() => undefined, 1 << 30);
}

function parsePort(text: string | undefined, flag: string): number {
  const port = Number(text);
  if (!Number.isInteger(port) || port < 0 || port > 65_535) throw new Error(`${flag} must be a port number (0 for any free port), got "${text}"\n${usage}`);
  return port;
}

main().catch((error: unknown) => {
  log(errorMessage(error));
  process.exitCode = 1;
});
