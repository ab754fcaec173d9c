import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { eventStreamProblems, type ClientEvent } from './harness/run-checks.ts';
import { repoRoot } from './harness/service-process.ts';
import { Stack } from './harness/stack.ts';

/** Issue 12: the `abide` binary (node_modules/.bin/abide, what `npx abide` runs) against the real stack. */
const keyA = 'cli-tenant-a-key-00000001';
const keyB = 'cli-tenant-b-key-00000002';
const binDirectory = join(repoRoot, 'node_modules', '.bin');

type Result = { code: number | null; stdout: string; stderr: string };

/** A running `abide` process: its output so far, and its exit. */
function startAbide(args: string[], env: Record<string, string>) {
  const child = spawn(join(binDirectory, 'abide'), args, {
    // As `npx abide` runs it: the workspace's Node 24 first on PATH; stdin is not a terminal.
    env: { PATH: `${binDirectory}:${process.env.PATH ?? ''}`, HOME: process.env.HOME ?? tmpdir(), ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const output = { stdout: '', stderr: '' };
  child.stdout.on('data', (chunk: Buffer) => (output.stdout += chunk.toString('utf8')));
  child.stderr.on('data', (chunk: Buffer) => (output.stderr += chunk.toString('utf8')));
  const done = new Promise<Result>((resolve) => child.on('close', (code) => resolve({ code, ...output })));
  return { output, done, child };
}

describe('abide CLI', () => {
  let stack: Stack;
  let env: Record<string, string>;
  let agentFile: string;
  const abide = (args: string[], extra: Record<string, string> = {}) => startAbide(args, { ...env, ...extra }).done;

  beforeAll(async () => {
    stack = await Stack.start({ apiKeys: `${keyA}:tenant-a,${keyB}:tenant-b` });
    env = { ABIDE_URL: stack.gatewayUrl, ABIDE_API_KEY: keyA };
    const directory = mkdtempSync(join(tmpdir(), 'abide-cli-'));
    agentFile = join(directory, 'greeter.json');
    writeFileSync(
      agentFile,
      JSON.stringify({
        agentId: 'greeter',
        model: { provider: 'scripted', steps: [{ text: 'Looking up the time. ', toolCalls: [{ toolName: 'current_time', args: {} }] }, { text: 'Greetings, it is now.' }], chunkSize: 3 },
        tools: [{ name: 'current_time', kind: 'builtin', description: 'The time', inputSchema: { type: 'object' } }],
      }),
    );
    const approver = await stack.api(keyA, 'PUT', '/v1/agents/approver', {
      model: { provider: 'scripted', steps: [{ text: 'Asking.', toolCalls: [{ toolName: 'echo', args: { text: 'hi' } }] }, { text: 'Approved and echoed.' }] },
      tools: [
        {
          name: 'echo',
          kind: 'builtin',
          needsApproval: true,
          inputSchema: { type: 'object', properties: { text: { type: 'string' } }, required: ['text'], additionalProperties: false },
        },
      ],
    });
    expect(approver.status).toBe(200);
  });

  afterAll(async () => {
    await stack?.stop();
  });

  it('puts an agent from a file, then creates and follows a run to completion', async () => {
    const put = await abide(['agents', 'put', agentFile, '--json']);
    expect(put.code, put.stderr).toBe(0);
    expect(JSON.parse(put.stdout)).toMatchObject({ agentId: 'greeter', version: 1 });

    const run = await abide(['runs', 'create', '--agent', 'greeter', '--input', 'hello', '--follow']);
    expect(run.code, run.stderr).toBe(0);
    expect(run.stdout).toContain('Looking up the time.');
    expect(run.stdout).toContain('Greetings, it is now.');
    expect(run.stderr).toMatch(/→ current_time \(s0c0\)/);
    expect(run.stderr).toContain('✓ completed');
  });

  it('approves from the CLI while another abide follows the run; --json output parses', async () => {
    const created = await abide(['runs', 'create', '--agent', 'approver', '--input', 'ask me', '--json']);
    expect(created.code, created.stderr).toBe(0);
    const { runId } = JSON.parse(created.stdout) as { runId: string };

    const follower = startAbide(['runs', 'follow', runId], env);
    const hint = `abide approve ${runId} s0c0`;
    await expect.poll(() => follower.output.stderr, { timeout: 60_000 }).toContain(hint);

    const pending = await abide(['approvals', '--json']);
    expect(JSON.parse(pending.stdout).approvals).toContainEqual(expect.objectContaining({ runId, toolCallId: 's0c0', toolName: 'echo' }));
    // Arguments that fail the tool's schema: refused by the API, exit 2, and the run still waits.
    const invalid = await abide(['approve', runId, 's0c0', '--args', '{"text":5}']);
    expect(invalid.code).toBe(2);
    expect(invalid.stderr).toContain('invalid_args');

    const approved = await abide(['approve', runId, 's0c0', '--args', '{"text":"from the cli"}', '--json']);
    expect(approved.code, approved.stderr).toBe(0);
    expect(JSON.parse(approved.stdout)).toEqual({ status: 'accepted' });

    const followed = await follower.done;
    expect(followed.code, followed.stderr).toBe(0);
    expect(followed.stdout).toContain('Approved and echoed.');
    expect(followed.stderr).toContain('← echo (s0c0) {"text":"from the cli"}');

    // The same run as JSON lines: every event once, in order, the terminal one last; --after resumes.
    const events = await abide(['runs', 'follow', runId, '--json']);
    expect(events.code).toBe(0);
    const parsed = events.stdout.trim().split('\n').map((line) => JSON.parse(line) as ClientEvent);
    expect(eventStreamProblems(parsed)).toEqual([]);
    expect(parsed.at(-1)?.type).toBe('run.completed');
    const middle = parsed[Math.floor(parsed.length / 2)]!;
    const rest = await abide(['runs', 'follow', runId, '--json', '--after', String(middle.seq)]);
    expect(rest.stdout.trim().split('\n').map((line) => (JSON.parse(line) as ClientEvent).seq)).toEqual(parsed.filter((event) => event.seq > middle.seq).map((event) => event.seq));

    const got = await abide(['runs', 'get', runId, '--json']);
    expect(JSON.parse(got.stdout)).toMatchObject({ runId, status: 'completed', output: 'Approved and echoed.' });
    const list = await abide(['runs', 'list', '--json', '--status', 'completed']);
    expect(JSON.parse(list.stdout).runs.map((run: { runId: string }) => run.runId)).toContain(runId);
    const history = await abide(['runs', 'history', runId, '--json']);
    const transitions = JSON.parse(history.stdout).transitions as Array<{ version: number; status: string; step: number; awaiting: string | null; cause: string; at: string }>;
    expect(transitions.map((transition) => transition.version)).toEqual(transitions.map((_, index) => index + 1));
    expect(transitions.length).toBeGreaterThanOrEqual(4);
    expect(transitions[0]).toMatchObject({ version: 1, status: 'queued', step: 0, awaiting: null, cause: expect.any(String), at: expect.any(String) });
    expect(transitions).toContainEqual(expect.objectContaining({ status: 'suspended', awaiting: 'approvals' }));
    expect(transitions.at(-1)).toMatchObject({ status: 'completed', step: 1, awaiting: null });

    // Another tenant's key: the run does not exist for it.
    const foreign = await abide(['runs', 'get', runId], { ABIDE_API_KEY: keyB });
    expect(foreign.code).toBe(4);
    expect(foreign.stderr).toContain('run_not_found');
  });

  it('resumes a follow after the gateway restarts, showing every event once', async () => {
    const created = await abide(['runs', 'create', '--agent', 'approver', '--input', 'survive a restart', '--json']);
    const { runId } = JSON.parse(created.stdout) as { runId: string };
    const follower = startAbide(['runs', 'follow', runId, '--json'], env);
    await expect.poll(() => follower.output.stdout, { timeout: 60_000 }).toContain('"run.suspended"');
    await stack.service('gateway').restart();
    expect((await stack.api(keyA, 'POST', `/v1/runs/${runId}/approvals/s0c0`, { approved: true })).status).toBe(202);
    const followed = await follower.done;
    expect(followed.code, followed.stderr).toBe(0);
    expect(followed.stderr).toMatch(/connection lost .*; resuming after seq \d+/);
    const events = followed.stdout.trim().split('\n').map((line) => JSON.parse(line) as ClientEvent);
    expect(eventStreamProblems(events)).toEqual([]);
    expect(events.map((event) => event.type)).toEqual(expect.arrayContaining(['run.started', 'run.suspended', 'approval.resolved', 'tool.result', 'run.completed']));
  });

  it('exits non-zero with a clear message for a bad key, a missing run and bad usage', async () => {
    const badKey = await abide(['runs', 'list'], { ABIDE_API_KEY: 'not-a-key-of-this-gateway' });
    expect(badKey.code).toBe(3);
    expect(badKey.stderr).toMatch(/unauthorized.*ABIDE_API_KEY/);
    const badKeyFollow = await abide(['runs', 'follow', 'run_whatever'], { ABIDE_API_KEY: 'not-a-key-of-this-gateway' });
    expect(badKeyFollow.code).toBe(3);
    expect(badKeyFollow.stderr).toContain('unauthorized');
    const missing = await abide(['runs', 'get', 'run_does_not_exist']);
    expect([missing.code, missing.stderr.includes('run_not_found')]).toEqual([4, true]);
    const usage = await abide(['runs', 'create', '--agent', 'greeter']);
    expect(usage.code).toBe(2);
    expect(usage.stderr).toContain('missing --input');
    const unreachable = await abide(['runs', 'list'], { ABIDE_URL: 'http://127.0.0.1:9' });
    expect(unreachable.code).toBe(6);
    expect(unreachable.stderr).toContain('cannot reach the gateway');
  });
});
