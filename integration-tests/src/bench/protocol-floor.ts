/**
 * The protocol floor (issue 9): the message pattern DESIGN §3 and §4 prescribe for one workload
 * run, played by bare processes with no Abide code in them (no validation, no state machine, no
 * AI SDK, no HTTP or WebSocket) against the same servers and durability the stack uses. What it
 * measures is what the architecture itself costs on this machine: its crossings between
 * processes, its synced appends and commits. For one run at a time Abide can come down to it,
 * not below it; under load Abide group-commits its writes (`write-batcher.ts`) and this does not.
 *
 * Per run:
 * - the measuring process is the gateway (and the client): the agent read beside the
 *   conversation lock and run slot inserts, the outbox work item, version 1, then its read model
 *   beside the `start` publish, the work item deleted after; then an ordered consumer filtered to
 *   the run's events until `run.completed`;
 * - the "orchestrator" takes each inbox message (the `start`, then each result): it commits a
 *   ~1 KiB transition (an insert), publishes the transition's event and awaits its PubAck, then
 *   publishes the next step's work and awaits its PubAck ("events first, then work"), then acks;
 *   at the end it writes the read model and deletes the conversation lock;
 * - the "llm-worker" takes a model step: two KV reads at once (the run's cancel entry, the step's
 *   stored result), then `llm.step.started` beside the result's KV create, then the result's
 *   publish to the run's inbox, then the ack;
 * - the "tool-worker" takes a tool step: the two KV reads and the started marker's create at once,
 *   then the result's KV create, then its publish, then the ack;
 * - five steps: llm, tool, llm, tool, llm.
 * Variants (`floorVariants`): `design` as above; `pipelined` relaxes DESIGN §4's orderings (events
 * beside the work, a result's store beside its publish): what changing those protocols could
 * reach at best; `steps` keeps DESIGN's orderings but leaves out the gateway's part (the `start`
 * published at once, the client a plain subscription): the step chain alone.
 *
 * `npm run bench` runs it as the scenario `protocol_floor`; alone:
 * `node integration-tests/src/bench/protocol-floor.ts` (fresh servers, or `NATS_URL` / `MONGO_URL`).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { AckPolicy, DeliverPolicy, RetentionPolicy, StorageType, jetstream, jetstreamManager, type JsMsg } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { MongoClient } from 'mongodb';
import { cpuMsPerRun, cpuSnapshot, type StackProcess } from './proc.ts';
import { summarize, type LatencySummary } from './stats.ts';

/** A run slower than this fails the measurement (WORKLOAD.md's bound on a run). */
const runTimeoutMs = 30_000;
const roles = ['orchestrator', 'llm-worker', 'tool-worker'] as const;
type Role = (typeof roles)[number];
/** Step kinds of the workload: llm(0) tool(0) llm(1) tool(1) llm(2). */
const stepKinds = ['llm', 'tool', 'llm', 'tool', 'llm'] as const satisfies { length: typeof floorSteps };
const body = 'x'.repeat(1024);
const encoder = new TextEncoder();
const decoder = new TextDecoder();
const encode = (value: unknown) => encoder.encode(JSON.stringify(value));
const decode = <T>(data: Uint8Array) => JSON.parse(decoder.decode(data)) as T;

const names = { inbox: 'FLOOR_INBOX', workStream: 'FLOOR_WORK', events: 'FLOOR_EVENTS', control: 'floor_control', results: 'floor_results', collection: 'floor_transitions', runs: 'floor_runs', locks: 'floor_locks', work: 'floor_work_items' };

/** One scenario of the floor: its runs' latencies (ms), how long it took, and each process's CPU per run (ms). */
export type FloorScenario = { runs: number; concurrency: number; latency: LatencySummary; wallS: number; cpuMsPerRun: Record<string, number | null> };
export type ProtocolFloor = { sequential: FloorScenario; concurrent: FloorScenario };
/** The workload's steps: what `per_step_overhead_ms` divides by. */
export const floorSteps = 5;
/**
 * `design`: the whole pattern as DESIGN orders it; `pipelined`: with §4's orderings relaxed;
 * `steps`: DESIGN's orderings, the step chain alone (the `start` published at once, no creation
 * writes; the client a plain subscription, no ordered consumer).
 */
