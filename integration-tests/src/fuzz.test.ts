import { describe, expect, it } from 'vitest';
import { oddWebSocketPaths, runFuzz, serverErrors } from './fuzz/run-fuzz.ts';

/**
 * Issue 8, "Fuzzed", CI-sized: schemathesis against `/openapi.json` (every check) and a seeded
 * WebSocket frame fuzzer against the real processes. `FUZZ_SEED` replays a seed; `npm run fuzz`
 * runs a larger budget (FUZZ_MAX_EXAMPLES, FUZZ_FRAMES).
 */
describe('fuzzing the public API', () => {
  it('finds no 5xx, no crash, no lock left behind, and a document that promises what the server does', { timeout: 600_000 }, async () => {
    const report = await runFuzz({
      maxExamples: Number(process.env.FUZZ_MAX_EXAMPLES ?? 5),
      frames: Number(process.env.FUZZ_FRAMES ?? 2_000),
      seed: Number(process.env.FUZZ_SEED ?? 20_261_129),
      log: (line) => console.log(line),
    });
    // finding 13: however the path is spelled, no upgrade without a key (a real WebSocket client)
    expect(report.oddPathUpgrades).toEqual(Object.fromEntries(oddWebSocketPaths.map((path) => [path, 401])));
    expect(report.oddPathUpgradeWithKey).toBe('open');
    expect(report.schemathesis.failures).toBe('');
    expect(report.schemathesis.exitCode).toBe(0);
    expect(report.schemathesis.casesGenerated).toBeGreaterThan(100);
    expect(report.frames.unanswered).toEqual([]);
    expect(report.frames.internalErrors).toBe(0);
    expect(report.frames.socketsClosed).toBe(0);
    expect(report.frames.sent).toBe(Number(process.env.FUZZ_FRAMES ?? 2_000));
    expect(serverErrors(report.httpStatuses)).toEqual({});
    expect(report.deadProcesses).toEqual([]);
    expect(report.orphanLocks).toEqual([]);
  });
});
