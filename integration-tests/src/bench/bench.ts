/**
 * `npm run bench`: Abide on the workload of WORKLOAD.md (sequential, throughput at 50 in flight,
 * fsync count per run) and issue 3's approvals scenario (1,000 runs suspended at once: the
 * orchestrator's memory and CPU while they wait, and approval → tool call latency); then the
 * protocol floor (`protocol-floor.ts`): the same workload's messages and writes played by bare
 * processes with no Abide code, as the sequential and throughput scenarios, its lines under the
 * peers `protocol-floor (design)`, `(pipelined)` and `(steps)`: what the architecture costs on
 * this machine before any of Abide's own code.
 *
 * One JSON line per scenario on stdout; progress and diagnostics on stderr. Memory: `peak_rss_mb`
 * is the peak of the processes' summed VmRSS (sampled every 500 ms), as the peers are measured;
 * `peak_pss_mb` the peak of their summed Pss (pages shared between processes, such as the Node
 * binary the four services map, counted once); `rss_mb_by_process` each one's RSS at the start
 * and at its own peak. CPU: `cpu_ms_per_run_by_process` the CPU time each process spent per run
 * during the scenario, and their `total` (sequential and throughput). Stderr also gives, for both,
 * the median gap between consecutive events as the client receives them: where a run's time goes
 * and, under load, which stage it queues behind. It asserts nothing
 * about speed and is not part of `npm test`. Every scenario runs on a fresh stack (servers with
 * empty data, one replica of each service, restarted once so that Node's compile cache is warm).
 * Every process it starts is stopped at the end, on an error, and on Ctrl-C / SIGTERM.
 *
 * Environment: LLM_MS, TOOL_MS, SEQ_RUNS (200), TP_RUNS (500), TP_CONC (50), WARMUP_RUNS (10),
 * FSYNC_RUNS (20), APPROVAL_RUNS (1000), APPROVAL_CREATE_CONC (10), APPROVAL_BUDGET_S (90),
 * APPROVAL_CONC (20), APPROVAL_IDLE_S (10), BENCH_SCENARIOS (comma list of sequential,
 * throughput_c50, fsync_probe, approvals, protocol_floor), BENCH_LOG_LEVEL (info), BENCH_KEEP_DATA=1 (keep server
 * data and logs), and for diagnosis only: BENCH_MONGO_PROFILE=1 (per-command MongoDB times through
 * a proxy), BENCH_FERRETDB_ID_INDEX=1 (an experiment: see ferretdb-id-index.ts), ABIDE_CPU_PROF_DIR=<dir>
 * (a V8 CPU profile of each service process, `node --cpu-prof`, written there when it exits).
 * NATS_URL / MONGO_URL point it at servers of your own (then their processes are not sampled);
 * ABIDE_LOCAL_STORE=postgres runs FerretDB on PostgreSQL instead of SQLite (every line says `store`).
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { mkdtempSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { isDeepStrictEqual } from 'node:util';
import { startServersFromEnv, type StartedServers } from '../../../scripts/lib/servers.ts';
import { Stack } from '../harness/stack.ts';
import { BenchSocket, createdFrameType, type RunOutcome } from './bench-socket.ts';
import { describeRunBytes, measureRunBytes } from './bytes-probe.ts';
import { concurrentWriters, measureDocumentOps, measureFloor, type DocumentOps, type FloorProbes } from './floor-probes.ts';
import { addFerretDbIdIndexes } from './ferretdb-id-index.ts';
import { floorSteps, floorVariants, runProtocolFloor, type FloorVariant } from './protocol-floor.ts';
import { ensureStrace, FsyncProbe, fsyncCalls, type FsyncCounts } from './fsync-probe.ts';
import { startMongoProfileProxy, type MongoProfileProxy } from './mongo-profile-proxy.ts';
import { cpuMsPerRun, cpuPercentOver, cpuSnapshot, rssMb, RssSampler, type StackProcess } from './proc.ts';
import { round, summarize, type LatencySummary } from './stats.ts';
import { startBenchToolServer, type BenchToolServer } from './tool-server.ts';
import { approvalAgent, finalText, toolArgs, toolRoundsAgent, toolStepText, workloadAgent, workloadToolName, type WorkloadOptions } from './workload.ts';

// ---------------------------------------------------------------------------------------------
// Configuration

function intFromEnv(name: string, fallback: number, minimum = 0): number {
  const raw = process.env[name];
  if (raw === undefined || raw.trim() === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < minimum) {
    process.stderr.write(`[bench] ${name} must be an integer ≥ ${minimum} (got "${raw}")\n`);
    process.exit(2);
  }
  return value;
}

const allScenarios = ['sequential', 'throughput_c50', 'fsync_probe', 'approvals', 'protocol_floor'] as const;
type ScenarioName = (typeof allScenarios)[number];

const config = {
  llmMs: intFromEnv('LLM_MS', 0),
  toolMs: intFromEnv('TOOL_MS', 0),
  seqRuns: intFromEnv('SEQ_RUNS', 200),
  tpRuns: intFromEnv('TP_RUNS', 500),
  tpConc: intFromEnv('TP_CONC', 50, 1),
  warmupRuns: intFromEnv('WARMUP_RUNS', 10),
  approvalRuns: intFromEnv('APPROVAL_RUNS', 1000),
  /** Approvals in flight at once (each until its tool call starts). */
  approvalConc: intFromEnv('APPROVAL_CONC', 20, 1),
  /** Idle window over which the orchestrator's CPU is measured with every run suspended. */
  approvalIdleS: intFromEnv('APPROVAL_IDLE_S', 10, 1),
  fsyncRuns: intFromEnv('FSYNC_RUNS', 20, 1),
  scenarios: parseScenarios(process.env.BENCH_SCENARIOS),
  logLevel: process.env.BENCH_LOG_LEVEL?.trim() || 'info',
  keepData: process.env.BENCH_KEEP_DATA === '1',
  /** Experiment, not Abide as shipped: see ferretdb-id-index.ts. */
  ferretDbIdIndex: process.env.BENCH_FERRETDB_ID_INDEX === '1',
  /** Times every MongoDB command through a proxy (adds a hop: for diagnosis, not for the numbers). */
  mongoProfile: process.env.BENCH_MONGO_PROFILE === '1',
};

/** Each scenario stops starting runs after this (WORKLOAD.md). */
const scenarioBudgetMs = 90_000;
/** A run slower than this is an error (WORKLOAD.md). */
const runTimeoutMs = 30_000;
/** Runs started to suspension at once in the approvals scenario. */
const suspendConcurrency = intFromEnv('APPROVAL_CREATE_CONC', 10, 1);
/** How long the approvals scenario keeps starting runs to suspend. */
const approvalBudgetMs = intFromEnv('APPROVAL_BUDGET_S', 90, 1) * 1000;
const runInput = 'Run the benchmark workload.';
/** `TENANT_MAX_ACTIVE_RUNS`' default: a tenant may have this many runs between creation and their end, suspended ones included. */
const activeRunsPerTenant = 100;
/**
 * Every tenant may create 20 runs/s (burst 50) at the gateway: runs are spread over tenants (one
 * API key and socket each), as few as suffice, since each holds two agent documents. The
 * approvals scenario keeps every run suspended at once, so it needs one tenant per 100 of them.
 */
