import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { beforeAll, describe, expect, it } from 'vitest';
import { abidePaths, ensurePromtoolBinary } from '../../../scripts/lib/server-binaries.ts';

const execFileAsync = promisify(execFile);
const monitoringDir = join(abidePaths.repoRoot, 'deploy/monitoring');

/**
 * The alert rules as Prometheus itself reads them: `promtool check rules` (syntax, PromQL,
 * templates) and `promtool test rules` (each alert fires on the series it is meant for, with its
 * labels and annotations, and not before). The metric names are checked against the services in
 * shared/src/deploy-monitoring.test.ts and against the running processes in metrics.test.ts.
 */
describe('deploy/monitoring alert rules (promtool)', () => {
  let promtool: string;

  beforeAll(async () => {
    promtool = await ensurePromtoolBinary();
  }, 30 * 60_000);

  it('pass promtool check rules', async () => {
    const { stdout } = await execFileAsync(promtool, ['check', 'rules', 'alert-rules.yml'], { cwd: monitoringDir });
    expect(stdout).toContain('SUCCESS: 5 rules found');
  });

  it('pass their unit tests (alert-rules.test.yml)', async () => {
    const result = await execFileAsync(promtool, ['test', 'rules', 'alert-rules.test.yml'], { cwd: monitoringDir }).catch((error: { stdout?: string; stderr?: string; message: string }) => {
      throw new Error(`promtool test rules failed:\n${error.stdout ?? ''}${error.stderr ?? error.message}`);
    });
    expect(result.stdout).toContain('SUCCESS');
  });
});