export const floorVariants = ['design', 'pipelined', 'steps'] as const;
export type FloorVariant = (typeof floorVariants)[number];

async function provision(connection: NatsConnection): Promise<void> {
  const manager = await jetstreamManager(connection);
  const file = { storage: StorageType.File, num_replicas: 1 };
  await manager.streams.add({ name: names.inbox, subjects: ['floor.in.>'], retention: RetentionPolicy.Workqueue, ...file });
  await manager.streams.add({ name: names.workStream, subjects: ['floor.work.>'], retention: RetentionPolicy.Workqueue, ...file });
  await manager.streams.add({ name: names.events, subjects: ['floor.events.>'], ...file });
  for (const [durable, filter] of [
    ['orchestrator', 'floor.in.>'],
    ['llm-worker', 'floor.work.llm'],
    ['tool-worker', 'floor.work.tool'],
  ] as const) {
    const stream = durable === 'orchestrator' ? names.inbox : names.workStream;
    await manager.consumers.add(stream, { durable_name: durable, filter_subject: filter, ack_policy: AckPolicy.Explicit, deliver_policy: DeliverPolicy.All, max_ack_pending: 1000 });
  }
  const kvm = new Kvm(connection);
  await kvm.create(names.control, { storage: StorageType.File });
  await kvm.create(names.results, { storage: StorageType.File });
}

type Inbox = { runId: string; kind: 'start' | 'result'; step: number };
type Work = { runId: string; step: number };

/** One process of the floor: consumes its durable until told to stop (SIGTERM). */
async function runRole(role: Role, natsUrl: string, mongoUrl: string, pipelined: boolean): Promise<void> {
  const connection = await connect({ servers: natsUrl, noAsyncTraces: true });
  const js = jetstream(connection);
  const kvm = new Kvm(connection);
  const control = await kvm.open(names.control);
  const results = await kvm.open(names.results);
  const mongo = role === 'orchestrator' ? new MongoClient(mongoUrl, { writeConcern: { w: 'majority', journal: true } }) : undefined;
  const transitions = mongo?.db().collection<{ _id: string; step: number; body: string }>(names.collection);
  const runs = mongo?.db().collection<{ _id: string; status: string; version: number; body: string }>(names.runs);
  const locks = mongo?.db().collection<{ _id: string; runId: string }>(names.locks);
  const versions = new Map<string, number>();

  async function orchestrate(message: JsMsg): Promise<void> {
    const inbox = decode<Inbox>(message.data);
    const step = inbox.kind === 'start' ? 0 : inbox.step + 1;
    const version = (versions.get(inbox.runId) ?? 1) + 1;
    versions.set(inbox.runId, version);
    await transitions!.insertOne({ _id: `${inbox.runId}:${version}`, step, body });
    const done = step === stepKinds.length;
    // The run's end: its read model (what listings and GET show), then its conversation lock freed.
    if (done) await runs!.replaceOne({ _id: inbox.runId }, { status: 'completed', version, body });
    const event = done ? 'run.completed' : inbox.kind === 'start' ? 'run.started' : 'step.recorded';
    const eventPublished = js.publish(`floor.events.${inbox.runId}`, encode({ type: event, step, body }), { msgID: `${inbox.runId}:e${version}` });
    if (!pipelined) await eventPublished;
    if (done) {
      versions.delete(inbox.runId);
      await locks!.deleteOne({ _id: `conv:${inbox.runId}` });
    } else {
      await js.publish(`floor.work.${stepKinds[step]}`, encode({ runId: inbox.runId, step } satisfies Work), { msgID: `${inbox.runId}:w${step}` });
    }
    await eventPublished;
    message.ack();
  }

  async function work(message: JsMsg): Promise<void> {
    const { runId, step } = decode<Work>(message.data);
    const resultKey = `${runId}.${step}`;
    const publishResult = () => js.publish(`floor.in.${runId}.result`, encode({ runId, kind: 'result', step } satisfies Inbox), { msgID: `${runId}:r${step}` });
    const stored: Promise<unknown>[] = [];
    if (role === 'llm-worker') {
      await Promise.all([control.get(runId), results.get(resultKey)]);
      stored.push(js.publish(`floor.events.${runId}`, encode({ type: 'llm.step.started', step }), { msgID: `${runId}:s${step}:started` }));
      stored.push(results.create(resultKey, encode({ step, text: body })));
    } else {
      await Promise.all([control.get(runId), results.get(resultKey), results.create(`${resultKey}.started`, encode({ worker: process.pid }))]);
      stored.push(results.create(resultKey, encode({ step, output: body })));
    }
    if (pipelined) stored.push(publishResult());
    await Promise.all(stored);
    if (!pipelined) await publishResult();
    message.ack();
  }

  const consumer = await js.consumers.get(role === 'orchestrator' ? names.inbox : names.workStream, role);
  const messages = await consumer.consume({ max_messages: 100 });
  // Stopped at the end of a measurement, or orphaned (the measuring process is gone): what is in
  // flight no longer matters to anyone.
  process.once('SIGTERM', () => process.exit(0));
  process.once('disconnect', () => process.exit(0));
  process.send?.('ready');
  const handle = role === 'orchestrator' ? orchestrate : work;
  for await (const message of messages) {
    handle(message).catch((error: unknown) => {
      console.error(`[floor ${role}]`, error);
      message.nak(100);
    });
  }
}