const tenantsFor = {
  sequential: 8,
  throughput: Math.max(8, config.tpConc),
  fsync: 8,
  approvals: Math.max(20, Math.ceil(config.approvalRuns / activeRunsPerTenant)),
} as const;

function parseScenarios(raw: string | undefined): Set<ScenarioName> {
  if (!raw || raw.trim() === '') return new Set(allScenarios);
  const names = raw.split(',').map((name) => name.trim()).filter(Boolean);
  const chosen = new Set<ScenarioName>();
  for (const name of names) {
    const scenario = name.startsWith('approvals') ? 'approvals' : name.startsWith('throughput') ? 'throughput_c50' : name;
    if (!(allScenarios as readonly string[]).includes(scenario)) {
      process.stderr.write(`[bench] unknown scenario "${name}" in BENCH_SCENARIOS (known: ${allScenarios.join(', ')})\n`);
      process.exit(2);
    }
    chosen.add(scenario as ScenarioName);
  }
  return chosen;
}

const log = (message: string) => process.stderr.write(`[bench] ${message}\n`);

// ---------------------------------------------------------------------------------------------
// Clean-up: whatever was started is stopped, on success, error, Ctrl-C or SIGTERM.

type Cleanup = { name: string; run: () => Promise<void> | void };
const cleanups = new Set<Cleanup>();
let cleaning: Promise<void> | undefined;
/** The stack being started or running (at most one at a time). */
let currentStack: { starting: Promise<Stack>; stack: Stack | undefined } | undefined;
let interrupted = false;

/** Registers a clean-up; returns a function that runs it now (once) and forgets it. */
function onCleanup(name: string, run: () => Promise<void> | void): () => Promise<void> {
  const cleanup: Cleanup = { name, run };
  cleanups.add(cleanup);
  return async () => {
    if (!cleanups.delete(cleanup)) return;
    await run();
  };
}

function cleanUp(): Promise<void> {
  cleaning ??= (async () => {
    // A stack still starting is stopped once it is up (Stack.start cleans up after itself if it fails).
    if (currentStack && !currentStack.stack) {
      const stack = await currentStack.starting.catch(() => undefined);
      if (stack) onCleanup('stack (was starting)', () => stack.stop());
    }
    for (const cleanup of [...cleanups].reverse()) {
      if (!cleanups.delete(cleanup)) continue; // already run by its owner
      try {
        await cleanup.run();
      } catch (error) {
        log(`clean-up of ${cleanup.name} failed: ${(error as Error).message}`);
      }
    }
  })();
  return cleaning;
}

function onSignal(signal: NodeJS.Signals, code: number): void {
  process.on(signal, () => {
    if (interrupted) {
      log(`${signal} again: exiting now`);
      process.exit(code);
    }
    interrupted = true;
    log(`${signal}: stopping everything the bench started`);
    void cleanUp().finally(() => process.exit(code));
  });
}
onSignal('SIGINT', 130);
onSignal('SIGTERM', 143);
// Last resort (the servers module kills its servers on exit itself): no service outlives us.
process.on('exit', () => {
  for (const service of currentStack?.stack?.services ?? []) if (service.running && service.pid) process.kill(service.pid, 'SIGKILL');
});

function checkInterrupted(): void {
  if (interrupted) throw new Error('interrupted');
}

// ---------------------------------------------------------------------------------------------
// Output

type ScenarioLine = {
  /** `protocol-floor (…)`: the protocol floor's lines (`protocol-floor.ts`), beside Abide's. */
  peer: 'abide' | `protocol-floor (${FloorVariant})`;
  scenario: string;
  runs: number;
  errors: number;
  concurrency: number;
  p50_ms: number | null;
  p95_ms: number | null;
  p99_ms: number | null;
  mean_ms: number | null;
  runs_per_s: number | null;
  steps_per_s: number | null;
  per_step_overhead_ms: number | null;
  wall_s: number | null;
  peak_rss_mb: number | null;
  llm_ms: number;
  tool_ms: number;
  notes: string;
  [extra: string]: unknown;
};

/** WORKLOAD.md's fields, in its order; a scenario's extra fields follow, `notes` last. */
const lineFields = ['peer', 'scenario', 'runs', 'errors', 'concurrency', 'p50_ms', 'p95_ms', 'p99_ms', 'mean_ms', 'runs_per_s', 'steps_per_s', 'per_step_overhead_ms', 'wall_s', 'peak_rss_mb', 'llm_ms', 'tool_ms'] as const;

/** Which MongoDB-compatible store the current scenario's stack runs on (`StartedServers.store`), printed with every result. */
let currentStore = 'unknown';

function emit(line: ScenarioLine): void {
  const ordered: Record<string, unknown> = {};
  for (const field of lineFields) ordered[field] = line[field];
  ordered.store = currentStore;
  for (const [field, value] of Object.entries(line)) if (!(field in ordered) && field !== 'notes') ordered[field] = value;
  ordered.notes = line.notes;
  process.stdout.write(`${JSON.stringify(ordered)}\n`);
}

/** CPU seconds (user + system) each process has used so far. */
/** Each process's RSS (MiB) when the scenario started and at its own peak during it. */
function rssByProcess(sampler: RssSampler): Record<string, { start: number | null; peak: number | null }> {
  return Object.fromEntries([...sampler.peakByProcessMb].map(([name, peak]) => [name, { start: round(sampler.startByProcessMb.get(name) ?? 0, 1), peak: round(peak, 1) }]));
}

function timingFields(summary: LatencySummary) {
  return { p50_ms: round(summary.p50), p95_ms: round(summary.p95), p99_ms: round(summary.p99), mean_ms: round(summary.mean) };
}

// ---------------------------------------------------------------------------------------------
// Runs

type LoopResult = {
  started: number;
  latencies: number[];
  errors: number;
  errorSamples: string[];
  wallS: number;
  /** True when the 90-s budget stopped the scenario before `total` runs were started. */
  cutShort: boolean;
  traces: { type: string; at: number; event: Record<string, any> }[][];
};

/**
 * `total` workload runs, `concurrency` at a time in a closed loop (each worker starts its next run
 * when its previous one ends); no run starts after the 90-s budget.
 */
