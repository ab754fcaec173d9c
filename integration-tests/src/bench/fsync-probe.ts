import { setTimeout as sleep } from 'node:timers/promises';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { StackProcess } from './proc.ts';

/** The fsync family (WORKLOAD.md), plus the whole-filesystem syncs. */
export const fsyncCalls = ['fsync', 'fdatasync', 'sync_file_range', 'msync', 'sync', 'syncfs'] as const;

export type SyscallCount = { calls: number; wallSeconds: number };
export type FsyncCounts = Map<string, Map<string, SyscallCount>>;

/** Whether `strace` runs here (installs it with apt-get when missing and we are root). */
export function ensureStrace(log: (message: string) => void): string | undefined {
  if (spawnSync('strace', ['-V'], { stdio: 'ignore' }).status === 0) return undefined;
  if (process.getuid?.() === 0 && spawnSync('apt-get', ['--version'], { stdio: 'ignore' }).status === 0) {
    log('strace is missing: apt-get install -y strace');
    spawnSync('apt-get', ['install', '-y', 'strace'], { stdio: ['ignore', 'ignore', 'inherit'], env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' } });
    if (spawnSync('strace', ['-V'], { stdio: 'ignore' }).status === 0) return undefined;
  }
  return 'strace is not installed (and could not be installed)';
}

/**
 * `strace -f -c -w` attached to each process (one tracer per process, so the counts come per
 * process), counting only the fsync family. `stop()` detaches (SIGINT) and parses the summaries.
 */
export class FsyncProbe {
  readonly #tracers: { process: StackProcess; child: ChildProcess; output: string; exited: Promise<void>; stderr: string[] }[] = [];

  private constructor() {}

  static async attach(processes: StackProcess[], dir: string): Promise<FsyncProbe> {
    const probe = new FsyncProbe();
    for (const target of processes) {
      const output = join(dir, `strace-${target.name}-${target.pid}.txt`);
      const child = spawn('strace', ['-f', '-c', '-w', '-e', `trace=${fsyncCalls.join(',')}`, '-o', output, '-p', String(target.pid)], { stdio: ['ignore', 'ignore', 'pipe'] });
      const stderr: string[] = [];
      child.stderr!.setEncoding('utf8').on('data', (chunk: string) => stderr.push(chunk));
      const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
      probe.#tracers.push({ process: target, child, output, exited, stderr });
    }
    // Attached once each tracer said so (ptrace refused: strace exits with a message instead).
    const deadline = Date.now() + 10_000;
    for (const tracer of probe.#tracers) {
      while (!tracer.stderr.join('').includes('attached')) {
        if (tracer.child.exitCode !== null || Date.now() > deadline) {
          await probe.stop();
          throw new Error(`strace could not attach to ${tracer.process.name} (pid ${tracer.process.pid}): ${tracer.stderr.join('').trim() || 'no output'}`);
        }
        await sleep(20);
      }
    }
    await sleep(200);
    return probe;
  }

  /** Detaches every tracer; returns process name → syscall → count. */
  async stop(): Promise<FsyncCounts> {
    for (const tracer of this.#tracers) if (tracer.child.exitCode === null) tracer.child.kill('SIGINT');
    await Promise.all(
      this.#tracers.map(async (tracer) => {
        const timer = setTimeout(() => tracer.child.kill('SIGKILL'), 10_000);
        await tracer.exited;
        clearTimeout(timer);
      }),
    );
    const counts: FsyncCounts = new Map();
    for (const tracer of this.#tracers) {
      let text = '';
      try {
        text = readFileSync(tracer.output, 'utf8');
      } catch {
        // No summary (strace failed): counted as none.
      }
      counts.set(tracer.process.name, parseStraceSummary(text));
    }
    return counts;
  }

  /** Kills the tracers without reading anything (cleanup on error). */
  kill(): void {
    for (const tracer of this.#tracers) if (tracer.child.exitCode === null) tracer.child.kill('SIGKILL');
  }
}

/** Parses `strace -c` output: `% time  seconds  usecs/call  calls  [errors]  syscall` rows. */
export function parseStraceSummary(text: string): Map<string, SyscallCount> {
  const counts = new Map<string, SyscallCount>();
  for (const line of text.split('\n')) {
    const match = /^\s*[\d.]+\s+([\d.]+)\s+\d+\s+(\d+)\s+(?:\d+\s+)?([a-z_0-9]+)\s*$/.exec(line);
    if (!match || match[3] === 'total') continue;
    counts.set(match[3]!, { calls: Number(match[2]), wallSeconds: Number(match[1]) });
  }
  return counts;
}
