import { collections } from '@abide/shared';
import WebSocket from 'ws';
import { Stack, testKeys } from '../harness/stack.ts';
import { runFrameFuzz, type FrameFuzzReport } from './frame-fuzzer.ts';
import { runSchemathesis, type SchemathesisResult } from './schemathesis.ts';

export type FuzzBudget = {
  /** schemathesis `--max-examples` (per operation and phase). */
  maxExamples: number;
  /** WebSocket frames sent. */
  frames: number;
  seed: number;
  log?: (line: string) => void;
};

export type FuzzReport = {
  schemathesis: Pick<SchemathesisResult, 'exitCode' | 'casesGenerated' | 'failures'>;
  frames: FrameFuzzReport;
  /** The gateway's `http_requests_total` during the fuzzing (after set-up), summed by status. */
  httpStatuses: Record<string, number>;
  /** Service processes that exited during the run (must be empty). */
  deadProcesses: string[];
  /** `conversation_locks` documents whose run does not exist (must be empty). */
  orphanLocks: unknown[];
  /** WebSocket upgrades of oddly spelled paths without a key: path → HTTP status (finding 13; must all be 401). */
  oddPathUpgrades: Record<string, number | 'open'>;
  /** The same upgrade of `/%761/ws` with a key (the decoded route: must be `open`). */
  oddPathUpgradeWithKey: number | 'open';
};

/** Paths the router decodes or does not match, each of which must need a key (finding 13). */
export const oddWebSocketPaths = ['/%761/ws', '/%76%31/ws', '/V1/ws', '//v1/ws', '/v1/ws.', '/v1/ws/', '/v1//ws'];

/** Opens a real WebSocket to `url`: `open`, or the status of the refused upgrade. */
function upgrade(url: string, headers: Record<string, string>): Promise<number | 'open'> {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(url, { headers });
    socket.once('open', () => {
      socket.terminate();
      resolve('open');
    });
    socket.once('unexpected-response', (_request, response) => {
      resolve(response.statusCode ?? 0);
      socket.terminate();
    });
    socket.once('error', (error) => reject(error));
  });
}

const keys = testKeys;

/**
 * Tenant b's agent suspends on an approval (so approval frames meet a pending call); tenant a's
 * (the key schemathesis uses) completes, so the SSE streams schemathesis opens on listed runs end.
 */
const agentDefinition = (needsApproval: boolean) => ({
  model: { provider: 'scripted', steps: [{ text: 'Echoing.', toolCalls: [{ toolName: 'echo', args: { text: 'hi' } }] }, { text: 'Done.' }] },
  tools: [{ name: 'echo', kind: 'builtin', needsApproval, inputSchema: { type: 'object', properties: { text: { type: 'string' } } } }],
});

/** Sums `abide_http_requests_total{…,status="…"} n` by status. */
export function statusCounts(metrics: string): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const match of metrics.matchAll(/^abide_http_requests_total\{[^}]*status="(\d+)"[^}]*\} (\d+(?:\.\d+)?)$/gm)) {
    counts[match[1]!] = (counts[match[1]!] ?? 0) + Number(match[2]);
  }
  return counts;
}

/**
 * Issue 8's fuzzing: the whole stack (real processes), agents and runs for two tenants, then
 * schemathesis against `/openapi.json` and the WebSocket frame fuzzer, each within `budget`; then
 * what must hold afterwards: no 5xx, every process alive, no conversation lock without its run.
 */
