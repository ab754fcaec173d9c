import { z } from 'zod';
import type { ToolOutcome } from '@abide/shared';
import { errorOutcome, type ToolInvocation } from './tool-invocation.ts';

const sleepArgsSchema = z.object({ ms: z.int().min(0) });
const anyObjectSchema = z.looseObject({});

/** The built-in tools (DESIGN §8): `echo`, `sleep`, `current_time`. */
export function createBuiltinTools(deps: { now?: () => number } = {}) {
  const now = deps.now ?? Date.now;

  async function sleep(invocation: ToolInvocation): Promise<ToolOutcome> {
    const parsed = sleepArgsSchema.safeParse(invocation.args);
    if (!parsed.success) return errorOutcome('tool_error', `invalid arguments for sleep: ${z.prettifyError(parsed.error)}`);
    const { ms } = parsed.data;
    if (ms > invocation.timeoutMs) return errorOutcome('tool_error', `invalid arguments for sleep: ms must be at most the tool's timeout (${invocation.timeoutMs} ms)`);
    await abortableDelay(ms, invocation.signal);
    return { kind: 'success', value: { slept: ms } };
  }

  async function currentTime(invocation: ToolInvocation): Promise<ToolOutcome> {
    const parsed = anyObjectSchema.safeParse(invocation.args ?? {});
    if (!parsed.success) return errorOutcome('tool_error', 'invalid arguments for current_time: expected an object');
    const epochMs = now();
    return { kind: 'success', value: { iso: new Date(epochMs).toISOString(), epochMs } };
  }

  async function echo(invocation: ToolInvocation): Promise<ToolOutcome> {
    return { kind: 'success', value: invocation.args ?? null };
  }

  const tools: Record<string, (invocation: ToolInvocation) => Promise<ToolOutcome>> = { echo, sleep, current_time: currentTime };

  return {
    /** Runs a built-in; an unknown name or a bad argument is a final `tool_error`. */
    async run(invocation: ToolInvocation): Promise<ToolOutcome> {
      invocation.signal.throwIfAborted();
      const tool = Object.hasOwn(tools, invocation.tool.name) ? tools[invocation.tool.name] : undefined;
      if (!tool) return errorOutcome('tool_error', `unknown built-in tool "${invocation.tool.name}"`);
      return tool(invocation);
    },
  };
}
export type BuiltinTools = ReturnType<typeof createBuiltinTools>;

/** Waits `ms`, or rejects with the signal's reason as soon as it aborts. */
export function abortableDelay(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}