async function closedLoop(options: {
  label: string;
  total: number;
  concurrency: number;
  socketFor: (worker: number, index: number) => BenchSocket;
  keepEvents?: boolean;
}): Promise<LoopResult> {
  const result: LoopResult = { started: 0, latencies: [], errors: 0, errorSamples: [], wallS: 0, cutShort: false, traces: [] };
  const started = performance.now();
  let next = 0;
  let lastProgress = started;
  const worker = async (workerIndex: number) => {
    while (next < options.total) {
      checkInterrupted();
      if (performance.now() - started > scenarioBudgetMs) {
        result.cutShort = true;
        return;
      }
      const index = next;
      next += 1;
      result.started += 1;
      const outcome: RunOutcome = await options.socketFor(workerIndex, index).runToCompletion(agentId, runInput, finalText, runTimeoutMs, options.keepEvents);
      if (outcome.ok) {
        result.latencies.push(outcome.ms);
        if (outcome.events) result.traces.push(outcome.events);
      } else {
        result.errors += 1;
        if (result.errorSamples.length < 5) result.errorSamples.push(`${outcome.runId ?? '(no run)'}: ${outcome.error}`);
      }
      const now = performance.now();
      if (now - lastProgress > 5_000) {
        lastProgress = now;
        log(`${options.label}: ${result.latencies.length + result.errors}/${options.total} done (${result.errors} errors), ${((now - started) / 1000).toFixed(1)} s`);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(options.concurrency, options.total) }, (_, index) => worker(index)));
  result.wallS = (performance.now() - started) / 1000;
  for (const sample of result.errorSamples) log(`${options.label} error: ${sample}`);
  return result;
}

const agentId = 'bench';
const approvalAgentId = 'bench-approval';

function boundNote(result: { started: number; cutShort: boolean }, total: number): string {
  return result.cutShort
    ? `stopped starting runs at the 90-s budget: ${result.started} of ${total} started`
    : 'bounded at 90 s of starting runs (not reached) and 30 s per run';
}

/** Per-gap medians over traced runs: where a run's time goes, as the client sees the events arrive. */
function describeTraces(traces: LoopResult['traces']): string {
  if (traces.length === 0) return '';
  const gaps = new Map<string, number[]>();
  const engine: number[] = [];
  for (const trace of traces) {
    const occurrences = new Map<string, number>();
    let previous = { label: 'send run.create', at: 0 };
    for (const entry of trace) {
      const count = (occurrences.get(entry.type) ?? 0) + 1;
      occurrences.set(entry.type, count);
      const label = `${entry.type}#${count}`;
      const key = `${previous.label} -> ${label}`;
      gaps.set(key, [...(gaps.get(key) ?? []), entry.at - previous.at]);
      previous = { label, at: entry.at };
    }
    const first = trace.find((entry) => entry.type === 'run.started');
    const last = trace.find((entry) => entry.type === 'run.completed');
    if (first && last) engine.push(Date.parse(last.event.ts) - Date.parse(first.event.ts));
  }
  const lines = [...gaps.entries()]
    .filter(([, values]) => values.length >= traces.length / 2)
    .map(([key, values]) => `  ${summarize(values).p50!.toFixed(2).padStart(7)} ms  ${key}`);
  const engineP50 = summarize(engine).p50;
  return [
    `median gaps between consecutive events as received (${traces.length} runs):`,
    ...lines,
    `  run.started.ts -> run.completed.ts (server clocks, ms resolution): p50 ${engineP50} ms`,
  ].join('\n');
}

// ---------------------------------------------------------------------------------------------
// Scenarios

type Context = {
  stack: Stack;
  servers: StartedServers;
  /** The MongoDB profiling proxy (BENCH_MONGO_PROFILE=1). */
  proxy: MongoProfileProxy | undefined;
  /** The BENCH_FERRETDB_ID_INDEX experiment: indexes tables created since. */
  indexTables: () => void;
  sockets: BenchSocket[];
  keys: string[];
  processes: StackProcess[];
  toolServer: BenchToolServer;
  workload: WorkloadOptions;
  commonNotes: string[];
  /** The first warm-up run (finished). */
  firstRunId: string | undefined;
  floor?: FloorProbes;
  documentOps?: DocumentOps | undefined;
  /** Bytes written to MongoDB per step, for runs of 5 and 51 steps (`bytes-probe.ts`). */
  bytesPerStep?: string;
};

async function scenarioSequential(context: Context): Promise<void> {
  const sampler = new RssSampler(context.processes);
  sampler.start();
  log(`sequential: ${config.seqRuns} runs`);
  context.proxy?.reset();
  const cpuBefore = cpuSnapshot(context.processes);
  const result = await closedLoop({
    label: 'sequential',
    total: config.seqRuns,
    concurrency: 1,
    socketFor: (_worker, index) => context.sockets[index % context.sockets.length]!,
    keepEvents: true,
  });
  const peak = sampler.stop();
  const summary = summarize(result.latencies);
  const runsPerS = result.latencies.length / result.wallS;
  const overhead = summary.p50 === null ? null : (summary.p50 - 3 * config.llmMs - 2 * config.toolMs) / 5;
  const breakdown = describeTraces(result.traces);
  if (breakdown) log(`sequential: ${breakdown}`);
  if (context.proxy) log(`sequential: ${describeProfile(context.proxy, Math.max(1, result.started), 'run')}`);
  const floor = context.floor;
  emit({
    peer: 'abide',
    scenario: 'sequential',
    runs: result.started,
    errors: result.errors,
    concurrency: 1,
    ...timingFields(summary),
    runs_per_s: round(runsPerS),
    steps_per_s: round(runsPerS * 5),
    per_step_overhead_ms: round(overhead, 3),
    wall_s: round(result.wallS),
    peak_rss_mb: round(peak, 1),
    peak_pss_mb: round(sampler.peakPssMb, 1),
    rss_mb_by_process: rssByProcess(sampler),
    cpu_ms_per_run_by_process: cpuMsPerRun(cpuBefore, context.processes, result.started),
    llm_ms: config.llmMs,
    tool_ms: config.toolMs,
    notes: [
      ...context.commonNotes,
      boundNote(result, config.seqRuns),
      ...(floor
        ? [
            `floor measured here (p50, same disk and servers): fsync ${floor.fsync.p50!.toFixed(3)} ms, JetStream publish+PubAck ${floor.jsPublish.p50!.toFixed(3)} ms, ` +
              `MongoDB-server insertOne of 1 KiB ${floor.mongoInsert.p50!.toFixed(3)} ms (p50/p99 with ${concurrentWriters} writers at once ${floor.mongoInsertConcurrent.p50!.toFixed(3)}/${floor.mongoInsertConcurrent.p99!.toFixed(3)} ms), findOne by _id ${floor.mongoFindById.p50!.toFixed(3)} ms`,
          ]
        : []),
      ...(context.bytesPerStep ? [`bytes written to MongoDB (BSON): ${context.bytesPerStep}`] : []),
      ...(context.documentOps
        ? [
            `the same server with a finished run's real documents (transition ${context.documentOps.transitionBytes} B, run ${context.documentOps.runBytes} B as JSON), p50 ms: ` +
              Object.entries(context.documentOps.ops)
                .map(([name, value]) => `${name} ${value?.toFixed(2)}`)
                .join(', '),
          ]
        : []),
    ].join('; '),
  });
}

