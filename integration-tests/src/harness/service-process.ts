import { setTimeout as sleep } from 'node:timers/promises';
import { spawn, type ChildProcess } from 'node:child_process';
import { createWriteStream, readFileSync, type WriteStream } from 'node:fs';
import { join } from 'node:path';
import { serviceNodeOptions, serviceProcessVariables } from '@abide/shared';
import { abidePaths } from '../../../scripts/lib/servers.ts';

export type ServiceName = 'gateway' | 'orchestrator' | 'llm-worker' | 'tool-worker';

export const repoRoot = join(import.meta.dirname, '..', '..', '..');

/** One service replica as a real OS process, its output in a log file. */
export class ServiceProcess {
  readonly name: ServiceName;
  readonly replica: number;
  readonly logFile: string;
  readonly env: Record<string, string>;
  readonly healthUrl: string;
  #child: ChildProcess | undefined;
  #log: WriteStream | undefined;
  #exit: Promise<number | null> = Promise.resolve(null);

  constructor(options: { name: ServiceName; replica: number; logDir: string; env: Record<string, string>; healthUrl: string }) {
    this.name = options.name;
    this.replica = options.replica;
    this.logFile = join(options.logDir, `${options.name}-${options.replica}.log`);
    this.env = options.env;
    this.healthUrl = options.healthUrl;
  }

  /** The last `lines` lines of its log, headed by its name (printed when a test fails). */
  logTail(lines = 40): string {
    let text: string;
    try {
      text = readFileSync(this.logFile, 'utf8');
    } catch {
      text = '(no log)';
    }
    return `--- ${this.name}#${this.replica} ---\n${text.split('\n').slice(-lines).join('\n')}`;
  }

  get pid(): number | undefined {
    return this.#child?.pid;
  }

  get running(): boolean {
    return this.#child !== undefined && this.#child.exitCode === null && this.#child.signalCode === null;
  }

  /** Starts the process; `overrides` replace environment variables for this start only (e.g. crash points). */
  start(overrides: Record<string, string | undefined> = {}): void {
    this.#log = createWriteStream(this.logFile, { flags: 'a' });
    // Node's compile cache and glibc's arena limit, as `npm start` and the images set them (shared/src/node-options.ts).
    const env: Record<string, string> = { PATH: process.env.PATH ?? '', ...serviceProcessVariables(abidePaths.compileCacheDir), ...this.env };
    for (const [name, value] of Object.entries(overrides)) {
      if (value === undefined) delete env[name];
      else env[name] = value;
    }
    // The service's heap flags, as `npm start` and the images give them (shared/src/node-options.ts).
    // ABIDE_CPU_PROF_DIR: a V8 CPU profile per service process, written when it exits (`node --cpu-prof`).
    const profDir = process.env.ABIDE_CPU_PROF_DIR;
    const profile = profDir ? ['--cpu-prof', `--cpu-prof-dir=${profDir}`, `--cpu-prof-name=${this.name}-${this.replica}-\${pid}.cpuprofile`] : [];
    const child = spawn(process.execPath, [...serviceNodeOptions[this.name], ...profile, join(repoRoot, 'services', this.name, 'src', 'main.ts')], {
      cwd: repoRoot,
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    child.stdout!.pipe(this.#log, { end: false });
    child.stderr!.pipe(this.#log, { end: false });
    this.#exit = new Promise((resolve) => child.once('exit', (code) => resolve(code)));
    this.#child = child;
  }

  /** Resolves once `/readyz` answers 200. */
  async waitReady(timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (!this.running) throw new Error(`${this.name}#${this.replica} exited during start-up; see ${this.logFile}\n${this.logTail(10)}`);
      try {
        const response = await fetch(`${this.healthUrl}/readyz`, { signal: AbortSignal.timeout(1_000) });
        if (response.status === 200) return;
      } catch {
        // Not listening yet: keep polling until the deadline.
      }
      await sleep(100);
    }
    throw new Error(`${this.name}#${this.replica} not ready after ${timeoutMs} ms; see ${this.logFile}\n${this.logTail(10)}`);
  }

  /** Sends `signal` and waits for the exit; returns the exit code (null when killed by a signal). */
  async stop(signal: NodeJS.Signals = 'SIGTERM', timeoutMs = 20_000): Promise<number | null> {
    if (!this.running) return this.#child?.exitCode ?? null;
    this.#child!.kill(signal);
    const timer = setTimeout(() => this.#child?.kill('SIGKILL'), timeoutMs);
    const code = await this.#exit;
    clearTimeout(timer);
    return code;
  }

  async restart(overrides: Record<string, string | undefined> = {}): Promise<void> {
    await this.stop('SIGKILL');
    this.start(overrides);
    await this.waitReady();
  }

  /** Resolves with the exit code when the process exits by itself (e.g. at a crash point). */
  exited(): Promise<number | null> {
    return this.#exit;
  }
}
