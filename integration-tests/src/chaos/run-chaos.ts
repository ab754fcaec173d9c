import { setTimeout as sleep } from 'node:timers/promises';
import { eventStreamProblems, waitForQuietConsumers, type ClientEvent } from '../harness/run-checks.ts';
import { Stack, testKeys } from '../harness/stack.ts';
import { Approver } from './approver.ts';
import { fullReplays, interruptedCallRetries, readAllRawEvents, readTransitions, waitForPublished } from './evidence.ts';
import { Follower } from './followers.ts';
import { GatewayPool } from './gateways.ts';
import { startKiller, type Kill, type Killer } from './killer.ts';
import { describeFaults, startNodeFaults, type NodeFaults } from './node-faults.ts';
import { createRandom } from './random.ts';
import { startCountingToolServer, type ToolCall } from './tool-server.ts';
import { chaosAgents, httpToolNames, planRuns, type RunPlan } from './workload.ts';

export type ChaosOptions = {
  runs: number;
  seed: number;
  /** Runs created per second. @default 1 */
  ratePerSecond?: number;
  /** Pause between kills (after the previous process is back), ms. @default [1000, 3000] */
  killIntervalMs?: [number, number];
  /** How long a killed process stays down, ms. @default [100, 1500] */
  downMs?: [number, number];
  /** WebSocket clients following the runs. @default 4 */
  followers?: number;
  /** How long the runs may take to end once the killer stopped. @default 180000 */
  settleTimeoutMs?: number;
  /**
   * Run on a NATS cluster of this many nodes (issue 14): one replica per service, `JS_REPLICAS`
   * = the node count, and the faults hit NATS nodes instead of services (see node-faults.ts);
   * followers never reconnect on their own, so every subscription must survive the faults.
   */
  cluster?: number;
  /** Cluster: how long the one SIGSTOPped node stays frozen, ms. @default 12000 */
  nodeStopMs?: number;
  /** Keep the killer going after the last run was created until it has made this many kills (at most 5 more minutes). @default 0 */
  minKills?: number;
  /** Ends the chaos early (the stack is still stopped and cleaned up). */
  signal?: AbortSignal;
  log?(line: string): void;
};

export type RepeatedCall = { key: string; calls: number; reason: string };

export type ChaosReport = {
  seed: number;
  runs: number;
  wallTimeMs: number;
  /** Where the service logs are. */
  stackDir: string;
  statuses: Record<string, number>;
  kills: { total: number; byService: Record<string, number> };
  httpCalls: {
    /** Distinct Idempotency-Keys the test server saw. */
    keys: number;
    calls: number;
    /** Keys called more than once, each with why. */
    repeated: RepeatedCall[];
    repeatsByReason: Record<string, number>;
  };
  approvals: { approved: number; denied: number; answers: Record<string, number> };
  /** Model steps whose recorded result came from a later attempt (the first died or was handed back). */
  modelStepsRetried: number;
  followers: { reconnects: number; resubscribesAfterError: number; resubscribesAfterSilence: number; errorCodes: Record<string, number> };
  /** HTTP requests sent again to another gateway after theirs died. */
  gatewayRetries: number;
  /** Cluster: each NATS node fault, when (since the start) and for how long. */
  nodeFaults: string[];
  /** The longest a follower waited for a run's next event, and which run. */
  longestStall: { ms: number; runId: string | undefined };
  /** Every broken promise found; empty when the run passed. */
  violations: string[];
};

const apiKey = testKeys.a;
/**
 * How long a gateway may leave a subscription quiet when the NATS node holding its reader fails
 * (services/gateway/src/nats-event-source.ts, event-relay.ts): the stall is seen within 10 s
 * (three missed 2.5-s heartbeats, checked every 2.5 s), then the relay resumes or sends
 * `subscription_interrupted` within 20 s, the last attempt taking up to one 5-s request
 * timeout. A follower of an ended run quiet for longer was left silent.
 */