async function scenarioThroughput(context: Context): Promise<void> {
  const sampler = new RssSampler(context.processes);
  sampler.start();
  log(`throughput_c${config.tpConc}: ${config.tpRuns} runs, ${config.tpConc} in flight`);
  const cpuBefore = cpuSnapshot(context.processes);
  const result = await closedLoop({
    label: `throughput_c${config.tpConc}`,
    total: config.tpRuns,
    concurrency: config.tpConc,
    // One tenant (and socket) per client: the per-tenant creation limit never binds.
    socketFor: (worker) => context.sockets[worker % context.sockets.length]!,
    // Where a run's time goes under load: which stage it queues behind.
    keepEvents: true,
  });
  const peak = sampler.stop();
  const summary = summarize(result.latencies);
  const runsPerS = result.latencies.length / result.wallS;
  const breakdown = describeTraces(result.traces);
  if (breakdown) log(`throughput_c${config.tpConc}: ${breakdown}`);
  emit({
    peer: 'abide',
    scenario: `throughput_c${config.tpConc}`,
    runs: result.started,
    errors: result.errors,
    concurrency: config.tpConc,
    ...timingFields(summary),
    runs_per_s: round(runsPerS),
    steps_per_s: round(runsPerS * 5),
    per_step_overhead_ms: null,
    wall_s: round(result.wallS),
    peak_rss_mb: round(peak, 1),
    peak_pss_mb: round(sampler.peakPssMb, 1),
    rss_mb_by_process: rssByProcess(sampler),
    cpu_ms_per_run_by_process: cpuMsPerRun(cpuBefore, context.processes, result.started),
    llm_ms: config.llmMs,
    tool_ms: config.toolMs,
    notes: [...context.commonNotes, 'closed loop: each client (own socket and tenant) starts its next run when its previous one ends', 'per_step_overhead_ms is defined for sequential only', boundNote(result, config.tpRuns)].join('; '),
  });
}

function sumCounts(counts: FsyncCounts): { total: number; byProcess: Record<string, Record<string, number>> } {
  let total = 0;
  const byProcess: Record<string, Record<string, number>> = {};
  for (const [name, calls] of counts) {
    byProcess[name] = {};
    for (const [call, count] of calls) {
      if (!(fsyncCalls as readonly string[]).includes(call)) continue;
      byProcess[name][call] = count.calls;
      total += count.calls;
    }
  }
  return { total, byProcess };
}

async function scenarioFsyncProbe(context: Context): Promise<void> {
  const base = {
    peer: 'abide' as const,
    scenario: 'fsync_probe',
    concurrency: 1,
    p50_ms: null,
    p95_ms: null,
    p99_ms: null,
    mean_ms: null,
    runs_per_s: null,
    steps_per_s: null,
    per_step_overhead_ms: null,
    wall_s: null,
    llm_ms: config.llmMs,
    tool_ms: config.toolMs,
  };
  const unavailable = ensureStrace(log);
  if (unavailable) {
    emit({ ...base, runs: 0, errors: 0, peak_rss_mb: null, fsyncs_per_run: null, notes: `not measured: ${unavailable}` });
    return;
  }
  const idleSeconds = 3;
  let idle: FsyncCounts;
  let probe: FsyncProbe;
  try {
    log(`fsync_probe: ${idleSeconds} s idle under strace (background rate)`);
    probe = await FsyncProbe.attach(context.processes, context.servers.mongo?.dataDir ?? context.stack.dir);
    const killIdleTracers = onCleanup('strace (idle)', () => probe.kill());
    const idleStarted = performance.now();
    await sleep(idleSeconds * 1000);
    idle = await probe.stop();
    await killIdleTracers();
    const idleElapsedS = (performance.now() - idleStarted) / 1000;
    const idleTotal = sumCounts(idle).total;
    log(`fsync_probe: ${idleTotal} fsync-family calls in ${idleElapsedS.toFixed(1)} s idle`);

    log(`fsync_probe: ${config.fsyncRuns} sequential runs under strace -f -c`);
    probe = await FsyncProbe.attach(context.processes, context.servers.mongo?.dataDir ?? context.stack.dir);
    const killTracers = onCleanup('strace (runs)', () => probe.kill());
    const sampler = new RssSampler(context.processes);
    sampler.start();
    const traced = performance.now();
    const result = await closedLoop({ label: 'fsync_probe', total: config.fsyncRuns, concurrency: 1, socketFor: (_worker, index) => context.sockets[index % context.sockets.length]! });
    const counts = await probe.stop();
    await killTracers();
    const tracedS = (performance.now() - traced) / 1000;
    const peak = sampler.stop();
    const { total, byProcess } = sumCounts(counts);
    const runs = Math.max(1, result.latencies.length);
    const idleRate = idleTotal / idleElapsedS;
    const perRunNet = (total - idleRate * tracedS) / runs;
    const perProcess = Object.entries(byProcess)
      .map(([name, calls]) => `${name} ${Object.entries(calls).map(([call, count]) => `${call}=${(count / runs).toFixed(2)}`).join(' ') || '0'}`)
      .join(', ');
    const syncWall = [...counts.entries()]
      .flatMap(([name, calls]) => [...calls.entries()].filter(([, count]) => count.calls > 0).map(([call, count]) => `${name} ${call} ${((count.wallSeconds / count.calls) * 1000).toFixed(3)} ms`))
      .join(', ');
    emit({
      ...base,
      runs: result.started,
      errors: result.errors,
      peak_rss_mb: round(peak, 1),
      fsyncs_per_run: round(total / runs),
      fsyncs_per_run_by_process: Object.fromEntries(Object.entries(byProcess).map(([name, calls]) => [name, round(Object.values(calls).reduce((sum, count) => sum + count, 0) / runs)])),
      notes: [
        ...context.commonNotes,
        `not timed (runs under ptrace are slowed); ${total} fsync-family calls over ${result.latencies.length} runs in ${tracedS.toFixed(1)} s, one 'strace -f -c -w -e trace=${fsyncCalls.join(',')}' per process (nats-server, ferretdb, 4 services)`,
        `per run by process: ${perProcess}`,
        `background while idle: ${idleRate.toFixed(2)}/s; net of it ≈ ${perRunNet.toFixed(2)} per run`,
        `mean wall time per call under strace: ${syncWall || 'n/a'}`,
        boundNote(result, config.fsyncRuns),
      ].join('; '),
    });
  } catch (error) {
    const message = (error as Error).message;
    if (message === 'interrupted') throw error;
    log(`fsync_probe failed: ${message}`);
    emit({ ...base, runs: 0, errors: 0, peak_rss_mb: null, fsyncs_per_run: null, notes: `not measured: ${message.split('\n')[0]}` });
  }
}

