/**
 * The benchmark workload of WORKLOAD.md: one run is five durable steps,
 * `llm(0) -> tool(0) -> llm(1) -> tool(1) -> llm(2, final)`, with about 1 KiB of JSON arguments
 * per tool call (returned as they are by the tool) and about 1 KiB of final text.
 */

/** JSON arguments of about `bytes` characters (serialized), deterministic per `step`. */
export function argsOfAbout(bytes: number, step: number): Record<string, unknown> {
  const items: Record<string, unknown>[] = [];
  const args: Record<string, unknown> = { step, request: `benchmark step ${step}`, items };
  for (let index = 0; JSON.stringify(args).length < bytes - 60; index += 1) {
    items.push({ id: `item-${step}-${String(index).padStart(3, '0')}`, qty: index + 1, price: (index * 7) % 100 });
  }
  return args;
}

/** About `chars` characters of prose, deterministic. */
export function textOfAbout(chars: number): string {
  const sentence = 'The benchmark run has finished its two tool calls and answers with this paragraph. ';
  return sentence.repeat(Math.ceil(chars / sentence.length)).slice(0, chars).trimEnd() + '.';
}

export const toolArgs = [argsOfAbout(1024, 0), argsOfAbout(1024, 1)] as const;
export const finalText = textOfAbout(1024);

/**
 * Text given to the two tool-calling model steps when `LLM_MS > 0`: the scripted model applies
 * `delayMs` only before text chunks, so a step with tool calls and no text would not wait at all
 * (reported to the lead; see the bench's notes).
 */
export const toolStepText = 'Calling the tool.';

export type WorkloadOptions = {
  llmMs: number;
  toolMs: number;
  /** Base URL of the bench's HTTP tool server (sleeps `toolMs`, echoes), used when `toolMs > 0` and for approvals. */
  toolServerUrl: string;
};

const anyObject = { type: 'object' } as const;

/** The name of the workload's tool: the built-in `echo` at TOOL_MS=0, else an HTTP tool that sleeps and echoes. */
export function workloadToolName(options: WorkloadOptions): string {
  return options.toolMs > 0 ? 'echo_slow' : 'echo';
}

function workloadTool(options: WorkloadOptions) {
  if (options.toolMs === 0) return { name: 'echo', kind: 'builtin', description: 'Returns its arguments', inputSchema: anyObject };
  return {
    name: 'echo_slow',
    kind: 'http',
    description: `Sleeps ${options.toolMs} ms, then returns its arguments`,
    inputSchema: anyObject,
    http: { url: `${options.toolServerUrl}/echo` },
  };
}

function scriptedModel(options: WorkloadOptions, step0Tool: string, step1Tool: string) {
  const text = options.llmMs > 0 ? { text: toolStepText } : {};
  return {
    provider: 'scripted',
    // One chunk per step: `delayMs` (applied before each chunk) is then the step's latency.
    chunkSize: 4096,
    delayMs: options.llmMs,
    steps: [
      { ...text, toolCalls: [{ toolName: step0Tool, args: toolArgs[0] }] },
      { ...text, toolCalls: [{ toolName: step1Tool, args: toolArgs[1] }] },
      { text: finalText },
    ],
  };
}

/** `PUT /v1/agents/bench` body: the workload agent. */
export function workloadAgent(options: WorkloadOptions) {
  const tool = workloadToolName(options);
  return {
    system: 'You are the Abide benchmark agent.',
    model: scriptedModel(options, tool, tool),
    tools: [workloadTool(options)],
    maxSteps: 5,
  };
}

/** The name of the HTTP tool that needs approval (served by the bench at `/approval`). */
export const approvalToolName = 'approved_echo';

/** `PUT /v1/agents/bench-approval` body: the workload agent whose step-0 tool needs approval. */
export function approvalAgent(options: WorkloadOptions) {
  const tool = workloadToolName(options);
  return {
    system: 'You are the Abide benchmark agent (with an approval).',
    model: scriptedModel(options, approvalToolName, tool),
    tools: [
      {
        name: approvalToolName,
        kind: 'http',
        description: 'Returns its arguments, once a human approved the call',
        inputSchema: anyObject,
        needsApproval: true,
        http: { url: `${options.toolServerUrl}/approval` },
      },
      workloadTool(options),
    ],
    maxSteps: 5,
  };
}

/**
 * `PUT /v1/agents/<id>` body for the bytes probe: the workload's shape with `rounds` tool rounds
 * (each a model step calling the tool with about 1 KiB of arguments, then the tool step), then
 * the final model step: `2 × rounds + 1` steps (2 rounds are the workload's 5 steps).
 */
export function toolRoundsAgent(options: WorkloadOptions, rounds: number) {
  const tool = workloadToolName(options);
  return {
    system: 'You are the Abide benchmark agent.',
    model: {
      provider: 'scripted',
      chunkSize: 4096,
      delayMs: options.llmMs,
      steps: [...Array.from({ length: rounds }, (_, step) => ({ toolCalls: [{ toolName: tool, args: argsOfAbout(1024, step) }] })), { text: finalText }],
    },
    tools: [workloadTool(options)],
    maxSteps: rounds + 1,
  };
}
