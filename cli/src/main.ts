import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { parseArgs } from 'node:util';
import { createClient, type Client } from './client.ts';
import { CliError, exitCodes, type ExitCode } from './errors.ts';
import { followRun } from './follow.ts';

export const usage = `abide: the command line client of Abide's public API

Usage:
  abide agents put <file.json> [--id <agentId>]   create or replace an agent (id from --id, the file's "agentId", or the file name)
  abide agents get <agentId>
  abide runs create --agent <id> --input <text> [--conversation <id>] [--idempotency-key <key>] [--follow]
  abide runs list [--status <status>] [--conversation <id>] [--limit <n>] [--cursor <cursor>]
  abide runs get <runId>
  abide runs follow <runId> [--after <seq>]       stream the run; prompts for approvals in a terminal
  abide runs history <runId> [--after <version>] [--limit <n>]
  abide runs cancel <runId> [--reason <text>]
  abide approvals                                 pending approvals across runs
  abide approve <runId> <toolCallId> [--deny] [--reason <text>] [--args <json>]

Options:
  --url <url>        the gateway (default: $ABIDE_URL, else http://127.0.0.1:8080)
  --api-key <key>    the API key (default: $ABIDE_API_KEY)
  --json             machine-readable output (follow: one event per line)
  -h, --help         this text

Exit codes: 0 ok · 1 unexpected failure · 2 usage or invalid request · 3 unauthorized ·
4 not found · 5 conflict · 6 unavailable or unreachable (retry) · 10 followed run failed ·
11 followed run cancelled`;

const optionSpec = {
  url: { type: 'string' },
  'api-key': { type: 'string' },
  json: { type: 'boolean', default: false },
  help: { type: 'boolean', short: 'h', default: false },
  id: { type: 'string' },
  agent: { type: 'string' },
  input: { type: 'string' },
  conversation: { type: 'string' },
  'idempotency-key': { type: 'string' },
  follow: { type: 'boolean', default: false },
  status: { type: 'string' },
  limit: { type: 'string' },
  cursor: { type: 'string' },
  after: { type: 'string' },
  reason: { type: 'string' },
  deny: { type: 'boolean', default: false },
  args: { type: 'string' },
} as const;

type Values = ReturnType<typeof parseArgs<{ options: typeof optionSpec; allowPositionals: true }>>['values'];

export type Io = { stdout: NodeJS.WritableStream; stderr: NodeJS.WritableStream; env: Record<string, string | undefined>; interactive: boolean };

const usageError = (message: string) => new CliError('usage', `${message}\n\n${usage}`, exitCodes.usage);

function need(value: string | undefined, what: string): string {
  if (value === undefined || value === '') throw usageError(`missing ${what}`);
  return value;
}

function parseSeq(value: string | undefined, flag: string): number | undefined {
  if (value === undefined) return undefined;
  if (!/^(0|[1-9]\d{0,15})$/.test(value)) throw usageError(`${flag} must be a non-negative integer`);
  return Number(value);
}

function readJsonFile(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    throw new CliError('usage', `cannot read ${path}: ${(error as Error).message}`, exitCodes.usage);
  }
  try {
    const value = JSON.parse(text) as unknown;
    if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new Error('not a JSON object');
    return value as Record<string, unknown>;
  } catch (error) {
    throw new CliError('usage', `${path} is not a JSON object: ${(error as Error).message}`, exitCodes.usage);
  }
}

function print(io: Io, json: boolean, value: unknown, human: () => string): void {
  io.stdout.write(json ? `${JSON.stringify(value)}\n` : `${human()}\n`);
}

function table(rows: Array<Record<string, unknown>>, columns: string[]): string {
  if (rows.length === 0) return '(none)';
  const cells = rows.map((row) => columns.map((column) => (row[column] === undefined || row[column] === null ? '' : typeof row[column] === 'string' ? (row[column] as string) : JSON.stringify(row[column]))));
  const widths = columns.map((column, index) => Math.min(60, Math.max(column.length, ...cells.map((row) => row[index]!.length))));
  const line = (values: string[]) => values.map((value, index) => value.slice(0, 60).padEnd(widths[index]!)).join('  ').trimEnd();
  return [line(columns), ...cells.map(line)].join('\n');
}

