/** The signals that stop `npm start` and `npm run servers`. */
export const stopSignals = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;
export type StopSignal = (typeof stopSignals)[number];

/**
 * A second stop signal within this window is the same Ctrl-C, not a second one: a terminal sends
 * SIGINT to the whole foreground process group (npm and the script it runs), and npm forwards the
 * copy it gets to the script as well, so each Ctrl-C reaches the script twice, microseconds apart.
 */
export const sameSignalMs = 1_000;

/**
 * Calls `stop` at the first stop signal and `kill` at a later one (Ctrl-C pressed again, to stop
 * waiting for a graceful stop). A signal within `sameSignalMs` of the first is that one again and
 * is ignored: taken for a second Ctrl-C, it skipped the graceful stop every time.
 */
export function onStopSignals(
  handlers: { stop(signal: StopSignal): void; kill(signal: StopSignal): void },
  options: { target?: Pick<NodeJS.Process, 'on'>; now?: () => number } = {},
): void {
  const target = options.target ?? process;
  const now = options.now ?? Date.now;
  let firstAt: number | undefined;
  for (const signal of stopSignals) {
    target.on(signal, () => {
      if (firstAt === undefined) {
        firstAt = now();
        handlers.stop(signal);
      } else if (now() - firstAt >= sameSignalMs) {
        handlers.kill(signal);
      }
    });
  }
}
