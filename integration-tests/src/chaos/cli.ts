import { parseArgs } from 'node:util';
import { runChaos, summarize } from './run-chaos.ts';

/**
 * `npm run chaos -- --runs 500 --seed 7`: a long chaos run (see run-chaos.ts); `--cluster 3` runs it
 * on a three-node NATS cluster with R3 streams, faulting NATS nodes instead of services. Prints progress on
 * stderr, then the report as JSON and one readable line on stdout; exits 1 if any promise broke.
 */
const usage = 'usage: npm run chaos -- [--runs N] [--seed N] [--rate RUNS_PER_SECOND] [--followers N] [--kill-interval MIN_MS-MAX_MS] [--cluster NODES] [--min-kills N]';

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      runs: { type: 'string', default: '100' },
      seed: { type: 'string' },
      rate: { type: 'string', default: '0.5' },
      followers: { type: 'string', default: '8' },
      'kill-interval': { type: 'string', default: '1000-3000' },
      cluster: { type: 'string' },
      'min-kills': { type: 'string', default: '0' },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(`${usage}\n`);
    return;
  }
  const runs = Number(values.runs);
  const seed = values.seed === undefined ? Math.floor(Math.random() * 2 ** 31) : Number(values.seed);
  const ratePerSecond = Number(values.rate);
  const followers = Number(values.followers);
  for (const [name, value] of Object.entries({ runs, seed, followers })) {
    if (!Number.isInteger(value) || value < (name === 'seed' ? 0 : 1)) throw new Error(`--${name} must be a ${name === 'seed' ? 'non-negative' : 'positive'} integer\n${usage}`);
  }
  const minKills = Number(values['min-kills']);
  if (!(Number.isInteger(minKills) && minKills >= 0)) throw new Error(`--min-kills must be a non-negative integer\n${usage}`);
  const cluster = values.cluster === undefined ? undefined : Number(values.cluster);
  if (cluster !== undefined && !(Number.isInteger(cluster) && cluster >= 3 && cluster <= 7)) throw new Error(`--cluster takes 3 to 7 nodes\n${usage}`);
  if (!(ratePerSecond > 0)) throw new Error(`--rate must be a positive number\n${usage}`);
  const killInterval = values['kill-interval'].split('-').map(Number);
  if (killInterval.length !== 2 || !killInterval.every((ms) => Number.isInteger(ms) && ms >= 0) || killInterval[0]! > killInterval[1]!) {
    throw new Error(`--kill-interval must be MIN_MS-MAX_MS\n${usage}`);
  }
  // Ctrl-C (or SIGTERM) ends the chaos early but still stops every process it started.
  const stop = new AbortController();
  for (const signal of ['SIGINT', 'SIGTERM'] as const) {
    process.once(signal, () => {
      process.stderr.write(`${signal}: stopping the chaos and its stack\n`);
      stop.abort(new Error(`interrupted by ${signal}`));
    });
  }
  const report = await runChaos({
    runs,
    seed,
    ratePerSecond,
    followers,
    ...(cluster ? { cluster } : {}),
    minKills,
    killIntervalMs: [killInterval[0]!, killInterval[1]!],
    signal: stop.signal,
    settleTimeoutMs: Math.max(300_000, runs * 2_000),
    log: (line) => process.stderr.write(`${new Date().toISOString()} ${line}\n`),
  });
  process.stdout.write(`${JSON.stringify(report, null, 2)}\n${summarize(report)}\n`);
  if (report.violations.length > 0) process.exitCode = 1;
}

main().catch((error: unknown) => {
  process.stderr.write(`${(error as Error).stack ?? String(error)}\n`);
  process.exitCode = 1;
});