async function run(client: Client, command: string[], values: Values, io: Io): Promise<ExitCode> {
  const json = values.json === true;
  const [group, action, ...rest] = command;
  const follow = (runId: string, after: number | undefined) =>
    followRun(client, runId, { after, json, interactive: io.interactive && !json, stdout: io.stdout, stderr: io.stderr });

  if (group === 'agents' && action === 'put') {
    const path = need(rest[0], '<file.json>');
    const { agentId: fileAgentId, ...definition } = readJsonFile(path);
    const agentId = values.id ?? (typeof fileAgentId === 'string' ? fileAgentId : basename(path).replace(/\.json$/, ''));
    const { body } = await client.putAgent(agentId, definition);
    print(io, json, body, () => `agent ${agentId} version ${String(body.version)}`);
    return exitCodes.ok;
  }
  if (group === 'agents' && action === 'get') {
    const { body } = await client.getAgent(need(rest[0], '<agentId>'));
    print(io, json, body, () => JSON.stringify(body, null, 2));
    return exitCodes.ok;
  }
  if (group === 'runs' && action === 'create') {
    const body = {
      agentId: need(values.agent, '--agent <id>'),
      input: need(values.input, '--input <text>'),
      ...(values.conversation ? { conversationId: values.conversation } : {}),
    };
    const { body: created } = await client.createRun(body, values['idempotency-key']);
    if (!values.follow) {
      print(io, json, created, () => `${created.runId}  ${created.status}  conversation ${created.conversationId}`);
      return exitCodes.ok;
    }
    if (json) io.stdout.write(`${JSON.stringify({ type: 'run.created', ...created })}\n`);
    else io.stderr.write(`· created ${created.runId}\n`);
    return follow(created.runId, undefined);
  }
  if (group === 'runs' && action === 'list') {
    const { body } = await client.listRuns({
      ...(values.status ? { status: values.status } : {}),
      ...(values.conversation ? { conversationId: values.conversation } : {}),
      ...(values.limit ? { limit: values.limit } : {}),
      ...(values.cursor ? { cursor: values.cursor } : {}),
    });
    print(io, json, body, () => table(body.runs, ['runId', 'status', 'agentId', 'conversationId', 'createdAt']) + (body.nextCursor ? `\nmore: --cursor ${body.nextCursor}` : ''));
    return exitCodes.ok;
  }
  if (group === 'runs' && action === 'get') {
    const { body } = await client.getRun(need(rest[0], '<runId>'));
    print(io, json, body, () => JSON.stringify(body, null, 2));
    return exitCodes.ok;
  }
  if (group === 'runs' && action === 'follow') {
    return follow(need(rest[0], '<runId>'), parseSeq(values.after, '--after'));
  }
  if (group === 'runs' && action === 'history') {
    const { body } = await client.history(need(rest[0], '<runId>'), values.after, values.limit);
    print(io, json, body, () => table(body.transitions, ['version', 'status', 'step', 'awaiting', 'cause', 'at']) + (body.nextCursor ? `\nmore: --after ${body.nextCursor}` : ''));
    return exitCodes.ok;
  }
  if (group === 'runs' && action === 'cancel') {
    const { body } = await client.cancelRun(need(rest[0], '<runId>'), values.reason);
    print(io, json, body, () => `cancel ${body.status}`);
    return exitCodes.ok;
  }
  if (group === 'approvals' && action === undefined) {
    const { body } = await client.pendingApprovals();
    print(io, json, body, () => table(body.approvals, ['runId', 'toolCallId', 'toolName', 'args', 'expiresAt']));
    return exitCodes.ok;
  }
  if (group === 'approve') {
    const runId = need(action, '<runId>');
    const toolCallId = need(rest[0], '<toolCallId>');
    let args: Record<string, unknown> | undefined;
    if (values.args !== undefined) {
      if (values.deny) throw usageError('--args edits the arguments of an approval; it cannot go with --deny');
      try {
        args = JSON.parse(values.args) as Record<string, unknown>;
      } catch (error) {
        throw usageError(`--args is not JSON: ${(error as Error).message}`);
      }
    }
    const decision = { approved: !values.deny, ...(values.reason ? { reason: values.reason } : {}), ...(args ? { args } : {}) };
    const { body } = await client.decide(runId, toolCallId, decision);
    print(io, json, body, () => `${values.deny ? 'denied' : 'approved'} ${toolCallId} (${body.status})`);
    return exitCodes.ok;
  }
  throw usageError(command.length ? `unknown command: ${command.join(' ')}` : 'no command given');
}

/** Runs the CLI with `argv` (without node and the script) and returns the exit code; errors go to stderr. */
export async function main(argv: string[], io: Io): Promise<ExitCode> {
  try {
    let parsed;
    try {
      parsed = parseArgs({ args: argv, options: optionSpec, allowPositionals: true, strict: true });
    } catch (error) {
      throw usageError((error as Error).message);
    }
    const { values, positionals } = parsed;
    if (values.help) {
      io.stdout.write(`${usage}\n`);
      return exitCodes.ok;
    }
    const apiKey = values['api-key'] ?? io.env.ABIDE_API_KEY;
    if (!apiKey) throw new CliError('unauthorized', 'no API key: set ABIDE_API_KEY or pass --api-key', exitCodes.unauthorized);
    const url = values.url ?? io.env.ABIDE_URL ?? 'http://127.0.0.1:8080';
    if (!/^https?:\/\/[^/]/.test(url)) throw usageError(`the gateway URL must start with http:// or https:// (got ${url})`);
    return await run(createClient({ url, apiKey }), positionals, values, io);
  } catch (error) {
    if (error instanceof CliError) {
      io.stderr.write(`abide: ${error.message}\n`);
      return error.exitCode;
    }
    io.stderr.write(`abide: unexpected error: ${(error as Error)?.stack ?? String(error)}\n`);
    return exitCodes.failure;
  }
}
