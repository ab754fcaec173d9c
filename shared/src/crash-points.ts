/**
 * Crash points for tests of crash windows: `ABIDE_CRASH_POINTS=orchestrator.after_commit@2`
 * makes the process SIGKILL itself the 2nd time it passes that point (default: the 1st), with
 * no cleanup at all, exactly like a machine dying there. Unset in production: `hit()` is then a
 * no-op. Names are `<service>.<point>`, comma-separated.
 */
export type CrashPoints = { hit(name: string): void; readonly armed: readonly string[] };

export function createCrashPoints(spec: string | undefined, onCrash: (name: string) => void = defaultCrash): CrashPoints {
  const remaining = new Map<string, number>();
  for (const entry of (spec ?? '').split(',').map((item) => item.trim()).filter(Boolean)) {
    const [name, count] = entry.split('@');
    const times = count === undefined ? 1 : Number(count);
    if (!name || !Number.isInteger(times) || times < 1) throw new Error(`ABIDE_CRASH_POINTS: bad entry "${entry}" (expected name or name@N)`);
    remaining.set(name, times);
  }
  return {
    armed: [...remaining.keys()],
    hit(name: string) {
      const left = remaining.get(name);
      if (left === undefined) return;
      if (left > 1) {
        remaining.set(name, left - 1);
        return;
      }
      remaining.delete(name);
      onCrash(name);
    },
  };
}

function defaultCrash(name: string): void {
  process.stderr.write(`crash point ${name}: killing the process\n`);
  process.kill(process.pid, 'SIGKILL');
}