export async function runFuzz(budget: FuzzBudget): Promise<FuzzReport> {
  const log = budget.log ?? (() => {});
  const stack = await Stack.start();
  try {
    const runIds: string[] = [];
    for (const key of Object.values(keys)) {
      const put = await stack.api(key, 'PUT', '/v1/agents/helper', agentDefinition(key === keys.b));
      if (put.status !== 200) throw new Error(`agent setup failed: ${put.status} ${JSON.stringify(put.body)}`);
      for (let index = 0; index < 2; index += 1) {
        const run = await stack.api(key, 'POST', '/v1/runs', { agentId: 'helper', input: `setup ${index}` });
        if (run.status !== 201) throw new Error(`run setup failed: ${run.status} ${JSON.stringify(run.body)}`);
        runIds.push(run.body.runId);
      }
    }

    // A baseline: the harness's readiness polls may have met `/readyz` 503 while the stack started.
    const before = statusCounts(String((await stack.api(undefined, 'GET', '/metrics')).body));
    const wsBase = stack.gatewayUrl.replace('http', 'ws');
    const oddPathUpgrades: Record<string, number | 'open'> = {};
    for (const path of oddWebSocketPaths) oddPathUpgrades[path] = await upgrade(`${wsBase}${path}`, {});
    const oddPathUpgradeWithKey = await upgrade(`${wsBase}/%761/ws`, { authorization: `Bearer ${keys.a}` });
    log(`odd WebSocket paths without a key: ${JSON.stringify(oddPathUpgrades)}; /%761/ws with a key: ${oddPathUpgradeWithKey}`);

    log(`schemathesis: --max-examples ${budget.maxExamples}, seed ${budget.seed}`);
    // One worker: a seed then replays the same run, and Python 3.11.7 (seen here) raised
    // `SystemError: AST constructor recursion depth mismatch` from hypothesis's `ast.parse` with two.
    const schemathesis = await runSchemathesis({ baseUrl: stack.gatewayUrl, apiKey: keys.a, maxExamples: budget.maxExamples, seed: budget.seed, workers: 1 });
    log(`schemathesis: ${schemathesis.casesGenerated} cases generated, exit ${schemathesis.exitCode}`);
    if (schemathesis.exitCode !== 0) {
      const failuresAt = schemathesis.output.search(/=+ (FAILURES|ERRORS) =+/);
      log(schemathesis.output.slice(failuresAt >= 0 ? failuresAt : -20_000).slice(0, 60_000));
    }

    log(`frame fuzzer: ${budget.frames} frames, seed ${budget.seed}`);
    const frames = await runFrameFuzz({
      url: `${stack.gatewayUrl.replace('http', 'ws')}/v1/ws`,
      apiKeys: [keys.a, keys.b, keys.a, keys.b],
      runIds,
      agentId: 'helper',
      frames: budget.frames,
      seed: budget.seed,
    });
    log(`frame fuzzer: ${frames.sent} frames sent; by kind ${JSON.stringify(frames.byKind)}`);
    log(`frame fuzzer: error frames for refused frames by code ${JSON.stringify(frames.badFrameErrors)}; replies to valid frames ${JSON.stringify(frames.validFrameReplies)}`);

    const metrics = await stack.api(undefined, 'GET', '/metrics');
    const httpStatuses = Object.fromEntries(
      Object.entries(statusCounts(String(metrics.body)))
        .map(([status, count]) => [status, count - (before[status] ?? 0)] as const)
        .filter(([, count]) => count > 0),
    );
    log(`gateway http_requests_total by status: ${JSON.stringify(httpStatuses)}`);
    const deadProcesses = stack.services.filter((service) => !service.running).map((service) => `${service.name}#${service.replica}`);
    const locks = await stack.db.collection<{ _id: string; runId: string }>(collections.conversationLocks).find().toArray();
    const orphanLocks = [];
    for (const lock of locks) {
      const transition = await stack.db.collection<{ _id: string }>(collections.runTransitions).findOne({ _id: `${lock.runId}:1` });
      if (!transition) orphanLocks.push(lock);
    }
    log(`conversation locks: ${locks.length}, without a run: ${orphanLocks.length}`);
    if (deadProcesses.length > 0 || (httpStatuses['500'] ?? 0) > 0) log(stack.logs(60));
    return {
      schemathesis: { exitCode: schemathesis.exitCode, casesGenerated: schemathesis.casesGenerated, failures: schemathesis.failures },
      frames,
      httpStatuses,
      deadProcesses,
      orphanLocks,
      oddPathUpgrades,
      oddPathUpgradeWithKey,
    };
  } finally {
    await stack.stop();
  }
}

/** Statuses of 500 and above in `counts`. */
export const serverErrors = (counts: Record<string, number>) => Object.fromEntries(Object.entries(counts).filter(([status]) => Number(status) >= 500));