/**
 * Runs the floor against the servers at `natsUrl` / `mongoUrl` (whose pids, when given, are
 * counted in the CPU per run): `sequentialRuns` one after another, then `concurrentRuns` with
 * `concurrency` in flight.
 */
export async function measureProtocolFloor(options: {
  natsUrl: string;
  mongoUrl: string;
  serverPids?: Record<string, number>;
  sequentialRuns?: number;
  concurrentRuns?: number;
  concurrency?: number;
  variant: FloorVariant;
}): Promise<ProtocolFloor> {
  const sequentialRuns = options.sequentialRuns ?? 200;
  const concurrentRuns = options.concurrentRuns ?? 500;
  const concurrency = options.concurrency ?? 50;
  const connection = await connect({ servers: options.natsUrl, noAsyncTraces: true });
  const children: ChildProcess[] = [];
  const closers: (() => Promise<unknown>)[] = [];
  try {
    await provision(connection);
    const js = jetstream(connection);
    const mongo = new MongoClient(options.mongoUrl, { writeConcern: { w: 'majority', journal: true } });
    closers.push(() => mongo.close());
    const db = mongo.db();
    const agents = db.collection<{ _id: string; body: string }>('floor_agents');
    await agents.insertOne({ _id: 'agent', body });
    const locks = db.collection<{ _id: string; runId: string }>(names.locks);
    const workItems = db.collection<{ _id: string; runId: string }>(names.work);
    const transitions = db.collection<{ _id: string; step: number; body: string }>(names.collection);
    const runs = db.collection<{ _id: string; status: string; version: number; body: string }>(names.runs);
    const self = fileURLToPath(import.meta.url);
    for (const role of roles) {
      const child = spawn(process.execPath, [self, '--role', role, ...(options.variant === 'pipelined' ? ['--pipelined'] : [])], {
        env: { ...process.env, FLOOR_NATS_URL: options.natsUrl, FLOOR_MONGO_URL: options.mongoUrl },
        stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
      });
      children.push(child);
      await new Promise<void>((resolve, reject) => {
        child.once('message', () => resolve());
        child.once('exit', (code) => reject(new Error(`floor ${role} exited (${code}) before it was ready`)));
      });
    }
    // A process of the floor that dies, or a run that never ends, fails the measurement instead of hanging it.
    let failMeasurement: (error: Error) => void = () => {};
    const measurementFailed = new Promise<never>((_, reject) => (failMeasurement = reject));
    measurementFailed.catch(() => undefined); // raced below; unobserved otherwise
    children.forEach((child, index) => child.once('exit', (code, signal) => failMeasurement(new Error(`floor ${roles[index]} exited (${code ?? signal})`))));
    /** `completed`, unless a process of the floor dies or the run takes longer than `runTimeoutMs`. */
    const within = async (completed: Promise<void>, runId: string): Promise<void> => {
      const timer = new AbortController();
      const timedOut = sleep(runTimeoutMs, undefined, { signal: timer.signal }).then(
        () => Promise.reject(new Error(`run ${runId} did not complete within ${runTimeoutMs} ms`)),
        () => new Promise<never>(() => {}), // cancelled: the run ended first
      );
      try {
        await Promise.race([completed, measurementFailed, timedOut]);
      } finally {
        timer.abort();
      }
    };
    // The `steps` variant's client: one plain subscription to every run's events.
    const completions = new Map<string, () => void>();
    if (options.variant === 'steps') {
      connection.subscribe('floor.events.>', {
        callback: (_error, message) => {
          if (decode<{ type: string }>(message.data).type !== 'run.completed') return;
          const runId = message.subject.slice('floor.events.'.length);
          completions.get(runId)?.();
          completions.delete(runId);
        },
      });
    }
    const processes: StackProcess[] = [
      ...Object.entries(options.serverPids ?? {}).map(([name, pid]) => ({ name, pid })),
      { name: 'gateway+client', pid: process.pid },
      ...roles.map((role, index) => ({ name: role, pid: children[index]!.pid! })),
    ];
    let counter = 0;
    /**
     * One run as the gateway makes and follows it: the agent read beside the conversation lock
     * and the tenant's run slot (one bulk insert), the outbox work item, version 1, then its read
     * model beside the `start` publish, the work item deleted after; the client's events through
     * an ordered consumer filtered to the run, until `run.completed`. In the `steps` variant only
     * the `start` publish, and the shared subscription tells the end.
     */
    const oneRun = async (): Promise<number> => {
      const runId = `f${process.pid}x${(counter += 1)}`;
      const started = performance.now();
      if (options.variant === 'steps') {
        const completed = new Promise<void>((resolve) => completions.set(runId, resolve));
        await js.publish(`floor.in.${runId}.start`, encode({ runId, kind: 'start', step: -1 } satisfies Inbox), { msgID: `${runId}:start` });
        await within(completed, runId);
        return performance.now() - started;
      }
      await Promise.all([agents.findOne({ _id: 'agent' }), locks.insertMany([{ _id: `conv:${runId}`, runId }, { _id: `slot:${runId}`, runId }], { ordered: false })]);
      await workItems.insertOne({ _id: `outbox:${runId}`, runId });
      await transitions.insertOne({ _id: `${runId}:1`, step: -1, body });
      await Promise.all([
        runs.insertOne({ _id: runId, status: 'queued', version: 1, body }),
        js.publish(`floor.in.${runId}.start`, encode({ runId, kind: 'start', step: -1 } satisfies Inbox), { msgID: `${runId}:start` }),
      ]);
      // Off the run's path, as the gateway deletes it; a failure only leaves a row in a scratch collection.
      void workItems.deleteOne({ _id: `outbox:${runId}` }).catch(() => undefined);
      const consumer = await js.consumers.get(names.events, { filter_subjects: `floor.events.${runId}` });
      const events = await consumer.consume({ max_messages: 64 });
      const completed = (async () => {
        for await (const message of events) {
          if (decode<{ type: string }>(message.data).type === 'run.completed') return;
        }
        throw new Error(`run ${runId}: its events ended before run.completed`);
      })();
      try {
        await within(completed, runId);
      } finally {
        events.stop();
      }
      void consumer.delete().catch(() => false);
      // The run slot is freed with the run (the orchestrator frees the conversation lock).
      void locks.deleteOne({ _id: `slot:${runId}` }).catch(() => undefined); // as above
      return performance.now() - started;
    };
    /** `count` runs, `inFlight` at a time (closed loop, as the bench's clients). */
    const scenario = async (count: number, inFlight: number): Promise<FloorScenario> => {
      const before = cpuSnapshot(processes);
      const latencies: number[] = [];
      let started = 0;
      const wallStarted = performance.now();
      await Promise.all(
        Array.from({ length: inFlight }, async () => {
          while (started < count) {
            started += 1;
            latencies.push(await oneRun());
          }
        }),
      );
      const wallS = (performance.now() - wallStarted) / 1000;
      return { runs: count, concurrency: inFlight, latency: summarize(latencies), wallS, cpuMsPerRun: cpuMsPerRun(before, processes, count) };
    };
    await scenario(20, 1); // warm-up
    return { sequential: await scenario(sequentialRuns, 1), concurrent: await scenario(concurrentRuns, concurrency) };
  } finally {
    for (const child of children) child.kill('SIGTERM');
    await Promise.all(children.map((child) => (child.exitCode === null ? new Promise((resolve) => child.once('exit', resolve)) : undefined)));
    const manager = await jetstreamManager(connection);
    for (const stream of [names.inbox, names.workStream, names.events, `KV_${names.control}`, `KV_${names.results}`]) await manager.streams.delete(stream).catch(() => false); // best effort
    const mongo = new MongoClient(options.mongoUrl);
    for (const name of [names.collection, names.runs, names.locks, names.work, 'floor_agents']) await mongo.db().collection(name).drop().catch(() => false); // best effort
    await mongo.close();
    for (const close of closers) await close();
    await connection.close();
  }
}

