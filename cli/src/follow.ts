import { createInterface } from 'node:readline/promises';
import WebSocket from 'ws';
import type { Client } from './client.ts';
import { CliError, exitCodes, fromApiError, type ExitCode } from './errors.ts';

type Event = { seq: number; type: string; runId: string; [field: string]: unknown };
type Frame = { type: string; runId?: string; event?: Event; code?: string; message?: string };

export type FollowOptions = {
  /** Resume after this `seq` (from the run's first event when undefined). */
  after: number | undefined;
  /** One JSON event per line on stdout instead of text. */
  json: boolean;
  /** Prompt for approvals (stdin and stderr are terminals, and not `--json`). */
  interactive: boolean;
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  /** Consecutive failed connection attempts before giving up. @default 8 */
  maxAttempts?: number;
};

/** Codes in an `error` frame after which reconnecting would not help. */
const finalFrameCodes = new Set(['run_not_found', 'cursor_expired', 'unauthorized', 'invalid_request', 'invalid_cursor', 'forbidden']);

const exitByTerminalType: Record<string, ExitCode> = { 'run.completed': exitCodes.ok, 'run.failed': exitCodes.runFailed, 'run.cancelled': exitCodes.runCancelled };

/**
 * Follows a run over `GET /v1/ws` until its terminal event and returns the exit code for it.
 * After a dropped connection it reconnects (backing off up to 5 s) and subscribes again with
 * `after` = the last `seq` received, so every event is shown once, in order.
 */
export async function followRun(client: Client, runId: string, options: FollowOptions): Promise<ExitCode> {
  const maxAttempts = options.maxAttempts ?? 8;
  const renderer = createRenderer(client, runId, options);
  let cursor = options.after;
  let failedAttempts = 0;
  let delayMs = 250;
  for (;;) {
    const outcome = await followOnce(client, runId, cursor, (event) => {
      if (cursor !== undefined && event.seq <= cursor) return;
      cursor = event.seq;
      failedAttempts = 0;
      renderer.render(event);
    });
    if (outcome.kind === 'ended') {
      await renderer.idle();
      return exitByTerminalType[outcome.type] ?? exitCodes.failure;
    }
    failedAttempts += 1;
    if (failedAttempts >= maxAttempts) throw new CliError('network', `lost the connection to ${client.url} (${outcome.reason}) and could not resume after ${maxAttempts} attempts`, exitCodes.unavailable);
    // On stderr even with --json: stdout stays one event per line.
    options.stderr.write(`· connection lost (${outcome.reason}); resuming after seq ${cursor ?? 'start'}\n`);
    await new Promise((resolve) => setTimeout(resolve, delayMs));
    delayMs = Math.min(delayMs * 2, 5_000);
  }
}

type Outcome = { kind: 'ended'; type: string } | { kind: 'dropped'; reason: string };

function followOnce(client: Client, runId: string, after: number | undefined, onEvent: (event: Event) => void): Promise<Outcome> {
  return new Promise((resolve, reject) => {
    const socket = new WebSocket(`${client.url.replace(/^http/, 'ws')}/v1/ws`, { headers: { authorization: `Bearer ${client.apiKey}` }, handshakeTimeout: 10_000 });
    let settled = false;
    const settle = (action: () => void) => {
      if (settled) return;
      settled = true;
      action();
      socket.terminate();
    };
    socket.on('unexpected-response', (_request, response) => {
      const status = response.statusCode ?? 0;
      let text = '';
      response.on('data', (chunk: Buffer) => (text += chunk.toString('utf8')));
      response.on('end', () => {
        let error: { code?: string; message?: string } | undefined;
        try {
          error = (JSON.parse(text) as { error?: { code?: string; message?: string } }).error;
        } catch {
          // Not the API's error body: judged by the status alone.
          error = undefined;
        }
        if (status >= 500 || status === 429) settle(() => resolve({ kind: 'dropped', reason: `HTTP ${status}` }));
        else settle(() => reject(fromApiError(status, error?.code, error?.message)));
      });
    });
    socket.on('open', () => socket.send(JSON.stringify({ type: 'subscribe', runId, ...(after === undefined ? {} : { after }) })));
    socket.on('message', (data) => {
      let frame: Frame;
      try {
        frame = JSON.parse(String(data)) as Frame;
      } catch {
        // The gateway only sends JSON; a broken frame means a broken connection: resume from the cursor.
        settle(() => resolve({ kind: 'dropped', reason: 'a frame that is not JSON' }));
        return;
      }
      if (frame.type === 'event' && frame.event && frame.runId === runId) {
        onEvent(frame.event);
        if (frame.event.type in exitByTerminalType) settle(() => resolve({ kind: 'ended', type: frame.event!.type }));
      } else if (frame.type === 'error') {
        if (frame.code && finalFrameCodes.has(frame.code)) settle(() => reject(fromApiError(0, frame.code, frame.message)));
        else settle(() => resolve({ kind: 'dropped', reason: `${frame.code}: ${frame.message}` }));
      }
    });
    socket.on('error', (error) => settle(() => resolve({ kind: 'dropped', reason: (error as NodeJS.ErrnoException).code ?? error.message })));
    socket.on('close', (code) => settle(() => resolve({ kind: 'dropped', reason: `closed (${code})` })));
  });
}

const compact = (value: unknown) => {
  const text = JSON.stringify(value) ?? 'undefined';
  return text.length > 400 ? `${text.slice(0, 400)}…` : text;
};