const relayResumeBoundMs = 40_000;
const outcomeUnknownReason = 'outcome_unknown: retried with the same key after a tool-worker died mid-call';
const killedMidCallReason = 'a tool-worker was killed between the calls (its retry log line was lost with it)';

/**
 * One chaos run (issue 4): the whole stack with two replicas of every service, a seeded workload
 * of runs (plain tools, HTTP tools, approvals decided over HTTP) while a killer SIGKILLs random
 * service processes and restarts them; WebSocket followers reconnect with their cursor after
 * every kill. Then every promise of DESIGN §5 is checked against the API, MongoDB, the raw event
 * stream and the HTTP tool server's own record, and the findings are returned (never thrown).
 */
export async function runChaos(options: ChaosOptions): Promise<ChaosReport> {
  const started = Date.now();
  const log = options.log ?? (() => {});
  const random = createRandom(options.seed);
  const violations: string[] = [];
  const toolServer = await startCountingToolServer(random.fork('tool-server'));
  let stack: Stack | undefined;
  let killer: Killer | NodeFaults | undefined;
  let approver: Approver | undefined;
  const followers: Follower[] = [];
  try {
    const perService = options.cluster ? 1 : 2;
    stack = await Stack.start({
      replicas: { gateway: perService, orchestrator: perService, 'llm-worker': perService, 'tool-worker': perService },
      ...(options.cluster ? { natsCluster: options.cluster } : {}),
    });
    log(`chaos: stack up in ${stack.dir} (seed ${options.seed}, ${options.runs} runs)`);
    const pool = new GatewayPool(stack, random.fork('gateways'), apiKey);
    const agents = chaosAgents(random.fork('agents'), toolServer.url);
    for (const agent of agents) {
      const put = await pool.request('PUT', `/v1/agents/${agent.agentId}`, agent.body);
      if (put.status !== 200) throw new Error(`PUT agent ${agent.agentId}: ${put.status} ${JSON.stringify(put.body)}`);
    }
    const plans = planRuns(random.fork('plans'), agents, options.runs, options.ratePerSecond ?? 1, options.seed);
    const plansByRunId = new Map<string, RunPlan>();
    approver = new Approver(pool, plansByRunId);
    approver.start();
    for (let index = 0; index < (options.followers ?? 4); index += 1) {
      const follower = new Follower({
        name: `follower-${index}`,
        pool,
        key: apiKey,
        onEvent(runId, event) {
          if (event.type === 'approval.requested') approver?.request(runId, event.toolCallId);
        },
      });
      await follower.start();
      followers.push(follower);
    }

    killer = stack.servers.natsCluster
      ? startNodeFaults({
          cluster: stack.servers.natsCluster,
          random: random.fork('node-faults'),
          intervalMs: options.killIntervalMs ?? [1_000, 3_000],
          downMs: options.downMs ?? [500, 3_000],
          stopMs: options.nodeStopMs ?? 12_000,
          log,
        })
      : startKiller({
          stack,
          random: random.fork('killer'),
          intervalMs: options.killIntervalMs ?? [1_000, 3_000],
          downMs: options.downMs ?? [100, 1_500],
          onKill() {
            for (const follower of followers) void follower.reconnect();
          },
          log,
        });
    const faultCount = () => ('kills' in killer! ? killer.kills.length : killer!.faults.length);

    // Create the runs at the planned pace; a creation whose gateway died is retried with its key.
    const runIds: string[] = [];
    const creations: Promise<void>[] = [];
    for (const plan of plans) {
      await sleep(plan.gapMs);
      options.signal?.throwIfAborted();
      creations.push(
        (async () => {
          for (let attempt = 0; attempt < 20; attempt += 1) {
            const response = await pool.request('POST', '/v1/runs', { agentId: plan.agentId, input: plan.input }, { 'idempotency-key': plan.idempotencyKey }, 180_000);
            if (response.status === 201 || response.status === 200) {
              const runId = String(response.body.runId);
              plansByRunId.set(runId, plan);
              runIds[plan.index] = runId;
              followers[plan.index % followers.length]!.follow(runId);
              return;
            }
            if (response.status < 500) throw new Error(`creating run ${plan.index}: ${response.status} ${JSON.stringify(response.body)}`);
            await sleep(500);
          }
          throw new Error(`creating run ${plan.index}: still failing after 20 attempts`);
        })().catch((error: Error) => {
          // Recorded at once: a rejection left waiting for the end would crash the process.
          violations.push(error.message);
        }),
      );
      if (plan.index % 25 === 24) log(`chaos: ${plan.index + 1}/${plans.length} runs created, ${faultCount()} kills so far`);
    }
    await Promise.all(creations);
    await sleep(3_000);
    // Faults keep coming (while the runs go on) until the minimum asked for has happened.
    for (const deadline = Date.now() + 300_000; faultCount() < (options.minKills ?? 0) && Date.now() < deadline; ) {
      options.signal?.throwIfAborted();
      await sleep(500);
    }
    await killer.stop();
    log(`chaos: all runs created; killer stopped after ${faultCount()} kills; waiting for the runs to end`);

    // Every run ends, and every follower receives its terminal event. The followers are the
    // main road; the API is asked only about runs whose follower has been quiet for a while.
    const ids = runIds.filter(Boolean);
    const settleDeadline = Date.now() + (options.settleTimeoutMs ?? 180_000);
    const endedAt = new Map<string, number>();
    let lastProgressLog = Date.now();
    while (Date.now() < settleDeadline) {
      options.signal?.throwIfAborted();
      const waiting = followers.flatMap((follower) => follower.unfinished().map((run) => ({ follower, run })));
      if (waiting.length === 0) break;
      if (Date.now() - lastProgressLog > 15_000) {
        log(`chaos: ${waiting.length} runs not ended yet`);
        lastProgressLog = Date.now();
      }
      const quiet = waiting.filter(({ run }) => Date.now() - run.lastProgressAt > 10_000).slice(0, 10);
      for (const { follower, run } of quiet) {
        if (Date.now() >= settleDeadline) break;
        const view = await pool.request('GET', `/v1/runs/${run.runId}`, undefined, {}, 10_000).catch(() => undefined);
        if (!view || view.status !== 200 || !['completed', 'failed', 'cancelled'].includes(view.body.status)) continue;
        const since = endedAt.get(run.runId) ?? Date.now();
        endedAt.set(run.runId, since);
        // Ended, but the follower has not seen the end for longer than the relay may take to
        // resume or say `subscription_interrupted`: its subscription ended silently.
        if (Date.now() - since > 5_000 && Date.now() - run.lastProgressAt > relayResumeBoundMs) follower.resubscribe(run.runId);
      }
      await sleep(2_000);
    }
    await approver.stop();
    const stuck = followers.flatMap((follower) => follower.unfinished().map((run) => run.runId));
    for (const runId of stuck) violations.push(`${runId}: no terminal event reached its follower within the settle timeout`);
    log(`chaos: runs ended (${stuck.length} not seen ending); checking`);

    // Let the redeliveries caused by the last kills play out before counting anything.
    await waitForQuietConsumers(stack.servers.natsUrl, 90_000).catch((error: Error) => violations.push(`consumers: ${error.message}`));
    // An outbox item that failed during the faults is retried within 30 s (the sweeper's item
    // backoff cap) plus one sweep interval; a transition's own outbox by its input's redelivery.
    for (const left of await waitForPublished(stack.db, 45_000)) violations.push(`unpublished: ${left}`);

    const kills: Kill[] = 'kills' in killer ? killer.kills : killer.faults.map((fault) => ({ service: `nats ${fault.node}`, replica: 0, pid: undefined, at: fault.at }));
    const report = await verify({ stack, pool, plansByRunId, runIds: ids, followers, approver, toolCalls: toolServer.callsByKey(), kills, violations });
    const nodeFaults = 'faults' in killer ? describeFaults(killer.faults, started) : [];
    let longestStall: ChaosReport['longestStall'] = { ms: 0, runId: undefined };
    for (const follower of followers) for (const run of follower.runs.values()) if (run.longestGapMs > longestStall.ms) longestStall = { ms: run.longestGapMs, runId: run.runId };
    return { ...report, nodeFaults, longestStall, seed: options.seed, runs: options.runs, wallTimeMs: Date.now() - started, stackDir: stack.dir };
  } finally {
    // Stopped first: a killer still running would start processes again behind stack.stop().
    await killer?.stop().catch((error: Error) => log(`chaos: the killer failed: ${error.message}`));
    await approver?.stop();
    for (const follower of followers) follower.close();
    await stack?.stop();
    await toolServer.close();
  }
}