/**
 * Starts fresh servers (as the bench does for each scenario: `NATS_URL` / `MONGO_URL` name others
 * instead), measures the floor in each variant on them, and stops them.
 */
export async function runProtocolFloor(options: { sequentialRuns: number; concurrentRuns: number; concurrency: number }): Promise<{ store: string; floors: Record<FloorVariant, ProtocolFloor> }> {
  const { startServersFromEnv } = await import('../../../scripts/lib/servers.ts');
  const dataRoot = await mkdtemp(join(tmpdir(), 'abide-floor-'));
  const servers = await startServersFromEnv(process.env, { dataRoot, log: () => {} });
  try {
    const serverPids: Record<string, number> = {};
    if (servers.nats) serverPids['nats-server'] = servers.nats.pid;
    if (servers.mongo) serverPids[servers.mongo.kind] = servers.mongo.pid;
    if (servers.postgres) serverPids.postgres = servers.postgres.pid;
    const floors: Partial<Record<FloorVariant, ProtocolFloor>> = {};
    for (const variant of floorVariants) {
      floors[variant] = await measureProtocolFloor({ natsUrl: servers.natsUrl, mongoUrl: servers.mongoUrl, serverPids, ...options, variant });
    }
    return { store: servers.store, floors: floors as Record<FloorVariant, ProtocolFloor> };
  } finally {
    await servers.stop();
    await rm(dataRoot, { recursive: true, force: true });
  }
}

async function main(): Promise<void> {
  const roleIndex = process.argv.indexOf('--role');
  if (roleIndex > 0) {
    await runRole(process.argv[roleIndex + 1] as Role, process.env.FLOOR_NATS_URL!, process.env.FLOOR_MONGO_URL!, process.argv.includes('--pipelined'));
    return;
  }
  const floor = await runProtocolFloor({ sequentialRuns: Number(process.env.SEQ_RUNS ?? 200), concurrentRuns: Number(process.env.TP_RUNS ?? 500), concurrency: Number(process.env.TP_CONC ?? 50) });
  console.log(JSON.stringify(floor));
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  main().catch((error: unknown) => {
    console.error(error);
    process.exit(1);
  });
}