/** Turns events into output: model text on stdout, progress on stderr; approval prompts in a terminal. */
function createRenderer(client: Client, runId: string, options: FollowOptions) {
  const { stdout, stderr } = options;
  const printed = new Map<number, { attempt: number; text: string }>();
  let atLineStart = true;
  let prompts: Promise<void> = Promise.resolve();
  const note = (line: string) => {
    if (!atLineStart) stdout.write('\n');
    atLineStart = true;
    stderr.write(`${line}\n`);
  };
  const writeText = (text: string) => {
    if (!text) return;
    stdout.write(text);
    atLineStart = text.endsWith('\n');
  };

  async function ask(toolCallId: string, toolName: string, args: unknown): Promise<void> {
    const readline = createInterface({ input: process.stdin, output: stderr });
    try {
      for (;;) {
        const answer = (await readline.question(`? approve ${toolName} (${toolCallId}) ${compact(args)} [y]es / [n]o / [e]dit args: `)).trim().toLowerCase();
        let decision: { approved: boolean; reason?: string; args?: Record<string, unknown> } | undefined;
        if (answer === 'y' || answer === 'yes') decision = { approved: true };
        else if (answer === 'n' || answer === 'no') {
          const reason = (await readline.question('  reason (optional): ')).trim();
          decision = { approved: false, ...(reason ? { reason } : {}) };
        } else if (answer === 'e' || answer === 'edit') {
          const text = await readline.question('  arguments as JSON: ');
          try {
            decision = { approved: true, args: JSON.parse(text) as Record<string, unknown> };
          } catch (error) {
            stderr.write(`  not JSON: ${(error as Error).message}\n`);
            continue;
          }
        } else continue;
        try {
          const result = await client.decide(runId, toolCallId, decision);
          stderr.write(`  ${decision.approved ? 'approved' : 'denied'} (${result.status})\n`);
          return;
        } catch (error) {
          stderr.write(`  ${(error as Error).message}\n`);
          if (!(error instanceof CliError) || error.code !== 'invalid_args') return;
        }
      }
    } finally {
      readline.close();
    }
  }

  return {
    render(event: Event): void {
      if (options.json) {
        stdout.write(`${JSON.stringify(event)}\n`);
        return;
      }
      switch (event.type) {
        case 'run.started':
          note(`· run ${runId} started (agent ${String(event.agentId)} v${String(event.agentVersion)}, conversation ${String(event.conversationId)})`);
          break;
        case 'message.delta': {
          const step = Number(event.step);
          const attempt = Number(event.attempt);
          const current = printed.get(step);
          if (current && current.attempt !== attempt) note(`· step ${step}: attempt ${attempt} (the earlier attempt's text is void)`);
          const text = current && current.attempt === attempt ? current.text : '';
          printed.set(step, { attempt, text: text + String(event.text) });
          writeText(String(event.text));
          break;
        }
        case 'message.completed': {
          const step = Number(event.step);
          const text = String(event.text);
          const current = printed.get(step);
          if (!current) writeText(text);
          else if (current.text !== text) {
            note(`· step ${step}: the recorded text is:`);
            writeText(text);
          }
          printed.set(step, { attempt: Number(event.attempt), text });
          if (text && !atLineStart) writeText('\n');
          break;
        }
        case 'tool.call':
          note(`→ ${String(event.toolName)} (${String(event.toolCallId)}) ${compact(event.args)}${event.needsApproval ? ' [needs approval]' : ''}`);
          break;
        case 'approval.requested': {
          const toolCallId = String(event.toolCallId);
          const toolName = String(event.toolName);
          if (options.interactive) prompts = prompts.then(() => ask(toolCallId, toolName, event.args));
          else note(`⏸ waiting for approval: abide approve ${runId} ${toolCallId}   (or --deny --reason <text>)`);
          break;
        }
        case 'approval.resolved':
          note(`· ${String(event.toolCallId)} ${event.approved ? 'approved' : 'denied'}${event.reason ? `: ${String(event.reason)}` : ''} (${String(event.source)})`);
          break;
        case 'tool.result':
          note(event.error ? `← ${String(event.toolName)} (${String(event.toolCallId)}) failed: ${compact(event.error)}` : `← ${String(event.toolName)} (${String(event.toolCallId)}) ${compact(event.result)}`);
          break;
        case 'run.suspended':
          note(`· suspended, waiting for ${(event.pendingApprovals as string[]).join(', ')}`);
          break;
        case 'run.resumed':
          note('· resumed');
          break;
        case 'run.completed': {
          const usage = event.usage as { inputTokens: number; outputTokens: number; totalTokens: number };
          const output = String(event.output);
          if (output && ![...printed.values()].some((step) => step.text === output)) {
            writeText(output);
            if (!atLineStart) writeText('\n');
          }
          note(`✓ completed (${usage.totalTokens} tokens: ${usage.inputTokens} in, ${usage.outputTokens} out)`);
          break;
        }
        case 'run.failed': {
          const error = event.error as { code: string; message: string };
          note(`✗ failed: ${error.code}: ${error.message}`);
          break;
        }
        case 'run.cancelled':
          note(`✗ cancelled${event.reason ? `: ${String(event.reason)}` : ''}`);
          break;
        default:
          break;
      }
    },
    /** Waits for an open approval prompt to finish. */
    idle: () => prompts,
  };
}
