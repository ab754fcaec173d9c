import { setTimeout as sleep } from 'node:timers/promises';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { round } from './stats.ts';

/**
 * A process of the stack, by name, as seen in /proc. `tree`: a server that forks a process per
 * connection (PostgreSQL); its memory is the proportional set size (Pss) of it and every
 * descendant, so the shared buffers they all map are counted once.
 */
export type StackProcess = { name: string; pid: number; tree?: boolean };

const clockTicksPerSecond = (() => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100; // getconf missing: Linux's usual USER_HZ
  }
})();

/** Resident memory of `pid` in MiB (VmRSS), or 0 when it is gone. */
export function rssMb(pid: number): number {
  try {
    const match = /^VmRSS:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return match ? Number(match[1]) / 1024 : 0;
  } catch {
    return 0; // exited
  }
}

/** Pss (proportional set size) of `pid` alone in MiB (0 when gone): pages shared with other processes count by their share. */
export function pssMb(pid: number): number {
  try {
    const match = /^Pss:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8'));
    return match ? Number(match[1]) / 1024 : 0;
  } catch {
    return 0; // exited
  }
}

/** Pss of `pid` and all its descendants in MiB (0 when gone). */
export function treePssMb(pid: number): number {
  let totalKb = 0;
  const pending = [pid];
  while (pending.length > 0) {
    const current = pending.pop()!;
    try {
      const match = /^Pss:\s+(\d+)\s+kB/m.exec(readFileSync(`/proc/${current}/smaps_rollup`, 'utf8'));
      totalKb += match ? Number(match[1]) : 0;
      pending.push(...readFileSync(`/proc/${current}/task/${current}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number));
    } catch {
      // Exited between the listing and the read: nothing to count.
    }
  }
  return totalKb / 1024;
}

/** The memory the bench counts for a stack process (see {@link StackProcess}). */
export function processMb(process: StackProcess): number {
  return process.tree ? treePssMb(process.pid) : rssMb(process.pid);
}

/** CPU time (user + system) `pid` has used, in seconds (all its threads), or 0 when it is gone. */
export function cpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // Fields 14 and 15 of proc(5) (utime, stime) are at 11 and 12 counting from field 3.
    return (Number(fields[11]) + Number(fields[12])) / clockTicksPerSecond;
  } catch {
    return 0;
  }
}

/** Samples the summed RSS of `processes` every `intervalMs`, keeping the peak (of the sum, and of each process). */
export class RssSampler {
  readonly processes: StackProcess[];
  peakMb = 0;
  /**
   * The peak of the summed Pss: the processes' shared pages (above all the Node binary the four
   * services map, ~50 MiB each in RSS) counted once, so what the stack takes from the machine.
   */
  peakPssMb = 0;
  /** Each process's own peak in MiB, by name (the peaks need not coincide: their sum is ≥ `peakMb`). */
  readonly peakByProcessMb = new Map<string, number>();
  /** Each process's memory at the first sample (before the scenario's work), by name. */
  readonly startByProcessMb = new Map<string, number>();
  #timer: NodeJS.Timeout | undefined;

  constructor(processes: StackProcess[]) {
    this.processes = processes;
  }

  sampleNow(): number {
    let total = 0;
    let pss = 0;
    for (const process of this.processes) {
      const mb = processMb(process);
      total += mb;
      pss += process.tree ? mb : pssMb(process.pid);
      if (!this.startByProcessMb.has(process.name)) this.startByProcessMb.set(process.name, mb);
      if (mb > (this.peakByProcessMb.get(process.name) ?? 0)) this.peakByProcessMb.set(process.name, mb);
    }
    if (total > this.peakMb) this.peakMb = total;
    if (pss > this.peakPssMb) this.peakPssMb = pss;
    return total;
  }

  start(intervalMs = 500): void {
    this.peakMb = 0;
    this.peakPssMb = 0;
    this.peakByProcessMb.clear();
    this.startByProcessMb.clear();
    this.sampleNow();
    this.#timer = setInterval(() => this.sampleNow(), intervalMs);
  }

  /** Stops sampling; returns the peak in MiB. */
  stop(): number {
    clearInterval(this.#timer);
    this.#timer = undefined;
    this.sampleNow();
    return this.peakMb;
  }
}

/** CPU use of each process over a window, in percent of one core. */
export async function cpuPercentOver(processes: StackProcess[], windowMs: number, onSample?: () => void, sampleMs = 500): Promise<Map<string, number>> {
  const before = cpuSnapshot(processes);
  const started = performance.now();
  while (performance.now() - started < windowMs) {
    await sleep(Math.min(sampleMs, windowMs - (performance.now() - started)));
    onSample?.();
  }
  const elapsedS = (performance.now() - started) / 1000;
  return new Map(processes.map((process) => [process.name, ((cpuSeconds(process.pid) - before.get(process.name)!) / elapsedS) * 100]));
}

/** CPU seconds (user + system) each process has used so far, by name. */
export const cpuSnapshot = (processes: readonly StackProcess[]) => new Map(processes.map((entry) => [entry.name, cpuSeconds(entry.pid)]));

/**
 * CPU time each process spent per run between two snapshots, in ms, and their sum: what a run
 * costs the machine, which caps throughput on 2 cores and holds still when other work shares the
 * machine (latencies do not). Ticks are 10 ms, so a scenario needs a few hundred runs to read it
 * to 0.1 ms. A server that forks per connection (PostgreSQL) counts its first process only.
 */
export function cpuMsPerRun(before: Map<string, number>, processes: readonly StackProcess[], runs: number): Record<string, number | null> {
  const perRun: Record<string, number | null> = {};
  let total = 0;
  for (const entry of processes) {
    const used = cpuSeconds(entry.pid) - (before.get(entry.name) ?? 0);
    perRun[entry.name] = runs > 0 ? round((used * 1000) / runs, 2) : null;
    total += used;
  }
  perRun.total = runs > 0 ? round((total * 1000) / runs, 2) : null;
  return perRun;
}