async function scenarioApprovals(context: Context): Promise<void> {
  const total = config.approvalRuns;
  const name = `approvals_${total}`;
  const orchestrator = context.processes.find((entry) => entry.name === 'orchestrator')!;
  const sampler = new RssSampler(context.processes);
  sampler.start();
  const scenarioStarted = performance.now();
  const rssBefore = rssMb(orchestrator.pid);
  const errorSamples: string[] = [];
  const noteError = (message: string) => {
    if (errorSamples.length < 5) errorSamples.push(message);
  };

  // 1. Every run to `run.suspended`, 50 creations at a time, spread over the tenants.
  log(`${name}: starting ${total} runs whose step-0 tool needs approval (${suspendConcurrency} at a time)`);
  const suspended: { runId: string; key: string; socket: BenchSocket; seq: number }[] = [];
  const suspendLatencies: number[] = [];
  let next = 0;
  let suspendErrors = 0;
  let suspendCutShort = false;
  let lastProgress = scenarioStarted;
  await Promise.all(
    Array.from({ length: Math.min(suspendConcurrency, total) }, async () => {
      while (next < total) {
        checkInterrupted();
        if (performance.now() - scenarioStarted > approvalBudgetMs) {
          suspendCutShort = true;
          return;
        }
        const index = next;
        next += 1;
        const tenant = index % context.sockets.length;
        const outcome = await context.sockets[tenant]!.runToSuspension(approvalAgentId, runInput, runTimeoutMs);
        if (outcome.ok) {
          suspended.push({ runId: outcome.runId, key: context.keys[tenant]!, socket: context.sockets[tenant]!, seq: outcome.seq });
          suspendLatencies.push(outcome.ms);
        } else {
          suspendErrors += 1;
          noteError(`suspend ${outcome.runId ?? '(no run)'}: ${outcome.error}`);
        }
        if (performance.now() - lastProgress > 5_000) {
          lastProgress = performance.now();
          log(`${name}: ${suspended.length} suspended, ${suspendErrors} errors`);
        }
      }
    }),
  );
  const suspendS = (performance.now() - scenarioStarted) / 1000;
  log(`${name}: ${suspended.length} runs suspended in ${suspendS.toFixed(1)} s (${suspendErrors} errors)`);

  // 2. Everything waits: the orchestrator's memory and CPU (and everyone else's CPU) while idle.
  await sleep(2_000);
  let orchestratorRssPeak = 0;
  context.proxy?.reset();
  const idleCpu = await cpuPercentOver(context.processes, config.approvalIdleS * 1000, () => {
    orchestratorRssPeak = Math.max(orchestratorRssPeak, rssMb(orchestrator.pid));
  });
  const idleRss = Object.fromEntries(context.processes.map((entry) => [entry.name, round(rssMb(entry.pid), 1)]));
  if (context.proxy) log(`${name}: ${describeProfile(context.proxy, config.approvalIdleS, 'idle second')}`);
  log(`${name}: idle ${config.approvalIdleS} s with ${suspended.length} suspended: CPU % ${JSON.stringify(Object.fromEntries([...idleCpu].map(([key, value]) => [key, round(value)])))}, RSS MiB ${JSON.stringify(idleRss)}`);

  // 3. Approve over HTTP, `approvalConc` in flight; latency = POST sent -> the tool call arriving at the bench's tool server.
  checkInterrupted();
  log(`${name}: approving ${suspended.length} runs over HTTP, ${config.approvalConc} at a time`);
  const approvalLatencies: number[] = [];
  const approved: { runId: string; key: string }[] = [];
  const completionWaits: Promise<{ ok: boolean; error?: string; at: number }>[] = [];
  let approveErrors = 0;
  let approveCutShort = false;
  let cursor = 0;
  context.proxy?.reset();
  const approvalsStarted = performance.now();
  await Promise.all(
    Array.from({ length: Math.min(config.approvalConc, suspended.length) }, async () => {
      while (cursor < suspended.length) {
        checkInterrupted();
        if (performance.now() - approvalsStarted > scenarioBudgetMs) {
          approveCutShort = true;
          return;
        }
        const run = suspended[cursor]!;
        cursor += 1;
        const arrival = context.toolServer.waitForCall(`${run.runId}:s0c0`, runTimeoutMs);
        arrival.catch(() => undefined); // awaited below; a failed POST must not leave it unhandled
        const sent = performance.now();
        try {
          const response = await context.stack.api(run.key, 'POST', `/v1/runs/${run.runId}/approvals/s0c0`, { approved: true, reason: 'benchmark' });
          if (response.status !== 202) throw new Error(`approval answered ${response.status} ${JSON.stringify(response.body)}`);
          approvalLatencies.push((await arrival) - sent);
          approved.push(run);
          completionWaits.push(run.socket.followToEnd(run.runId, run.seq, finalText, 60_000));
        } catch (error) {
          approveErrors += 1;
          noteError(`approve ${run.runId}: ${(error as Error).message}`);
        }
      }
    }),
  );
  const approvalsS = (performance.now() - approvalsStarted) / 1000;
  log(`${name}: ${approved.length} approved tool calls started in ${approvalsS.toFixed(1)} s (${approveErrors} errors)`);

  // 4. Every approved run completes with the expected output (followed over the WebSocket from
  // its run.suspended event, once its approved tool call has started).
  const completions = await Promise.all(completionWaits);
  let completed = 0;
  let completionErrors = 0;
  let lastCompletion = approvalsStarted;
  completions.forEach((outcome, index) => {
    if (outcome.ok) {
      completed += 1;
      lastCompletion = Math.max(lastCompletion, outcome.at);
    } else {
      completionErrors += 1;
      noteError(`complete ${approved[index]!.runId}: ${outcome.error}`);
    }
  });
  const completedAt = performance.now();
  if (context.proxy) log(`${name}: ${describeProfile(context.proxy, Math.max(1, completed), 'approved run, from its approval to its end')}`);
  const rssAfter = rssMb(orchestrator.pid);
  const peak = sampler.stop();
  for (const sample of errorSamples) log(`${name} error: ${sample}`);

  const summary = summarize(approvalLatencies);
  const suspendSummary = summarize(suspendLatencies);
  const approvalPhaseS = (lastCompletion - approvalsStarted) / 1000;
  const cpuNote = [...idleCpu].map(([key, value]) => `${key} ${value.toFixed(2)}`).join(', ');
  emit({
    peer: 'abide',
    scenario: name,
    runs: next,
    errors: suspendErrors + approveErrors + completionErrors,
    concurrency: config.approvalConc,
    ...timingFields(summary),
    runs_per_s: round(completed / approvalPhaseS),
    steps_per_s: round((completed / approvalPhaseS) * 5),
    per_step_overhead_ms: null,
    wall_s: round((completedAt - scenarioStarted) / 1000),
    peak_rss_mb: round(peak, 1),
    llm_ms: config.llmMs,
    tool_ms: config.toolMs,
    suspended_runs: suspended.length,
    suspend_p50_ms: round(suspendSummary.p50),
    suspend_p99_ms: round(suspendSummary.p99),
    orchestrator_rss_mb_before: round(rssBefore, 1),
    orchestrator_rss_mb: round(orchestratorRssPeak, 1),
    orchestrator_rss_mb_after: round(rssAfter, 1),
    orchestrator_cpu_pct: round(idleCpu.get('orchestrator') ?? null),
    approval_to_tool_p50_ms: round(summary.p50),
    approval_to_tool_p99_ms: round(summary.p99),
    notes: [
      `${total} runs of the workload agent whose step-0 tool (HTTP, served by the bench) needs approval, started over WebSocket ${suspendConcurrency} at a time until each one's run.suspended (then unsubscribed): ${suspended.length} suspended in ${suspendS.toFixed(1)} s`,
      `orchestrator_rss_mb: peak VmRSS over a ${config.approvalIdleS}-s idle window (2 s after the last suspension) with every run suspended; orchestrator_cpu_pct: its user+system CPU over that window, % of one core (idle CPU % of every process: ${cpuNote})`,
      `p50/p95/p99/mean_ms here = approval latency: from sending POST /v1/runs/:runId/approvals/s0c0 to the tool call arriving at the tool server (Idempotency-Key <runId>:s0c0), ${config.approvalConc} approvals in flight (each until its tool call starts)`,
      `runs_per_s: runs completed per second of the approval phase (first POST to last run.completed, each followed over the WebSocket from its run.suspended once its tool call started, output verified); ${completed} completed`,
      suspendCutShort
        ? `stopped starting runs at the ${approvalBudgetMs / 1000}-s budget: ${next} of ${total} started, ${suspended.length} suspended`
        : `bounded at ${approvalBudgetMs / 1000} s of starting runs (not reached) and 30 s per run`,
      approveCutShort ? `stopped approving at the 90-s budget: ${cursor} of ${suspended.length} approved` : 'approvals bounded at 90 s (not reached)',
      ...context.commonNotes.filter((note) => note.startsWith('durability') || note.startsWith('EXPERIMENT')),
    ].join('; '),
  });
}

