/**
 * Local NATS and MongoDB(-compatible) servers for the dev stack and the integration tests.
 *
 * Binaries come from the repo's git-ignored cache (`.abide/bin/`), from PATH, or are built with
 * the Go toolchain on first use (DESIGN §10). Servers listen on 127.0.0.1 only, keep their data
 * and a log file in a data directory, and are stopped with SIGTERM, then SIGKILL after 5 s.
 * Only Node built-ins are used here: this file runs before `npm install` is trusted.
 */
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { accessSync, statSync } from 'node:fs';
import { access, constants, cp, mkdir, mkdtemp, open, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { createConnection, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { basename, delimiter, join, resolve } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

export type Log = (message: string) => void;

const defaultLog: Log = (message) => process.stderr.write(`[servers] ${message}\n`);

/** Where things live in this checkout. */
export const abidePaths = {
  repoRoot: resolve(import.meta.dirname, '../..'),
  binDir: resolve(import.meta.dirname, '../../.abide/bin'),
  dataRoot: resolve(import.meta.dirname, '../../.abide/data'),
} as const;

export const natsServerModule = { path: 'github.com/nats-io/nats-server/v2', version: 'v2.15.2' } as const;
export const ferretdbModule = { path: 'github.com/FerretDB/FerretDB', version: 'v1.24.2' } as const;

const minimumNatsVersion: SemanticVersion = [2, 10, 0];
const stopGraceMs = 5_000;
const installLockWaitMs = 30 * 60_000;

type SemanticVersion = readonly [major: number, minor: number, patch: number];

// ---------------------------------------------------------------------------------------------
// Binaries

/**
 * Returns a nats-server binary, installing one if needed. Order: the repo cache, `nats-server`
 * on PATH if ≥ 2.10, a `go install` into the cache, any `nats-server` on PATH, Debian's package.
 * Safe to call from several processes at once (one builds, the others wait for it).
 */
export async function ensureNatsServerBinary(log: Log = defaultLog): Promise<string> {
  const cached = join(abidePaths.binDir, 'nats-server');
  if (await binaryRuns(cached)) return cached;

  const onPath = findOnPath('nats-server');
  const pathVersion = onPath ? await natsServerVersion(onPath) : undefined;
  if (onPath && pathVersion && compareVersions(pathVersion, minimumNatsVersion) >= 0) return onPath;

  let buildError: unknown;
  if (findOnPath('go')) {
    try {
      return await installOnce('nats-server', log, async (scratchDir) => {
        log(`building nats-server ${natsServerModule.version} with Go into ${abidePaths.binDir} (a few minutes on first use)`);
        const workDir = await mkdtemp(join(tmpdir(), 'abide-nats-build-'));
        try {
          await runGo(['install', `${natsServerModule.path}@${natsServerModule.version}`], { cwd: workDir, env: { GOBIN: scratchDir } }, log);
        } finally {
          await rm(workDir, { recursive: true, force: true });
        }
        return join(scratchDir, 'nats-server');
      });
    } catch (error) {
      // Fall through to the development-only fallbacks below, and report this error if they fail too.
      buildError = error;
      log(`building nats-server failed: ${errorMessage(error)}`);
    }
  }

  const fallback = onPath ?? (await installDebianNatsServer(log));
  if (fallback) {
    const version = await natsServerVersion(fallback);
    log('!'.repeat(100));
    log(`WARNING: using ${fallback} (version ${version?.join('.') ?? 'unknown'}). nats-server older than 2.10 is for`);
    log('WARNING: development only: no `sync_interval`, no multiple filter subjects, per-message TTL ignored,');
    log('WARNING: and it predates the Jepsen data-loss fixes. Install Go ≥ 1.25 (https://go.dev/dl/) to build 2.15.');
    log('!'.repeat(100));
    return fallback;
  }
  if (buildError) throw new Error(`could not install nats-server: ${errorMessage(buildError)}`, { cause: buildError });
  throw new Error(
    'no nats-server available: install Go ≥ 1.25 (https://go.dev/dl/, or `apt-get install golang-go` if recent enough) so that ' +
      `${natsServerModule.path}@${natsServerModule.version} can be built, put nats-server ≥ 2.10 on PATH, or set NATS_URL to a running server`,
  );
}

/**
 * Returns a MongoDB-compatible server: `mongod` on PATH, else FerretDB 1.24.2 from the repo
 * cache, built with Go on first use. Safe to call from several processes at once.
 */
export async function ensureMongoServerBinary(log: Log = defaultLog): Promise<{ kind: 'mongod' | 'ferretdb'; path: string }> {
  const mongod = findOnPath('mongod');
  if (mongod) return { kind: 'mongod', path: mongod };

  const cached = join(abidePaths.binDir, 'ferretdb');
  if (await binaryRuns(cached)) return { kind: 'ferretdb', path: cached };
  if (await exists(cached)) log(`${cached} exists but does not run (see \`${cached} --version\`); rebuilding it`);

  if (!findOnPath('go')) {
    throw new Error(
      'no MongoDB-compatible server available: install Go ≥ 1.24 (https://go.dev/dl/) so that FerretDB ' +
        `${ferretdbModule.version} can be built, put mongod (MongoDB 7+) on PATH, or set MONGO_URL to a running server`,
    );
  }
  const path = await installOnce('ferretdb', log, async (scratchDir) => {
    log(`building FerretDB ${ferretdbModule.version} with Go into ${abidePaths.binDir} (a few minutes on first use)`);
    const workDir = await mkdtemp(join(tmpdir(), 'abide-ferretdb-build-'));
    try {
      await buildFerretdb(workDir, join(scratchDir, 'ferretdb'), log);
    } finally {
      await rm(workDir, { recursive: true, force: true });
    }
    return join(scratchDir, 'ferretdb');
  });
  return { kind: 'ferretdb', path };
}

/*
 * FerretDB embeds its version from build/version/version.txt, a file its release tooling
 * generates and the module zip lacks. A binary whose main module is FerretDB panics at start-up
 * without it, and `go install`/`go build` of the tool record FerretDB as the main module. So the
 * module is resolved the usual way (a throwaway module, `go get -tool …@v1.24.2`), copied, given
 * its version.txt, and built through a `replace` onto the copy.
 */
async function buildFerretdb(workDir: string, outputPath: string, log: Log): Promise<void> {
  const goOptions = { cwd: workDir, env: {} };
  await runGo(['mod', 'init', 'tools'], goOptions, log);
  await runGo(['get', '-tool', `${ferretdbModule.path}/cmd/ferretdb@${ferretdbModule.version}`], goOptions, log);
  const moduleDir = (await runGo(['list', '-m', '-f', '{{.Dir}}', ferretdbModule.path], goOptions, log)).trim();
  const sourceCopy = join(workDir, 'ferretdb-src');
  await cp(moduleDir, sourceCopy, { recursive: true });
  await makeWritable(sourceCopy);
  await writeFile(join(sourceCopy, 'build/version/version.txt'), `${ferretdbModule.version}\n`);
  await runGo(['mod', 'edit', `-replace=${ferretdbModule.path}=./ferretdb-src`], goOptions, log);
  await runGo(['build', '-buildvcs=false', '-o', outputPath, `${ferretdbModule.path}/cmd/ferretdb`], goOptions, log);
}

/** The module cache is read-only; the copy must accept a new file. */
async function makeWritable(directory: string): Promise<void> {
  await execFileAsync('chmod', ['-R', 'u+w', directory]);
}

/**
 * Builds `name` into the cache once across processes: a lock directory elects one builder, the
 * build goes to a scratch directory beside the cache and is renamed into place (atomic), and the
 * others wait for the binary. A lock whose owner died is taken over.
 */
async function installOnce(name: string, log: Log, build: (scratchDir: string) => Promise<string>): Promise<string> {
  const target = join(abidePaths.binDir, name);
  const lockDir = join(abidePaths.binDir, `.${name}.lock`);
  await mkdir(abidePaths.binDir, { recursive: true });
  const deadline = Date.now() + installLockWaitMs;
  let toldWaiting = false;
  for (;;) {
    if (await binaryRuns(target)) return target;
    if (await tryLock(lockDir)) {
      const scratchDir = join(abidePaths.binDir, `.${name}.build-${process.pid}-${randomUUID().slice(0, 8)}`);
      try {
        if (await binaryRuns(target)) return target;
        await mkdir(scratchDir, { recursive: true });
        const started = Date.now();
        const built = await build(scratchDir);
        if (!(await binaryRuns(built))) throw new Error(`the freshly built ${built} does not run (\`${built} --version\` failed)`);
        await rename(built, target);
        log(`installed ${target} in ${((Date.now() - started) / 1000).toFixed(1)} s`);
        return target;
      } finally {
        await rm(scratchDir, { recursive: true, force: true });
        await rm(lockDir, { recursive: true, force: true });
      }
    }
    if (!toldWaiting) log(`another process is building ${name} (lock ${lockDir}); waiting for it`);
    toldWaiting = true;
    if (Date.now() > deadline) throw new Error(`timed out waiting for another process to build ${target}; remove ${lockDir} if it is stale`);
    await removeStaleLock(lockDir);
    await sleep(1_000);
  }
}

async function tryLock(lockDir: string): Promise<boolean> {
  try {
    await mkdir(lockDir);
  } catch (error) {
    if (isErrorCode(error, 'EEXIST')) return false;
    throw error;
  }
  await writeFile(join(lockDir, 'owner'), `${process.pid}\n`);
  return true;
}

async function removeStaleLock(lockDir: string): Promise<void> {
  const owner = await readFile(join(lockDir, 'owner'), 'utf8').catch(() => undefined); // absent: just created, or gone
  const ownerPid = Number.parseInt(owner ?? '', 10);
  if (Number.isInteger(ownerPid) && processIsAlive(ownerPid)) return;
  if (owner === undefined) {
    // A lock without an owner file is either being created right now or left by a crash in between.
    const info = await stat(lockDir).catch(() => undefined); // gone: nothing to remove
    if (!info || Date.now() - info.mtimeMs < 60_000) return;
  }
  await rm(lockDir, { recursive: true, force: true });
}

async function installDebianNatsServer(log: Log): Promise<string | undefined> {
  if (!findOnPath('apt-get')) return undefined;
  const asRoot = process.getuid?.() === 0;
  if (!asRoot && !findOnPath('sudo')) return undefined;
  const command = asRoot ? ['apt-get'] : ['sudo', '-n', 'apt-get'];
  log(`installing Debian's nats-server with ${command.join(' ')} (last resort)`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  try {
    await execFileAsync(command[0]!, [...command.slice(1), 'install', '-y', 'nats-server'], { env, maxBuffer: 64 << 20 });
  } catch (error) {
    // Report, then let the caller explain what to install instead.
    log(`apt-get install nats-server failed: ${errorMessage(error)}`);
    return undefined;
  }
  return findOnPath('nats-server');
}

async function runGo(args: string[], options: { cwd: string; env: Record<string, string> }, log: Log): Promise<string> {
  const child = spawn('go', args, { cwd: options.cwd, env: { ...process.env, ...options.env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  const stderrLines: string[] = [];
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => (stdout += chunk));
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
    for (const line of chunk.split('\n')) {
      if (!line.trim()) continue;
      stderrLines.push(line);
      if (!/^go: (added|upgraded|finding) /.test(line)) log(`  ${line}`);
    }
  });
  const [code, signal] = await new Promise<[number | null, NodeJS.Signals | null]>((resolvePromise, reject) => {
    child.once('error', reject);
    child.once('close', (exitCode, exitSignal) => resolvePromise([exitCode, exitSignal]));
  });
  if (code !== 0) {
    throw new Error(`\`go ${args.join(' ')}\` failed (${signal ?? `exit ${code}`}):\n${stderrLines.slice(-30).join('\n')}`);
  }
  return stdout;
}

async function binaryRuns(path: string): Promise<boolean> {
  if (!(await exists(path))) return false;
  try {
    await execFileAsync(path, ['--version'], { timeout: 15_000 });
    return true;
  } catch {
    // A broken or foreign binary: the caller rebuilds or falls back.
    return false;
  }
}

async function natsServerVersion(path: string): Promise<SemanticVersion | undefined> {
  try {
    const { stdout, stderr } = await execFileAsync(path, ['--version'], { timeout: 15_000 });
    return parseVersion(`${stdout}${stderr}`);
  } catch {
    // An unusable binary has no version; the caller treats it as absent.
    return undefined;
  }
}

function parseVersion(text: string): SemanticVersion | undefined {
  const match = /v?(\d+)\.(\d+)\.(\d+)/.exec(text);
  return match ? [Number(match[1]), Number(match[2]), Number(match[3])] : undefined;
}

function compareVersions(left: SemanticVersion, right: SemanticVersion): number {
  return left[0] - right[0] || left[1] - right[1] || left[2] - right[2];
}

function findOnPath(name: string): string | undefined {
  for (const directory of (process.env.PATH ?? '').split(delimiter)) {
    if (!directory) continue;
    const candidate = join(directory, name);
    try {
      accessSyncExecutable(candidate);
      return candidate;
    } catch {
      // Not here (or not executable): keep looking.
    }
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// Managed server processes

export interface ManagedServer {
  readonly kind: 'nats-server' | 'mongod' | 'ferretdb';
  /** `nats://127.0.0.1:PORT` or `mongodb://127.0.0.1:PORT/abide`. */
  readonly url: string;
  readonly port: number;
  /** Pid of the current process (changes on `restart()`). */
  readonly pid: number;
  readonly dataDir: string;
  /** Server output, appended across restarts. */
  readonly logFile: string;
  /** SIGTERM, then SIGKILL after 5 s; resolves once the process has exited. No-op if it is not running. */
  stop(): Promise<void>;
  /** Sends a signal without waiting (for crash tests); the exit is not reported as unexpected. @default 'SIGKILL' */
  kill(signal?: NodeJS.Signals): void;
  /** Stops the server if it runs, then starts it again on the same port and data directory. */
  restart(): Promise<void>;
}

export interface ExitInfo {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface ServerOptions {
  /** Data and log directory; created if missing. */
  dataDir: string;
  /** 0 or undefined: a free port. */
  port?: number;
  log?: Log;
  /** Time to wait for readiness. @default 30000 */
  startTimeoutMs?: number;
  /**
   * Run in its own process group, so a terminal's Ctrl-C reaches only the caller, which then
   * stops things in order. @default false
   */
  detached?: boolean;
  /** Called when the process exits without `stop()`, `kill()` or `restart()` asking it to. */
  onUnexpectedExit?: (info: ExitInfo) => void;
}

export interface NatsServerOptions extends ServerOptions {
  /** Appended to the generated config file (a later top-level key replaces an earlier one). */
  extraConfig?: string;
}

/** Starts nats-server with JetStream (`sync_interval: always` on 2.10+) and waits until it is ready. */
export async function startNatsServer(options: NatsServerOptions): Promise<ManagedServer> {
  const log = options.log ?? defaultLog;
  const binaryPath = await ensureNatsServerBinary(log);
  const version = await natsServerVersion(binaryPath);
  const modern = version !== undefined && compareVersions(version, minimumNatsVersion) >= 0;
  const configPath = join(options.dataDir, 'nats.conf');
  return startManagedServer(options, {
    kind: 'nats-server',
    binaryPath,
    async prepare(port) {
      const config = [
        '# Generated by scripts/lib/servers.ts at every start; edits are overwritten.',
        `listen: ${JSON.stringify(`127.0.0.1:${port ?? -1}`)}`,
        'http: "127.0.0.1:-1"',
        'jetstream {',
        `  store_dir: ${JSON.stringify(options.dataDir)}`,
        modern ? '  sync_interval: always' : '  # sync_interval needs nats-server 2.10+',
        '}',
        options.extraConfig ?? '',
        '',
      ].join('\n');
      await writeFile(configPath, config);
      return ['-c', configPath];
    },
    portFromLog: /Listening for client connections on [^\s]*:(\d+)/,
    async probe(port, output) {
      if (!(await natsSendsInfo(port))) return false;
      const monitorPort = /Starting http monitor on [^\s]*:(\d+)/.exec(output)?.[1];
      if (!monitorPort) return true;
      const query = modern ? '?js-enabled-only=true' : '';
      const response = await fetch(`http://127.0.0.1:${monitorPort}/healthz${query}`, { signal: AbortSignal.timeout(1_000) }).catch(() => undefined); // not up yet
      return response?.status === 200;
    },
    url: (port) => `nats://127.0.0.1:${port}`,
  });
}

/** Starts `mongod` or FerretDB (SQLite backend) and waits until it answers a `ping` command. */
export async function startMongoServer(options: ServerOptions): Promise<ManagedServer> {
  const log = options.log ?? defaultLog;
  const binary = await ensureMongoServerBinary(log);
  if (binary.kind === 'mongod') {
    return startManagedServer(options, {
      kind: 'mongod',
      binaryPath: binary.path,
      async prepare(port) {
        const dbPath = join(options.dataDir, 'db');
        await mkdir(dbPath, { recursive: true });
        // mongod cannot pick its own port; the caller picked one with freePort().
        return ['--dbpath', dbPath, '--bind_ip', '127.0.0.1', '--port', String(port)];
      },
      needsPort: true,
      probe: (port) => mongoAnswersPing(port),
      url: (port) => `mongodb://127.0.0.1:${port}/abide`,
    });
  }
  return startManagedServer(options, {
    kind: 'ferretdb',
    binaryPath: binary.path,
    async prepare(port) {
      const sqliteDir = join(options.dataDir, 'sqlite');
      const stateDir = join(options.dataDir, 'state');
      await mkdir(sqliteDir, { recursive: true });
      await mkdir(stateDir, { recursive: true });
      return [
        '--handler=sqlite',
        `--sqlite-url=file:${sqliteDir}/`,
        `--listen-addr=127.0.0.1:${port ?? 0}`,
        `--state-dir=${stateDir}`,
        '--telemetry=disable',
        // Its debug HTTP server defaults to 127.0.0.1:8088 and a second instance dies on the clash.
        '--debug-addr=-',
        '--log-format=text',
      ];
    },
    portFromLog: /Listening on TCP [^\s]*:(\d+)/,
    probe: (port) => mongoAnswersPing(port),
    url: (port) => `mongodb://127.0.0.1:${port}/abide`,
  });
}

interface ServerSpec {
  kind: ManagedServer['kind'];
  binaryPath: string;
  /** Writes config files; returns the arguments. `port` undefined: the server picks one and logs it. */
  prepare(port: number | undefined): Promise<string[]>;
  /** How to read the chosen port from the output when the server picked it. */
  portFromLog?: RegExp;
  /** The server cannot pick a port itself. */
  needsPort?: boolean;
  /** True once the server serves clients; `output` is this start's output so far. */
  probe(port: number, output: string): Promise<boolean>;
  url(port: number): string;
}

/*
 * Safety net: a caller that exits (normally or on an uncaught error) without stopping its servers
 * would leave them running, detached ones even across a closed terminal. One process-wide hook
 * kills whatever is still registered; it is the only module-level state here, on purpose.
 */
const runningChildren = new Set<ChildProcess>();
let exitHookInstalled = false;
function registerChild(child: ChildProcess): void {
  runningChildren.add(child);
  child.once('exit', () => runningChildren.delete(child));
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', () => {
    // SIGTERM: the servers shut down cleanly on it, and nothing here can wait any more.
    for (const running of runningChildren) running.kill('SIGTERM');
  });
}

async function startManagedServer(options: ServerOptions, spec: ServerSpec): Promise<ManagedServer> {
  const dataDir = resolve(options.dataDir);
  const logFile = join(dataDir, `${spec.kind}.log`);
  const pidFile = join(dataDir, `${spec.kind}.pid`);
  const timeoutMs = options.startTimeoutMs ?? 30_000;
  let child: ChildProcess | undefined;
  let exited: Promise<ExitInfo> = Promise.resolve({ code: null, signal: null });
  let expectingExit = false;
  let port = options.port ?? 0;

  async function launch(requestedPort: number): Promise<void> {
    await mkdir(dataDir, { recursive: true });
    await refuseIfDataDirInUse(pidFile, spec);
    if (requestedPort > 0 && (await somethingListens(requestedPort))) {
      throw new Error(`cannot start ${spec.kind}: 127.0.0.1:${requestedPort} is already in use (another stack running? reuse it through NATS_URL / MONGO_URL, or pick another port)`);
    }
    const portArgument = requestedPort > 0 ? requestedPort : spec.needsPort ? await freePort() : undefined;
    const args = await spec.prepare(portArgument);
    const startOffset = (await stat(logFile).catch(() => undefined))?.size ?? 0; // no log yet
    const logHandle = await open(logFile, 'a');
    await logHandle.write(`\n--- ${new Date().toISOString()} starting ${spec.binaryPath} ${args.join(' ')}\n`);
    const spawned = spawn(spec.binaryPath, args, { cwd: dataDir, stdio: ['ignore', logHandle.fd, logHandle.fd], detached: options.detached ?? false });
    await logHandle.close();
    expectingExit = false;
    child = spawned;
    exited = new Promise<ExitInfo>((resolvePromise) => {
      spawned.once('error', (error) => {
        void appendToLog(logFile, `spawn failed: ${error.message}\n`);
        resolvePromise({ code: -1, signal: null });
      });
      spawned.once('exit', (code, signal) => resolvePromise({ code, signal }));
    });
    registerChild(spawned);
    let ready = false;
    void exited.then((info) => {
      if (ready && child === spawned && !expectingExit) options.onUnexpectedExit?.(info);
    });
    if (spawned.pid !== undefined) await writeFile(pidFile, `${spawned.pid}\n`);

    const deadline = Date.now() + timeoutMs;
    let exitInfo: ExitInfo | undefined;
    void exited.then((info) => (exitInfo = info));
    for (;;) {
      await sleep(50);
      const output = await readFrom(logFile, startOffset);
      if (exitInfo) {
        throw new Error(`${spec.kind} exited during start-up (${describeExit(exitInfo)}); its output (${logFile}):\n${lastLines(output, 40)}`);
      }
      const chosenPort = portArgument ?? Number(spec.portFromLog?.exec(output)?.[1] ?? 0);
      if (chosenPort > 0 && (await spec.probe(chosenPort, output).catch(() => false))) {
        port = chosenPort;
        ready = true;
        return;
      }
      if (Date.now() > deadline) {
        expectingExit = true;
        spawned.kill('SIGKILL');
        await exited;
        throw new Error(`${spec.kind} was not ready after ${timeoutMs} ms; its output (${logFile}):\n${lastLines(output, 40)}`);
      }
    }
  }

  async function stop(): Promise<void> {
    const current = child;
    if (!current || current.exitCode !== null || current.signalCode !== null) return;
    expectingExit = true;
    current.kill('SIGTERM');
    const finished = await Promise.race([exited.then(() => true), sleep(stopGraceMs).then(() => false)]);
    if (!finished) {
      current.kill('SIGKILL');
      await exited;
    }
    await rm(pidFile, { force: true });
  }

  await launch(port);
  return {
    kind: spec.kind,
    get url() {
      return spec.url(port);
    },
    get port() {
      return port;
    },
    get pid() {
      return child?.pid ?? -1;
    },
    dataDir,
    logFile,
    stop,
    kill(signal = 'SIGKILL') {
      expectingExit = true;
      child?.kill(signal);
    },
    async restart() {
      await stop();
      await exited;
      await launch(port);
    },
  };
}

async function refuseIfDataDirInUse(pidFile: string, spec: ServerSpec): Promise<void> {
  const recorded = Number.parseInt((await readFile(pidFile, 'utf8').catch(() => '')) || '', 10); // no pid file: not in use
  if (!Number.isInteger(recorded) || !processIsAlive(recorded)) return;
  const commandLine = await readFile(`/proc/${recorded}/cmdline`, 'utf8').catch(() => ''); // not Linux, or gone
  if (commandLine && !commandLine.includes(basename(spec.binaryPath))) return;
  throw new Error(`${spec.kind} (pid ${recorded}) is still running on ${resolve(pidFile, '..')}; stop it first or use another data directory`);
}

async function natsSendsInfo(port: number): Promise<boolean> {
  const banner = await readBanner(port, Buffer.alloc(0), 5);
  return banner?.toString('latin1').startsWith('INFO ') ?? false;
}

/*
 * A MongoDB `ping` over the wire protocol (OP_MSG, opcode 2013), so readiness means "answers
 * commands", not just "accepts TCP". Built by hand to stay free of npm dependencies.
 */
async function mongoAnswersPing(port: number): Promise<boolean> {
  const reply = await readBanner(port, encodePingMessage(1), 16);
  if (!reply || reply.length < 16) return false;
  const opCode = reply.readInt32LE(12);
  if (opCode !== 2013 || reply.readInt32LE(8) !== 1) return false;
  // `{ ok: <double> }`: element type 0x01, name "ok\0", then the value.
  const okAt = reply.indexOf(Buffer.from([0x01, 0x6f, 0x6b, 0x00]), 21);
  return okAt < 0 || (okAt + 12 <= reply.length && reply.readDoubleLE(okAt + 4) === 1);
}

function encodePingMessage(requestId: number): Buffer {
  const int32 = (value: number) => {
    const buffer = Buffer.alloc(4);
    buffer.writeInt32LE(value);
    return buffer;
  };
  const elements = Buffer.concat([
    Buffer.from([0x10]), Buffer.from('ping\0', 'latin1'), int32(1),
    Buffer.from([0x02]), Buffer.from('$db\0', 'latin1'), int32(6), Buffer.from('admin\0', 'latin1'),
  ]);
  const document = Buffer.concat([int32(4 + elements.length + 1), elements, Buffer.from([0])]);
  const body = Buffer.concat([int32(0) /* flagBits */, Buffer.from([0]) /* section kind: body */, document]);
  return Buffer.concat([int32(16 + body.length), int32(requestId), int32(0), int32(2013), body]);
}

/** Connects, writes `request`, reads until the server sent a complete message (or `minimumBytes` for a text banner). */
function readBanner(port: number, request: Buffer, minimumBytes: number): Promise<Buffer | undefined> {
  return new Promise((resolvePromise) => {
    const socket = createConnection({ host: '127.0.0.1', port });
    let received = Buffer.alloc(0);
    const finish = (result: Buffer | undefined) => {
      socket.destroy();
      resolvePromise(result);
    };
    socket.setTimeout(1_000, () => finish(undefined));
    socket.once('error', () => finish(undefined));
    socket.once('connect', () => {
      if (request.length > 0) socket.write(request);
    });
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      const expected = request.length > 0 && received.length >= 4 ? received.readInt32LE(0) : minimumBytes;
      if (received.length >= expected) finish(received);
    });
    socket.once('end', () => finish(received.length > 0 ? received : undefined));
  });
}

function somethingListens(port: number): Promise<boolean> {
  return new Promise((resolvePromise) => {
    const socket = createConnection({ host: '127.0.0.1', port });
    socket.setTimeout(1_000, () => {
      socket.destroy();
      resolvePromise(false);
    });
    socket.once('connect', () => {
      socket.destroy();
      resolvePromise(true);
    });
    socket.once('error', () => resolvePromise(false));
  });
}

/** A port that was free on 127.0.0.1 a moment ago (bind to port 0, read it, close). */
export function freePort(): Promise<number> {
  return new Promise((resolvePromise, reject) => {
    const server = createServer();
    server.unref();
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port: 0 }, () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address ? resolvePromise(address.port) : reject(new Error('no port assigned'))));
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Both servers, honouring NATS_URL / MONGO_URL

export interface StartServersOptions {
  /** Parent of the `nats/` and `mongo/` data directories. @default `<repo>/.abide/data` */
  dataRoot?: string;
  /** 0 or undefined: a free port. */
  natsPort?: number;
  /** 0 or undefined: a free port. */
  mongoPort?: number;
  natsExtraConfig?: string;
  log?: Log;
  /** @default 30000 */
  startTimeoutMs?: number;
  /** See {@link ServerOptions.detached}. @default false */
  detached?: boolean;
  onUnexpectedExit?: (server: 'nats' | 'mongo', info: ExitInfo) => void;
}

export interface StartedServers {
  natsUrl: string;
  mongoUrl: string;
  /** Undefined when `NATS_URL` was given. */
  nats: ManagedServer | undefined;
  /** Undefined when `MONGO_URL` was given. */
  mongo: ManagedServer | undefined;
  /** Stops the servers started here (never those named by the environment). */
  stop(): Promise<void>;
}

/**
 * Starts NATS and MongoDB(-compatible) servers, except those whose URL is set in `env`
 * (`NATS_URL`, `MONGO_URL`). If one fails to start, the other is stopped before the error is thrown.
 */
export async function startServersFromEnv(env: Record<string, string | undefined>, options: StartServersOptions = {}): Promise<StartedServers> {
  const dataRoot = options.dataRoot ?? abidePaths.dataRoot;
  const common = { log: options.log, startTimeoutMs: options.startTimeoutMs, detached: options.detached };
  const natsUrl = env.NATS_URL?.trim() || undefined;
  const mongoUrl = env.MONGO_URL?.trim() || undefined;
  const [nats, mongo] = await Promise.allSettled([
    natsUrl
      ? undefined
      : startNatsServer({
          ...common,
          dataDir: join(dataRoot, 'nats'),
          port: options.natsPort,
          extraConfig: options.natsExtraConfig,
          onUnexpectedExit: (info) => options.onUnexpectedExit?.('nats', info),
        }),
    mongoUrl
      ? undefined
      : startMongoServer({
          ...common,
          dataDir: join(dataRoot, 'mongo'),
          port: options.mongoPort,
          onUnexpectedExit: (info) => options.onUnexpectedExit?.('mongo', info),
        }),
  ]);
  if (nats.status === 'rejected' || mongo.status === 'rejected') {
    await Promise.all([nats, mongo].map((result) => (result.status === 'fulfilled' ? result.value?.stop() : undefined)));
    const failures = [nats, mongo].flatMap((result) => (result.status === 'rejected' ? [result.reason] : []));
    throw failures.length === 1 ? failures[0] : new AggregateError(failures, failures.map(errorMessage).join('\n\n'));
  }
  return {
    natsUrl: natsUrl ?? nats.value!.url,
    mongoUrl: mongoUrl ?? mongo.value!.url,
    nats: nats.value,
    mongo: mongo.value,
    async stop() {
      await Promise.all([nats.value?.stop(), mongo.value?.stop()]);
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Small helpers

async function exists(path: string): Promise<boolean> {
  try {
    await access(path, constants.F_OK);
    return true;
  } catch {
    // Absent.
    return false;
  }
}

/** Synchronous on purpose: a PATH lookup is a handful of stat calls, once per start. */
function accessSyncExecutable(path: string): void {
  accessSync(path, constants.X_OK);
  if (!statSync(path).isFile()) throw new Error(`${path} is not a file`);
}

async function readFrom(path: string, offset: number): Promise<string> {
  const handle = await open(path, 'r').catch(() => undefined); // not created yet
  if (!handle) return '';
  try {
    const { size } = await handle.stat();
    const length = Math.max(0, size - offset);
    const buffer = Buffer.alloc(length);
    await handle.read(buffer, 0, length, offset);
    return buffer.toString('utf8');
  } finally {
    await handle.close();
  }
}

async function appendToLog(path: string, text: string): Promise<void> {
  await writeFile(path, text, { flag: 'a' });
}

function lastLines(text: string, count: number): string {
  const lines = text.trimEnd().split('\n');
  return lines.slice(-count).join('\n') || '(no output)';
}

function describeExit(info: ExitInfo): string {
  return info.signal ? `signal ${info.signal}` : `exit code ${info.code}`;
}

function processIsAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return isErrorCode(error, 'EPERM');
  }
}

function isErrorCode(error: unknown, code: string): boolean {
  return error instanceof Error && (error as NodeJS.ErrnoException).code === code;
}

export function errorMessage(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
