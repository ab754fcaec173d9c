import { setTimeout as sleep } from 'node:timers/promises';
import type { ServiceProcess } from '../harness/service-process.ts';
import type { Stack } from '../harness/stack.ts';
import type { Random } from './random.ts';

export type Kill = { service: string; replica: number; pid: number | undefined; at: number; restartedAt?: number };

export type KillerOptions = {
  stack: Stack;
  random: Random;
  /** Pause between one process being back and the next kill, in ms. */
  intervalMs: [number, number];
  /** How long a killed process stays down before it is started again, in ms. */
  downMs: [number, number];
  /** Called right after each kill (followers reconnect with their cursor). */
  onKill(kill: Kill): void;
  log?(line: string): void;
};

export type Killer = { readonly kills: Kill[]; stop(): Promise<void> };

/**
 * Sends SIGKILL to a random service process (any replica of any service) at a random moment,
 * keeps it down for a random while, starts it again and waits until it is ready, then does it
 * again, until stopped. One process is down at a time.
 */
export function startKiller(options: KillerOptions): Killer {
  const { stack, random } = options;
  const kills: Kill[] = [];
  let stopped = false;
  let wake: () => void = () => {};
  const pause = (ms: number) =>
    new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, ms);
      wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });

  async function bringBack(service: ServiceProcess, kill: Kill): Promise<void> {
    for (let attempt = 1; ; attempt += 1) {
      service.start();
      try {
        await service.waitReady(60_000);
        kill.restartedAt = Date.now();
        return;
      } catch (error) {
        options.log?.(`chaos: ${service.name}#${service.replica} did not come back (attempt ${attempt}): ${(error as Error).message}`);
        await service.stop('SIGKILL');
        if (attempt >= 3) throw error;
      }
    }
  }

  const loop = (async () => {
    while (!stopped) {
      await pause(random.int(...options.intervalMs));
      if (stopped) break;
      const service = random.pick(stack.services);
      const kill: Kill = { service: service.name, replica: service.replica, pid: service.pid, at: Date.now() };
      await service.stop('SIGKILL');
      kills.push(kill);
      options.log?.(`chaos: killed ${service.name}#${service.replica} (pid ${kill.pid})`);
      options.onKill(kill);
      await sleep(random.int(...options.downMs));
      await bringBack(service, kill);
    }
  })();

  return {
    kills,
    async stop() {
      stopped = true;
      wake();
      await loop;
    },
  };
}