// ---------------------------------------------------------------------------------------------
// Main

/**
 * A fresh stack (servers with empty data, every service), the agents in every tenant, a socket per
 * tenant and the warm-up runs; `body` runs with it, then everything is stopped (its data removed
 * unless BENCH_KEEP_DATA=1 or something failed). Every scenario gets its own: none pays for the
 * history another one left behind, and a subset of scenarios measures what the full run does.
 */
async function withStack(label: string, tenantCount: number, toolServer: BenchToolServer, body: (context: Context) => Promise<void>): Promise<void> {
  checkInterrupted();
  const workload: WorkloadOptions = { llmMs: config.llmMs, toolMs: config.toolMs, toolServerUrl: toolServer.url };
  const keys = Array.from({ length: tenantCount }, (_, index) => `bench-key-${index}-0123456789abcdef`);
  const started = performance.now();
  let succeeded = false;
  const dir = mkdtempSync(join(tmpdir(), 'abide-bench-'));
  const dirs = [dir];
  const removeData = onCleanup('bench data', () => {
    if ((succeeded || interrupted) && !config.keepData) for (const path of dirs) rmSync(path, { recursive: true, force: true });
    else log(`${label}: server data and service logs kept in ${dirs.join(' and ')}`);
  });
  try {
    // The servers are started here (fresh data; NATS_URL / MONGO_URL name others instead), so that
    // their processes are known, and the services may reach MongoDB through the profiling proxy.
    log(`${label}: starting fresh servers and services (${tenantCount} tenants)`);
    const servers = await startServersFromEnv(process.env, { dataRoot: dir, log: () => {} });
    currentStore = servers.store === 'sqlite' || servers.store === 'postgres' ? `ferretdb-${servers.store}` : servers.store;
    const stopServers = onCleanup('servers', () => servers.stop());
    let proxy: MongoProfileProxy | undefined;
    let closeProxy = async () => {};
    let mongoUrl = servers.mongoUrl;
    if (config.mongoProfile) {
      const upstream = new URL(servers.mongoUrl);
      proxy = await startMongoProfileProxy(upstream.hostname, Number(upstream.port || 27017));
      upstream.hostname = '127.0.0.1';
      const bound = proxy;
      closeProxy = onCleanup('mongo proxy', () => bound.close());
      upstream.port = String(proxy.port);
      mongoUrl = upstream.toString();
    }
    const savedEnv = { NATS_URL: process.env.NATS_URL, MONGO_URL: process.env.MONGO_URL };
    process.env.NATS_URL = servers.natsUrl;
    process.env.MONGO_URL = mongoUrl;
    currentStack = {
      starting: Stack.start({ apiKeys: keys.map((key, index) => `${key}:bench-tenant-${index}`).join(','), env: { LOG_LEVEL: config.logLevel } }),
      stack: undefined,
    };
    let stack: Stack;
    try {
      stack = await currentStack.starting;
    } finally {
      for (const [name, value] of Object.entries(savedEnv)) {
        if (value === undefined) delete process.env[name];
        else process.env[name] = value;
      }
    }
    currentStack.stack = stack;
    dirs.push(stack.dir);
    const stopStack = onCleanup('stack', () => stack.stop());
    try {
      checkInterrupted();
      // A service started after a code change strips its modules' types with Node's WASM stripper,
      // which stays loaded (~25 MB RSS each); every later start reads Node's compile cache instead
      // (shared/src/node-options.ts). One clean restart, which writes the cache, so every scenario
      // measures the services as any start after the first runs them.
      for (const service of stack.services) {
        await service.stop('SIGTERM');
        service.start();
        await service.waitReady();
      }
      const processes: StackProcess[] = [
        ...(servers.nats ? [{ name: 'nats-server', pid: servers.nats.pid }] : []),
        ...(servers.mongo ? [{ name: servers.mongo.kind, pid: servers.mongo.pid }] : []),
        ...(servers.postgres ? [{ name: 'postgres', pid: servers.postgres.pid, tree: true }] : []),
        ...stack.services.map((service) => ({ name: service.name, pid: service.pid! })),
      ];
      log(`${label}: up in ${((performance.now() - started) / 1000).toFixed(1)} s on store ${currentStore}: ${processes.map((entry) => `${entry.name}=${entry.pid}`).join(' ')} (data in ${dir}, logs in ${stack.dir})`);

      const indexTables = () => {
        if (!config.ferretDbIdIndex || servers.mongo?.kind !== 'ferretdb') return;
        const tables = addFerretDbIdIndexes(join(servers.mongo.dataDir, 'sqlite'), new URL(stack.mongoUrl).pathname.slice(1));
        if (tables.length > 0) log(`${label}: EXPERIMENT: added the _id index FerretDB's queries can use to ${tables.join(', ')}`);
      };
      for (const key of keys) {
        for (const [id, agent] of [
          [agentId, workloadAgent(workload)],
          [approvalAgentId, approvalAgent(workload)],
        ] as const) {
          const response = await stack.api(key, 'PUT', `/v1/agents/${id}`, agent);
          if (response.status !== 200) throw new Error(`PUT /v1/agents/${id} answered ${response.status}: ${JSON.stringify(response.body)}`);
        }
      }
      indexTables();
      const wsUrl = `${stack.gatewayUrl.replace('http', 'ws')}/v1/ws`;
      const sockets = await Promise.all(keys.map((key) => BenchSocket.open(wsUrl, key)));
      const closeSockets = onCleanup('sockets', () => sockets.forEach((socket) => socket.close()));

      // Warm-up, checking the workload once: both tool results are the arguments, the output the text.
      log(`${label}: warm-up, ${config.warmupRuns} runs`);
      let firstRunId: string | undefined;
      for (let index = 0; index < config.warmupRuns; index += 1) {
        checkInterrupted();
        const outcome = await sockets[index % sockets.length]!.runToCompletion(agentId, runInput, finalText, runTimeoutMs, index === 0);
        if (!outcome.ok) throw new Error(`warm-up run ${outcome.runId} failed: ${outcome.error}\n${stack.logs(20)}`);
        if (index === 0) {
          verifyWorkload(outcome, workload);
          firstRunId = outcome.runId;
        }
      }
      indexTables(); // tables the warm-up created
      await body({
        stack,
        servers,
        sockets,
        keys,
        processes,
        toolServer,
        workload,
        commonNotes: describeDurability(servers, workload, tenantCount),
        firstRunId,
        proxy,
        indexTables,
      });
      const lateErrors = sockets.reduce((sum, socket) => sum + socket.lateErrorFrames, 0);
      if (lateErrors > 0) log(`${label}: ${lateErrors} error frames arrived for requests already given up on (after ${runTimeoutMs / 1000} s)`);
      await closeSockets();
      succeeded = true;
    } finally {
      await stopStack();
      currentStack = undefined;
      await closeProxy();
      await stopServers();
    }
  } finally {
    await removeData();
  }
}