async function verify(input: {
  stack: Stack;
  pool: GatewayPool;
  plansByRunId: Map<string, RunPlan>;
  runIds: string[];
  followers: Follower[];
  approver: Approver;
  toolCalls: Map<string, ToolCall[]>;
  kills: Kill[];
  violations: string[];
}): Promise<Omit<ChaosReport, 'seed' | 'runs' | 'wallTimeMs' | 'stackDir' | 'nodeFaults' | 'longestStall'>> {
  const { stack, pool, plansByRunId, runIds, followers, approver, toolCalls, kills, violations } = input;
  const statuses: Record<string, number> = {};
  const followedEvents = new Map<string, ClientEvent[]>();
  for (const follower of followers) for (const run of follower.runs.values()) followedEvents.set(run.runId, run.events);
  for (const follower of followers) for (const problem of follower.stats.problems) violations.push(`follower ${follower.name}: ${problem}`);
  for (const problem of approver.problems) violations.push(`approver: ${problem}`);

  const transitions = await readTransitions(stack.db, runIds);
  const rawEvents = await readAllRawEvents(stack.servers.natsUrl);
  const replays = await fullReplays(pool.liveUrls(), apiKey, runIds);
  const retriedAfterInterruption = await interruptedCallRetries(stack);
  const recordedHttpKeys = new Set<string>();
  const repeated: RepeatedCall[] = [];
  let modelStepsRetried = 0;

  for (const runId of runIds) {
    const fail = (problem: string) => violations.push(`${runId}: ${problem}`);
    const plan = plansByRunId.get(runId)!;
    const view = await pool.request('GET', `/v1/runs/${runId}`);
    statuses[view.body?.status ?? `http ${view.status}`] = (statuses[view.body?.status ?? `http ${view.status}`] ?? 0) + 1;
    if (view.body?.status !== 'completed') fail(`status ${view.body?.status} (${JSON.stringify(view.body?.error)})`);

    // MongoDB: the history is 1, 2, 3, … and its last state agrees with the API.
    const stored = transitions.get(runId)!;
    if (stored.versions.some((version, index) => version !== index + 1)) fail(`transition versions ${stored.versions.join(',')}`);
    if (stored.unpublished.length) fail(`unpublished transitions ${stored.unpublished.join(',')}`);
    const state = stored.latest?.state;
    if (!state) {
      fail('no transitions');
      continue;
    }
    if (state.status !== view.body?.status) fail(`MongoDB says ${state.status}, the API ${view.body?.status}`);

    // The raw stream: nothing published twice past the Nats-Msg-Id dedupe.
    const raw = rawEvents.get(runId) ?? [];
    const rawIds = raw.map((event) => event.id);
    if (new Set(rawIds).size !== rawIds.length) fail(`RUN_EVENTS holds a repeated eventId (${rawIds.length - new Set(rawIds).size} repeats)`);

    // A full replay through the API, and what the follower saw across its reconnections.
    const replay = replays.get(runId);
    if (!replay || replay instanceof Error) {
      fail(`full replay failed: ${replay?.message ?? 'missing'}`);
      continue;
    }
    for (const problem of eventStreamProblems(replay)) fail(`replay: ${problem}`);
    if (replay.at(-1)?.type !== 'run.completed') fail(`replay ends with ${replay.at(-1)?.type}`);
    const followed = followedEvents.get(runId) ?? [];
    const followedIds = followed.map((event) => event.eventId).join(' ');
    if (followedIds !== replay.map((event) => event.eventId).join(' ')) {
      const firstDifference = replay.findIndex((event, index) => followed[index]?.eventId !== event.eventId);
      fail(`follower saw ${followed.length} events, the replay has ${replay.length}; first difference at ${firstDifference} (${followed[firstDifference]?.eventId} vs ${replay[firstDifference]?.eventId})`);
    }
    for (const problem of eventStreamProblems(followed)) fail(`follower: ${problem}`);

    // Model steps: the recorded attempt is one that started, and message.completed says which.
    for (const completed of replay.filter((event) => event.type === 'message.completed')) {
      const attempts = replay.filter((event) => event.type === 'llm.step.started' && event.step === completed.step).map((event) => event.attempt);
      if (!attempts.includes(completed.attempt)) fail(`message.completed of step ${completed.step} carries attempt ${completed.attempt}; started: ${attempts.join(',')}`);
      if (state.llmAttempts[completed.step] !== completed.attempt) fail(`step ${completed.step}: recorded attempt ${state.llmAttempts[completed.step]}, message.completed says ${completed.attempt}`);
      if (completed.attempt > 1) modelStepsRetried += 1;
    }
    if (replay.filter((event) => event.type === 'message.completed').length !== state.step + 1) fail(`${replay.filter((event) => event.type === 'message.completed').length} message.completed for ${state.step + 1} steps`);

    // Each recorded tool result: once in the run, once in its history, once in its events.
    const toolCallIds = (state.toolCalls as { toolCallId: string }[]).map((call) => call.toolCallId);
    if (new Set(toolCallIds).size !== toolCallIds.length) fail(`tool calls recorded twice: ${toolCallIds.join(',')}`);
    const historyParts = (state.messages as { role: string; content: unknown }[])
      .filter((message) => message.role === 'tool')
      .flatMap((message) => message.content as { toolCallId: string }[]);
    for (const call of state.toolCalls as Record<string, any>[]) {
      const label = `${call.toolCallId} (${call.toolName})`;
      if (call.state !== 'completed' || !call.outcome) fail(`${label} has no outcome`);
      const results = replay.filter((event) => event.type === 'tool.result' && event.toolCallId === call.toolCallId);
      if (results.length !== 1) fail(`${label}: ${results.length} tool.result events`);
      if (replay.filter((event) => event.type === 'tool.call' && event.toolCallId === call.toolCallId).length !== 1) fail(`${label}: tool.call not once`);
      if (historyParts.filter((part) => part.toolCallId === call.providerToolCallId).length !== 1) fail(`${label}: not exactly once in the model's history`);
      if (call.outcome?.kind === 'success' && results[0] && JSON.stringify(results[0].result) !== JSON.stringify(call.outcome.value)) fail(`${label}: the event's result differs from the recorded one`);

      if (!(httpToolNames as readonly string[]).includes(call.toolName)) {
        if (call.outcome?.kind !== 'success') fail(`${label}: outcome ${JSON.stringify(call.outcome)}`);
        continue;
      }
      const key = `${runId}:${call.toolCallId}`;
      recordedHttpKeys.add(key);
      const calls = toolCalls.get(key) ?? [];
      if (call.needsApproval) {
        const wanted = plan.approves(call.toolCallId);
        if (call.approval?.approved !== wanted || call.approval?.source !== 'user') fail(`${label}: approval ${JSON.stringify(call.approval)}, the test decided ${wanted}`);
        if (!wanted) {
          if (call.outcome?.kind !== 'denied') fail(`${label}: denied, but its outcome is ${JSON.stringify(call.outcome)}`);
          if (calls.length !== 0) fail(`${label}: denied, yet the tool server was called ${calls.length} times`);
          continue;
        }
      }
      if (calls.length === 0) fail(`${label}: approved or not gated, yet the tool server never saw ${key}`);
      if (call.outcome?.kind !== 'success' || call.outcome.value?.key !== key) fail(`${label}: outcome ${JSON.stringify(call.outcome)}`);
      else if (!(call.outcome.value.attempt >= 1 && call.outcome.value.attempt <= calls.length)) fail(`${label}: recorded the answer to call ${call.outcome.value.attempt} of ${calls.length}`);
      if (calls.length > 1) {
        const first = calls[0]!.at;
        const last = calls.at(-1)!.at;
        const reason = retriedAfterInterruption.has(key)
          ? outcomeUnknownReason
          : kills.some((kill) => kill.service === 'tool-worker' && kill.at >= first && kill.at <= last)
            ? killedMidCallReason
            : 'unexplained';
        if (reason === 'unexplained') fail(`${label}: the tool server was called ${calls.length} times with ${key} and no interruption explains it`);
        repeated.push({ key, calls: calls.length, reason });
      }
    }
  }
  for (const key of toolCalls.keys()) if (!recordedHttpKeys.has(key)) violations.push(`the tool server was called with ${key}, which no run recorded`);

  const byService: Record<string, number> = {};
  for (const kill of kills) byService[kill.service] = (byService[kill.service] ?? 0) + 1;
  const repeatsByReason: Record<string, number> = {};
  for (const entry of repeated) repeatsByReason[entry.reason] = (repeatsByReason[entry.reason] ?? 0) + 1;
  const approvals = { approved: 0, denied: 0, answers: approver.answers };
  for (const approved of approver.decided.values()) approvals[approved ? 'approved' : 'denied'] += 1;
  const errorCodes: Record<string, number> = {};
  for (const follower of followers) for (const [code, count] of Object.entries(follower.stats.errorCodes)) errorCodes[code] = (errorCodes[code] ?? 0) + count;
  return {
    statuses,
    kills: { total: kills.length, byService },
    httpCalls: { keys: toolCalls.size, calls: [...toolCalls.values()].reduce((sum, calls) => sum + calls.length, 0), repeated, repeatsByReason },
    approvals,
    modelStepsRetried,
    followers: {
      reconnects: followers.reduce((sum, follower) => sum + follower.stats.reconnects, 0),
      resubscribesAfterError: followers.reduce((sum, follower) => sum + follower.stats.resubscribesAfterError, 0),
      resubscribesAfterSilence: followers.reduce((sum, follower) => sum + follower.stats.resubscribesAfterSilence, 0),
      errorCodes,
    },
    gatewayRetries: pool.retries,
    violations,
  };
}

