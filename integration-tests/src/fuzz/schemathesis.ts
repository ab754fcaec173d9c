import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { repoRoot } from '../harness/service-process.ts';

/** Where `scripts/install-schemathesis.sh` (run by `.ci/run`) puts schemathesis. */
export const schemathesisBinary = join(repoRoot, '.abide', 'schemathesis', 'bin', 'st');

export type SchemathesisOptions = {
  /** The gateway's base URL; the document is read from `<baseUrl>/openapi.json`. */
  baseUrl: string;
  /** The API key sent on every request. */
  apiKey: string;
  /** Examples per operation and phase (`--max-examples`). */
  maxExamples: number;
  seed: number;
  workers: number;
};

export type SchemathesisResult = {
  exitCode: number | null;
  /** Test cases schemathesis generated and sent (its summary's "N generated"). */
  casesGenerated: number;
  /** Its summary's "Failures:" block (empty when none). */
  failures: string;
  output: string;
};

/**
 * Runs `st run` against the gateway's OpenAPI document with every check (`--checks all`), the
 * hooks of `schemathesis_hooks.py` (the few rules JSON Schema cannot state) and a bounded budget.
 */
export async function runSchemathesis(options: SchemathesisOptions): Promise<SchemathesisResult> {
  if (!existsSync(schemathesisBinary)) {
    throw new Error(`schemathesis is not installed at ${schemathesisBinary}: run \`bash scripts/install-schemathesis.sh\` (.ci/run does)`);
  }
  const args = [
    'run',
    `${options.baseUrl}/openapi.json`,
    '--header',
    `Authorization: Bearer ${options.apiKey}`,
    '--checks',
    'all',
    '--max-examples',
    String(options.maxExamples),
    '--seed',
    String(options.seed),
    '--workers',
    String(options.workers),
    // Bounds an SSE stream of a run that does not end (one schemathesis created itself).
    '--request-timeout',
    '10',
    '--no-color',
  ];
  const child = spawn(schemathesisBinary, args, {
    // schemathesis keeps a cache (`.schemathesis/`) in its working directory: a fresh one per run.
    cwd: mkdtempSync(join(tmpdir(), 'abide-schemathesis-')),
    env: { PATH: process.env.PATH ?? '', HOME: process.env.HOME ?? '', SCHEMATHESIS_HOOKS: 'schemathesis_hooks', PYTHONPATH: import.meta.dirname, PYTHONDONTWRITEBYTECODE: '1' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
  child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
  const exitCode = await new Promise<number | null>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', resolve);
  });
  const generated = /(\d+) generated/.exec(output);
  const failures = /\nFailures:\n([\s\S]*?)\n\n/.exec(output);
  return { exitCode, casesGenerated: generated ? Number(generated[1]) : 0, failures: failures?.[1]?.trim() ?? '', output };
}
