import { runFuzz, serverErrors } from './run-fuzz.ts';

/**
 * `npm run fuzz`: the fuzz test with a larger budget. FUZZ_MAX_EXAMPLES (default 100),
 * FUZZ_FRAMES (default 20000), FUZZ_SEED (default: the time). Exits 1 on any violation.
 */
const budget = {
  maxExamples: Number(process.env.FUZZ_MAX_EXAMPLES ?? 100),
  frames: Number(process.env.FUZZ_FRAMES ?? 20_000),
  seed: Number(process.env.FUZZ_SEED ?? Date.now() % 1_000_000_007),
};
const report = await runFuzz({ ...budget, log: (line) => console.log(line) });
const violations = [
  ...Object.entries(report.oddPathUpgrades).filter(([, status]) => status !== 401).map(([path, status]) => `upgrade of ${path} without a key: ${status}`),
  ...(report.oddPathUpgradeWithKey === 'open' ? [] : [`upgrade of /%761/ws with a key: ${report.oddPathUpgradeWithKey}`]),
  ...(report.schemathesis.exitCode === 0 ? [] : [`schemathesis failed:\n${report.schemathesis.failures}`]),
  ...(report.frames.unanswered.length > 0 ? [`${report.frames.unanswered.length} refused frames got no error frame`] : []),
  ...(report.frames.internalErrors > 0 ? [`${report.frames.internalErrors} internal error frames`] : []),
  ...(report.frames.socketsClosed > 0 ? [`${report.frames.socketsClosed} sockets closed`] : []),
  ...(Object.keys(serverErrors(report.httpStatuses)).length > 0 ? [`5xx answers: ${JSON.stringify(serverErrors(report.httpStatuses))}`] : []),
  ...(report.deadProcesses.length > 0 ? [`processes died: ${report.deadProcesses.join(', ')}`] : []),
  ...(report.orphanLocks.length > 0 ? [`locks without a run: ${JSON.stringify(report.orphanLocks)}`] : []),
];
console.log(violations.length === 0 ? `fuzz: no violations (seed ${budget.seed})` : `fuzz: ${violations.length} violations (seed ${budget.seed}):\n${violations.join('\n')}`);
process.exit(violations.length === 0 ? 0 : 1);