/** One readable line for a report. */
export function summarize(report: ChaosReport): string {
  const kills = Object.entries(report.kills.byService).map(([service, count]) => `${service} ${count}`).join(', ');
  const repeats = Object.entries(report.httpCalls.repeatsByReason).map(([reason, count]) => `${count} × ${reason}`).join('; ') || 'none';
  const statuses = Object.entries(report.statuses).map(([status, count]) => `${count} ${status}`).join(', ');
  return (
    `chaos seed ${report.seed}: ${report.runs} runs (${statuses}) in ${(report.wallTimeMs / 1_000).toFixed(1)} s; ` +
    `${report.kills.total} kills (${kills}); ${report.httpCalls.calls} HTTP calls for ${report.httpCalls.keys} keys, repeated: ${repeats}; ` +
    `${report.approvals.approved} approved, ${report.approvals.denied} denied; ${report.modelStepsRetried} model steps retried; ` +
    `${report.followers.reconnects} follower reconnects, ${report.followers.resubscribesAfterSilence} silent ends, ${report.followers.resubscribesAfterError} error frames; ` +
    `longest stall ${(report.longestStall.ms / 1_000).toFixed(1)} s; ${report.violations.length === 0 ? 'no violations' : `${report.violations.length} VIOLATIONS`}`
  );
}