/** Per-command MongoDB time, from the profiling proxy, divided by `divisor` (`per`: what one unit is). */
function describeProfile(proxy: MongoProfileProxy, divisor: number, per: string): string {
  const rows = [...proxy.stats().entries()].sort((a, b) => b[1].totalMs - a[1].totalMs);
  const totalMs = rows.reduce((sum, [, entry]) => sum + entry.totalMs, 0);
  const totalCount = rows.reduce((sum, [, entry]) => sum + entry.count, 0);
  return [
    `MongoDB commands per ${per} (timed at the proxy; all services and sweepers): ${(totalCount / divisor).toFixed(1)} commands, ${(totalMs / divisor).toFixed(1)} ms of server time`,
    ...rows.map(([name, entry]) => `  ${(entry.count / divisor).toFixed(2).padStart(7)} x ${(entry.totalMs / entry.count).toFixed(2).padStart(8)} ms avg (max ${entry.maxMs.toFixed(1).padStart(7)}) = ${(entry.totalMs / divisor).toFixed(1).padStart(7)} ms  ${name}`),
  ].join('\n');
}

async function main(): Promise<void> {
  const started = performance.now();
  const toolServer = await startBenchToolServer(config.toolMs);
  onCleanup('tool server', () => toolServer.close());
  log(`machine: ${cpus().length} cores, load average ${loadavg().map((value) => value.toFixed(2)).join(' ')} (other processes share it)`);

  if (config.scenarios.has('sequential')) {
    await withStack('sequential', tenantsFor.sequential, toolServer, async (context) => {
      log('floor probes: fsync, JetStream publish+PubAck, FerretDB insertOne / findOne; hot-path operations with real documents');
      if (context.servers.nats) {
        context.floor = await measureFloor({ dir: context.servers.mongo?.dataDir ?? context.stack.dir, natsUrl: context.servers.natsUrl, db: context.stack.db });
        log(
          `floor (p50/p99 ms): fsync ${fmt(context.floor.fsync)}; JetStream publish ${fmt(context.floor.jsPublish)}; MongoDB-server insertOne 1 KiB ${fmt(context.floor.mongoInsert)}, ` +
            `${concurrentWriters} writers at once ${fmt(context.floor.mongoInsertConcurrent)}; findOne ${fmt(context.floor.mongoFindById)}`,
        );
      }
      context.documentOps = context.firstRunId ? await measureDocumentOps(context.stack.db, context.firstRunId, context.indexTables) : undefined;
      if (context.documentOps) {
        const { ops, ...sizes } = context.documentOps;
        log(`hot-path operations with a finished run's documents (${JSON.stringify(sizes)}), p50 ms:\n${Object.entries(ops).map(([name, value]) => `  ${value?.toFixed(2).padStart(8)}  ${name}`).join('\n')}`);
      }
      context.bytesPerStep = await probeBytesPerStep(context);
      log(`bytes written to MongoDB per step (BSON): ${context.bytesPerStep}`);
      await scenarioSequential(context);
    });
  }
  if (config.scenarios.has('throughput_c50')) await withStack(`throughput_c${config.tpConc}`, tenantsFor.throughput, toolServer, scenarioThroughput);
  if (config.scenarios.has('fsync_probe')) await withStack('fsync_probe', tenantsFor.fsync, toolServer, scenarioFsyncProbe);
  if (config.scenarios.has('approvals')) await withStack(`approvals_${config.approvalRuns}`, tenantsFor.approvals, toolServer, scenarioApprovals);
  if (config.scenarios.has('protocol_floor')) await scenarioProtocolFloor();
  log(`done in ${((performance.now() - started) / 1000).toFixed(1)} s; load average now ${loadavg().map((value) => value.toFixed(2)).join(' ')}`);
}

/**
 * The protocol floor (`protocol-floor.ts`): the workload's message pattern played by bare
 * processes on fresh servers, as the sequential and throughput scenarios: as DESIGN §4 orders it,
 * with those orderings relaxed, and the step chain alone. What the architecture costs before any of
 * Abide's code: a lone run of Abide can come down to these, not below; under load Abide
 * group-commits its writes (`write-batcher.ts`) and the floor does not.
 */
async function scenarioProtocolFloor(): Promise<void> {
  checkInterrupted();
  log(`protocol_floor: the workload's message pattern by bare processes (no Abide code), ${config.seqRuns} sequential and ${config.tpRuns} at ${config.tpConc} in flight, in each of ${floorVariants.length} variants`);
  const floor = await runProtocolFloor({ sequentialRuns: config.seqRuns, concurrentRuns: config.tpRuns, concurrency: config.tpConc });
  currentStore = floor.store === 'sqlite' || floor.store === 'postgres' ? `ferretdb-${floor.store}` : floor.store;
  const gatewayPart = "the gateway's creation writes and an ordered consumer per run for the client";
  const pattern: Record<FloorVariant, string> = {
    design: `as DESIGN §4 orders it (events, then the work; a result stored, then published); ${gatewayPart}`,
    pipelined: `DESIGN §4's orderings relaxed (events beside the work; a result's store beside its publish): what protocol changes could reach; ${gatewayPart}`,
    steps: "as DESIGN §4 orders it, the step chain alone: the start published at once (no creation writes), the client a plain subscription (no ordered consumer)",
  };
  for (const variant of floorVariants) {
    for (const [scenario, measured] of [
      ['sequential', floor.floors[variant].sequential],
      [`throughput_c${config.tpConc}`, floor.floors[variant].concurrent],
    ] as const) {
      const runsPerS = measured.runs / measured.wallS;
      emit({
        peer: `protocol-floor (${variant})`,
        scenario,
        runs: measured.runs,
        errors: 0,
        concurrency: measured.concurrency,
        p50_ms: round(measured.latency.p50),
        p95_ms: round(measured.latency.p95),
        p99_ms: round(measured.latency.p99),
        mean_ms: round(measured.latency.mean),
        runs_per_s: round(runsPerS),
        steps_per_s: round(runsPerS * floorSteps),
        per_step_overhead_ms: measured.concurrency === 1 ? round(measured.latency.p50! / floorSteps, 3) : null,
        wall_s: round(measured.wallS),
        peak_rss_mb: null,
        llm_ms: 0,
        tool_ms: 0,
        cpu_ms_per_run_by_process: measured.cpuMsPerRun,
        notes:
          `not Abide: the workload's messages and writes by bare processes (protocol-floor.ts), ${pattern[variant]}; ` +
          "one ~1 KiB transition insert per step, the workers' KV reads, markers and result stores; same servers and durability as Abide's lines (sync_interval: always, w majority j true); the gateway+client process is the measuring one",
      });
    }
  }
}

