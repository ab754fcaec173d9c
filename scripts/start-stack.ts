/**
 * `npm start`: the whole stack on one machine, no Docker (DESIGN §10).
 *
 * Starts NATS and a MongoDB-compatible server (unless `NATS_URL` / `MONGO_URL` name running
 * ones), runs the four services as separate processes under a small dev supervisor (a service
 * that dies is restarted after 1 s), creates the demo agent and prints how to use it.
 * Ctrl-C or SIGTERM stops the services (SIGTERM, 15 s grace, then SIGKILL), then the servers.
 * A second Ctrl-C kills everything at once.
 *
 * Service logs (pino JSON lines) are shown through pino-pretty on a terminal (or with
 * `LOG_FORMAT=pretty`); with `--raw-logs`, `LOG_FORMAT=json`, or when stdout is not a terminal
 * (piped to a file or a log collector) they are passed on as JSON, one line each. Every line is
 * prefixed with the service name.
 *
 *   node scripts/start-stack.ts [--raw-logs]
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { parseArgs, styleText } from 'node:util';
import { prettyFactory } from 'pino-pretty';
import { serviceEnvironment, serviceNodeOptions, serviceProcessVariables, type ServiceName } from '@abide/shared';
import { buildConsole } from '../console/build.ts';
import { abidePaths, errorMessage, startServersFromEnv, type StartedServers } from './lib/servers.ts';
import { onStopSignals } from './lib/stop-signals.ts';

type Color = 'cyan' | 'magenta' | 'yellow' | 'green' | 'blue' | 'red' | 'gray';

interface ServiceSpec {
  name: ServiceName;
  color: Color;
  env: Record<string, string>;
}

const serviceGraceMs = 15_000;
const restartDelayMs = 1_000;
const gatewayReadyTimeoutMs = 180_000;
const nameWidth = 12;

const { values: flags } = parseArgs({ options: { 'raw-logs': { type: 'boolean', default: false } }, strict: true });
/** JSON as the services write it, for a machine or a `grep`; pretty lines for a person at a terminal. */
if (process.env.LOG_FORMAT && !['json', 'pretty'].includes(process.env.LOG_FORMAT)) throw new Error(`LOG_FORMAT must be json or pretty, got "${process.env.LOG_FORMAT}"`);
const rawLogs = flags['raw-logs'] || (process.env.LOG_FORMAT ? process.env.LOG_FORMAT === 'json' : !process.stdout.isTTY);

const gatewayPort = Number(process.env.GATEWAY_PORT || 8080);
if (!Number.isInteger(gatewayPort) || gatewayPort <= 0 || gatewayPort > 65_535) throw new Error(`GATEWAY_PORT must be a port number, got "${process.env.GATEWAY_PORT}"`);
const gatewayUrl = `http://127.0.0.1:${gatewayPort}`;
const apiKeysGiven = Boolean(process.env.ABIDE_API_KEYS || process.env.ABIDE_API_KEYS_FILE);
const apiKeys = apiKeysGiven ? process.env.ABIDE_API_KEYS : 'demo-key-change-me-0001:demo';

/** Everything the signal handlers need; built in main(). */
interface Stack {
  shuttingDown: boolean;
  servers: StartedServers | undefined;
  services: SupervisedService[];
}

function say(message: string): void {
  process.stdout.write(`${prefix('stack', 'blue')} ${message}\n`);
}

function prefix(name: string, color: Color): string {
  return styleText(color, `[${name.padEnd(nameWidth)}]`);
}

// ---------------------------------------------------------------------------------------------
// Dev supervisor

interface SupervisedService {
  readonly name: string;
  start(): void;
  /** SIGTERM, then SIGKILL after `graceMs`; resolves when the process is gone. */
  stop(graceMs: number): Promise<void>;
  kill(): void;
}

function superviseService(spec: ServiceSpec, stack: Stack): SupervisedService {
  const mainPath = join(abidePaths.repoRoot, 'services', spec.name, 'src', 'main.ts');
  let child: ChildProcess | undefined;
  let exited: Promise<void> = Promise.resolve();
  let restartTimer: NodeJS.Timeout | undefined;

  function start(): void {
    restartTimer = undefined;
    // The service's heap flags, as the harness and the images give them (shared/src/node-options.ts).
    const spawned = spawn(process.execPath, [...serviceNodeOptions[spec.name], mainPath], {
      cwd: abidePaths.repoRoot,
      env: serviceProcessEnvironment(spec),
      stdio: ['ignore', 'pipe', 'pipe'],
      // Its own process group: a terminal's Ctrl-C reaches only this supervisor, which then stops the services before the servers.
      detached: true,
    });
    child = spawned;
    for (const stream of [spawned.stdout, spawned.stderr]) {
      createInterface({ input: stream, crlfDelay: Infinity }).on('line', (line) => {
        const shown = rawLogs ? line : formatLogLine(line);
        process.stdout.write(`${shown.split('\n').map((part) => `${prefix(spec.name, spec.color)} ${part}`).join('\n')}\n`);
      });
    }
    exited = new Promise((resolvePromise) => {
      spawned.once('error', (error) => {
        say(`${spec.name}: could not start: ${error.message}`);
        resolvePromise();
      });
      spawned.once('exit', (code, signal) => {
        resolvePromise();
        if (stack.shuttingDown) return;
        say(styleText('red', `${spec.name} exited unexpectedly (${signal ?? `exit code ${code}`}); restarting it in ${restartDelayMs / 1000} s`));
        restartTimer = setTimeout(start, restartDelayMs);
      });
    });
  }

  return {
    name: spec.name,
    start,
    async stop(graceMs) {
      clearTimeout(restartTimer);
      const current = child;
      if (!current || current.exitCode !== null || current.signalCode !== null) return;
      current.kill('SIGTERM');
      const finished = await Promise.race([exited.then(() => true), sleep(graceMs).then(() => false)]);
      if (finished) return;
      say(`${spec.name} did not stop within ${graceMs / 1000} s; killing it`);
      current.kill('SIGKILL');
      await exited;
    },
    kill() {
      clearTimeout(restartTimer);
      child?.kill('SIGKILL');
    },
  };
}

/** Variables every process may need to run at all; nothing of them configures Abide. */
const processBasics = ['PATH', 'HOME', 'TMPDIR', 'LANG', 'LC_ALL', 'TZ'];

/**
 * What a service process gets: the basics, the variables its configuration names (taken from
 * this shell) and the stack's own values; nothing else of this shell's environment (issue 8: a
 * variable a service does not read is one an agent could never be tricked into reaching).
 */
function serviceProcessEnvironment(spec: ServiceSpec): Record<string, string> {
  const names = new Set([...processBasics, ...serviceEnvironment[spec.name].variables]);
  const inherited = Object.entries(process.env).filter((entry): entry is [string, string] => names.has(entry[0]) && entry[1] !== undefined);
  // Node's compile cache and glibc's arena limit, as the harness and the images set them (shared/src/node-options.ts).
  return { ...Object.fromEntries(inherited), ...serviceProcessVariables(abidePaths.compileCacheDir), ...spec.env };
}

/**
 * The demo tenant's secrets, laid out as `TENANT_SECRETS_DIR/<tenantId>/<NAME>`: `LLM_API_KEY`
 * becomes the `demo-llm` agent's key (its `apiKeyEnv`) for the tenant of the demo API key.
 */
const tenantSecretsDir = join(abidePaths.dataRoot, 'secrets');
function writeDemoSecrets(tenantId: string): void {
  const key = process.env.LLM_API_KEY;
  if (!key) return;
  const dir = join(tenantSecretsDir, tenantId);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  writeFileSync(join(dir, 'LLM_API_KEY'), key, { mode: 0o600 });
  chmodSync(join(dir, 'LLM_API_KEY'), 0o600);
}