/**
 * Bytes written to MongoDB per step for one run of the workload's shape with 2 tool rounds
 * (5 steps) and one with 25 (51 steps): whether a step's bytes grow with the run.
 */
async function probeBytesPerStep(context: Context): Promise<string> {
  const measured = [];
  for (const rounds of [2, 25]) {
    const id = `bench-bytes-${rounds}`;
    const response = await context.stack.api(context.keys[0]!, 'PUT', `/v1/agents/${id}`, toolRoundsAgent(context.workload, rounds));
    if (response.status !== 200) throw new Error(`PUT /v1/agents/${id} answered ${response.status}: ${JSON.stringify(response.body)}`);
    const outcome = await context.sockets[0]!.runToCompletion(id, runInput, finalText, runTimeoutMs);
    if (!outcome.ok) throw new Error(`bytes probe run ${outcome.runId} failed: ${outcome.error}`);
    measured.push(await measureRunBytes(context.stack.db, outcome.runId, 2 * rounds + 1));
  }
  return describeRunBytes(measured);
}

function fmt(summary: LatencySummary): string {
  return `${summary.p50?.toFixed(3)}/${summary.p99?.toFixed(3)}`;
}

function verifyWorkload(outcome: Extract<RunOutcome, { ok: true }>, workload: WorkloadOptions): void {
  const events = (outcome.events ?? []).filter((entry) => entry.type !== createdFrameType);
  const results = events.filter((entry) => entry.type === 'tool.result').map((entry) => entry.event);
  const calls = events.filter((entry) => entry.type === 'tool.call').map((entry) => entry.event);
  const tool = workloadToolName(workload);
  const good =
    calls.length === 2 &&
    results.length === 2 &&
    calls.every((call, index) => call.toolName === tool && isDeepStrictEqual(call.args, toolArgs[index])) &&
    results.every((result, index) => isDeepStrictEqual(result.result, toolArgs[index]));
  if (!good) throw new Error(`the workload run does not look as expected: ${JSON.stringify(events.map((entry) => entry.event)).slice(0, 2000)}`);
  const argsBytes = toolArgs.map((args) => JSON.stringify(args).length);
  log(`workload checked: 5 steps, tool args ${argsBytes.join(' and ')} bytes echoed back, final text ${finalText.length} chars; ${events.length} events, first run ${outcome.ms.toFixed(1)} ms`);
}

/** The durability settings in force, read from what was started (WORKLOAD.md asks to state them). */
function describeDurability(servers: StartedServers, workload: WorkloadOptions, tenantCount: number): string[] {
  const notes: string[] = [];
  if (config.ferretDbIdIndex && servers.mongo?.kind === 'ferretdb') {
    notes.push(
      "EXPERIMENT, NOT ABIDE AS SHIPPED: BENCH_FERRETDB_ID_INDEX=1 added to FerretDB's SQLite tables a unique index on _ferretdb_sjson->'$._id' (the expression FerretDB 1.24 queries _id with; its own _id index is on ->\"_id\" and is never used, so every _id lookup scans the table)",
    );
  }
  let nats = 'nats-server given by NATS_URL (its settings are not known here)';
  if (servers.nats) {
    let conf = '';
    try {
      conf = readFileSync(join(servers.nats.dataDir, 'nats.conf'), 'utf8');
    } catch {
      // Config file not where expected: say so below.
    }
    const sync = /^\s*sync_interval:\s*(\S+)/m.exec(conf)?.[1];
    // Abide's build (scripts/lib/server-binaries.ts, patchGroupSync) is named `nats-server-<version>-abide<n>`.
    let binary = '';
    try {
      binary = readlinkSync(`/proc/${servers.nats.pid}/exe`);
    } catch {
      // Not Linux, or the process is gone: the binary is not named below.
    }
    const grouped = /-abide\d+$/.test(basename(binary));
    const always = grouped
      ? " (Abide's build: every append synced before its PubAck, one fsync per batch of appends a stream takes at once; a removal synced with its block's next sync)"
      : ' (fsync on every write)';
    nats = `nats-server JetStream file storage, R1, sync_interval: ${sync ?? 'default (2 min!)'}${sync === 'always' ? always : ''}`;
  }
  const mongo = servers.store === 'postgres'
    ? `FerretDB 1.24 on PostgreSQL ${servers.postgres ? `(${servers.postgres.url.replace(/\/\/[^@]*@/, '//')})` : ''} with fsync=on, synchronous_commit=on (the WAL is flushed at each commit); its memory is the Pss of the postmaster and its backends`
    : servers.mongo?.kind === 'ferretdb'
    ? 'FerretDB 1.24 on SQLite with its defaults (journal_mode=WAL, synchronous=FULL: the WAL is fsynced at each commit)'
    : servers.mongo?.kind === 'mongod'
      ? 'mongod with its defaults (journaled, w:1)'
      : 'MongoDB given by MONGO_URL (its settings are not known here)';
  notes.push(`durability: ${nats}; ${mongo}; MongoDB writes with MONGO_WRITE_CONCERN=${process.env.MONGO_WRITE_CONCERN ?? 'majority'} (default: w majority, j true); every step commits (insert of run_transitions) before its next step is published; the deadline item is written after the publish, before the input's ack, and the read model then too for a run that waits or has ended, within 1 s after the ack for a running one`);
  notes.push('latency: WebSocket run.create frame sent -> run.completed frame received on the same socket (subscribed by the gateway from the first event), output verified');
  notes.push(`runs spread over ${tenantCount} tenants (one API key and socket each): the gateway limits run creation to 20/s per tenant (burst 50, not configurable)`);
  notes.push(`1 replica per service (restarted once after the stack started, so with Node's compile cache warm), log level ${config.logLevel}, ${config.warmupRuns} warm-up runs`);
  if (workload.llmMs > 0) {
    notes.push(`LLM_MS via the scripted model's delayMs (one chunk per step); the scripted model delays only text chunks, so the two tool-calling steps carry the text "${toolStepText}" to be delayed too`);
  }
  if (workload.toolMs > 0) {
    notes.push('TOOL_MS>0: the tool is an HTTP tool served by the bench process (sleeps TOOL_MS, echoes its arguments), as no built-in both sleeps and echoes');
  }
  return notes;
}

main()
  .then(async () => {
    await cleanUp();
    process.exit(0);
  })
  .catch(async (error: unknown) => {
    const message = (error as Error).message;
    // After Ctrl-C, whatever failed because the stack went away under it is not news.
    if (!interrupted) log(`failed: ${(error as Error).stack ?? message}`);
    await cleanUp();
    process.exit(interrupted ? 130 : 1);
  });