/** `LLM_EGRESS_ALLOW` for the demo model server: its host and port (an address entry, so a local server is allowed too). */
function demoLlmEgress(): string | undefined {
  if (!process.env.LLM_BASE_URL) return undefined;
  const url = new URL(process.env.LLM_BASE_URL);
  const port = url.port || (url.protocol === 'https:' ? '443' : '80');
  // `localhost` resolves to loopback addresses, which only an address entry allows.
  const loopback = url.hostname === 'localhost' ? [`127.0.0.1:${port}`, `[::1]:${port}`] : [];
  return [`${url.hostname}:${port}`, ...loopback].join(',');
}

/**
 * A pino JSON line through pino-pretty (`12:00:00.123 INFO: message` and the line's fields, an
 * error with its stack); a line that is not JSON comes back as it is.
 */
const prettyLine = prettyFactory({ colorize: Boolean(process.stdout.isTTY), translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname,service', singleLine: true });
function formatLogLine(line: string): string {
  return prettyLine(line).trimEnd();
}

// ---------------------------------------------------------------------------------------------
// Demo agents

const demoTools = [
  { name: 'current_time', description: 'The current time', kind: 'builtin', inputSchema: { type: 'object', properties: {}, additionalProperties: false } },
  {
    name: 'echo',
    description: 'Returns its input',
    kind: 'builtin',
    inputSchema: { type: 'object', properties: { message: { type: 'string' } }, required: ['message'] },
  },
];

const demoAgent = {
  system: 'You are the Abide demo agent.',
  model: {
    provider: 'scripted',
    steps: [
      { text: 'Let me check the time.', toolCalls: [{ toolName: 'current_time', args: {} }] },
      { text: 'Echoing that back.', toolCalls: [{ toolName: 'echo', args: { message: 'hello from the demo' } }] },
      { text: 'Done: the time was fetched and the message echoed.' },
    ],
    chunkSize: 8,
    delayMs: 30,
  },
  tools: demoTools,
  maxSteps: 10,
};

/** The first entry of `ABIDE_API_KEYS` / `ABIDE_API_KEYS_FILE` (`key:tenant` entries), as the gateway reads them. */
function demoApiKeyEntry(): { key: string; tenantId: string } | undefined {
  const fileText = process.env.ABIDE_API_KEYS_FILE && existsSync(process.env.ABIDE_API_KEYS_FILE) ? readFileSync(process.env.ABIDE_API_KEYS_FILE, 'utf8') : '';
  const entries = `${apiKeys ?? ''}\n${fileText}`.split(/[,\n]/).map((entry) => entry.trim()).filter((entry) => entry && !entry.startsWith('#'));
  const first = entries[0];
  const separator = first?.lastIndexOf(':') ?? -1;
  return first && separator > 0 ? { key: first.slice(0, separator), tenantId: first.slice(separator + 1) } : undefined;
}

async function waitForGateway(stack: Stack): Promise<boolean> {
  const deadline = Date.now() + gatewayReadyTimeoutMs;
  let lastReport = Date.now();
  while (!stack.shuttingDown && Date.now() < deadline) {
    const response = await fetch(`${gatewayUrl}/readyz`, { signal: AbortSignal.timeout(2_000) }).catch(() => undefined); // not listening yet
    if (response?.status === 200) return true;
    if (Date.now() - lastReport > 15_000) {
      say(`waiting for ${gatewayUrl}/readyz (${response ? `HTTP ${response.status}` : 'not listening yet'})`);
      lastReport = Date.now();
    }
    await sleep(1_000);
  }
  return false;
}

async function putAgent(apiKey: string, agentId: string, body: unknown): Promise<void> {
  const response = await fetch(`${gatewayUrl}/v1/agents/${agentId}`, {
    method: 'PUT',
    headers: { authorization: `Bearer ${apiKey}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(10_000),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`PUT /v1/agents/${agentId} answered ${response.status}: ${text.slice(0, 1_000)}`);
  const version = (JSON.parse(text) as { version?: unknown }).version;
  say(`agent "${agentId}" ready (version ${String(version)})`);
}

function printUsage(apiKey: string, servers: StartedServers): void {
  const auth = `-H 'Authorization: Bearer ${apiKey}'`;
  const lines = [
    '',
    styleText('bold', 'Abide is up.'),
    `  API      ${gatewayUrl}   (API key ${apiKey}${apiKeysGiven ? '' : ', tenant demo'})`,
    `  Console  ${gatewayUrl}/console   (sign in with the API key)`,
    `  NATS     ${servers.natsUrl}`,
    `  MongoDB  ${servers.mongoUrl}`,
    '',
    'Start a run with the demo agent:',
    `  curl -s ${gatewayUrl}/v1/runs ${auth} -H 'Content-Type: application/json' -d '{"agentId":"demo","input":"What time is it?"}'`,
    'Watch its events (Server-Sent Events; RUN_ID from the answer above):',
    `  curl -N ${gatewayUrl}/v1/runs/RUN_ID/events ${auth}`,
    'Read its state:',
    `  curl -s ${gatewayUrl}/v1/runs/RUN_ID ${auth}`,
    'All at once:',
    `  RUN_ID=$(curl -s ${gatewayUrl}/v1/runs ${auth} -H 'Content-Type: application/json' -d '{"agentId":"demo","input":"What time is it?"}' | sed -E 's/.*"runId":"([^"]+)".*/\\1/') && curl -N ${gatewayUrl}/v1/runs/$RUN_ID/events ${auth}`,
    'Over WebSocket:',
    `  npx wscat -c 'ws://127.0.0.1:${gatewayPort}/v1/ws' -H 'authorization: Bearer ${apiKey}'`,
    `  > {"type":"run.create","requestId":"r1","agentId":"demo","input":"hi"}`,
    'With the CLI:',
    `  ABIDE_URL=${gatewayUrl} ABIDE_API_KEY=${apiKey} npx abide runs create --agent demo --input "What time is it?" --follow`,
    '',
    'Ctrl-C stops everything.',
    '',
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
}

// ---------------------------------------------------------------------------------------------
// Start and stop

function killEverything(stack: Stack, signal: NodeJS.Signals): never {
  say(`${signal} again: killing everything`);
  for (const service of stack.services) service.kill();
  stack.servers?.nats?.kill('SIGKILL');
  stack.servers?.mongo?.kill('SIGKILL');
  stack.servers?.postgres?.kill('SIGKILL');
  process.exit(1);
}

async function shutDown(stack: Stack, signal: NodeJS.Signals): Promise<void> {
  // Already stopping after a failed start: the signal asks to stop waiting.
  if (stack.shuttingDown) killEverything(stack, signal);
  stack.shuttingDown = true;
  // Servers still starting are not in `stack` yet: the servers library SIGTERMs them when this process exits.
  say(`${signal}: stopping the services (up to ${serviceGraceMs / 1000} s; Ctrl-C again to kill)`);
  await stopEverything(stack);
  say('stopped');
  process.exit(0);
}

async function stopEverything(stack: Stack): Promise<void> {
  await Promise.all(stack.services.map((service) => service.stop(serviceGraceMs)));
  if (!stack.servers) return;
  say('stopping the servers');
  await stack.servers.stop();
}

async function main(stack: Stack): Promise<void> {
  onStopSignals({
    stop(signal) {
      shutDown(stack, signal).catch((error: unknown) => {
        say(`shutting down failed: ${errorMessage(error)}`);
        process.exit(1);
      });
    },
    kill: (signal) => killEverything(stack, signal),
  });

  const names = ['gateway', 'orchestrator', 'llm-worker', 'tool-worker'] as const;
  const missing = names.filter((name) => !existsSync(join(abidePaths.repoRoot, 'services', name, 'src', 'main.ts')));
  if (missing.length > 0) throw new Error(`missing ${missing.map((name) => `services/${name}/src/main.ts`).join(', ')}`);

  // The console is built from its sources (not committed): esbuild takes well under a second.
  await buildConsole();
  say('console built into console/dist/');
  say('starting NATS and MongoDB (the first run builds them with Go, which takes a few minutes)');
  const servers = await startServersFromEnv(process.env, {
    natsPort: 4222,
    mongoPort: 27017,
    detached: true,
    log: (message) => say(message),
    onUnexpectedExit: (name, info) => say(styleText('red', `${name} server exited unexpectedly (${info.signal ?? `exit code ${info.code}`}); see its log in .abide/data/${name}/`)),
  });
  stack.servers = servers;
  say(`NATS ${servers.natsUrl}, MongoDB ${servers.mongoUrl} (store: ${servers.store})`);

  const demoEntry = demoApiKeyEntry();
  if (demoEntry) writeDemoSecrets(demoEntry.tenantId);
  const nats = { NATS_URL: servers.natsUrl };
  const mongo = { MONGO_URL: servers.mongoUrl };
  // Each service gets only what it reads: the API keys and MongoDB stay away from the workers.
  const workerSecrets = { TENANT_SECRETS_DIR: process.env.TENANT_SECRETS_DIR || tenantSecretsDir };
  const llmEgress = process.env.LLM_EGRESS_ALLOW || demoLlmEgress();
  const specs: ServiceSpec[] = [
    { name: 'gateway', color: 'cyan', env: { ...nats, ...mongo, GATEWAY_PORT: String(gatewayPort), ...(apiKeys !== undefined ? { ABIDE_API_KEYS: apiKeys } : {}) } },
    { name: 'orchestrator', color: 'magenta', env: { ...nats, ...mongo, HEALTH_PORT: '8081' } },
    { name: 'llm-worker', color: 'yellow', env: { ...nats, ...workerSecrets, ...(llmEgress ? { LLM_EGRESS_ALLOW: llmEgress } : {}), HEALTH_PORT: '8082' } },
    { name: 'tool-worker', color: 'green', env: { ...nats, ...workerSecrets, HEALTH_PORT: '8083' } },
  ];
  for (const spec of specs) {
    const service = superviseService(spec, stack);
    stack.services.push(service);
    service.start();
  }

  if (!(await waitForGateway(stack))) {
    if (!stack.shuttingDown) say(styleText('red', `the gateway was not ready within ${gatewayReadyTimeoutMs / 1000} s; the demo agent was not created`));
    return;
  }
  const apiKey = demoEntry?.key;
  if (!apiKey) {
    say('no API key found in ABIDE_API_KEYS / ABIDE_API_KEYS_FILE; the demo agent was not created');
    return;
  }
  try {
    await putAgent(apiKey, 'demo', demoAgent);
    if (process.env.LLM_BASE_URL) {
      const model = { provider: 'openai-compatible', baseURL: process.env.LLM_BASE_URL, model: process.env.LLM_MODEL || 'gpt-4o-mini', ...(process.env.LLM_API_KEY ? { apiKeyEnv: 'LLM_API_KEY' } : {}) };
      await putAgent(apiKey, 'demo-llm', { ...demoAgent, model });
    }
  } catch (error) {
    // The stack stays up for debugging; the user sees why the demo agent is missing.
    say(styleText('red', `creating the demo agent failed: ${errorMessage(error)}`));
    return;
  }
  printUsage(apiKey, servers);
}

const stack: Stack = { shuttingDown: false, servers: undefined, services: [] };
main(stack).catch(async (error: unknown) => {
  say(styleText('red', errorMessage(error)));
  stack.shuttingDown = true;
  await stopEverything(stack);
  process.exit(1);
});
