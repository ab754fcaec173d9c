import type { ToolDefinition } from './agent.ts';
import type { LlmRequestPayload, ToolRequestPayload } from './messages.ts';
import type { RunState } from './run-state.ts';

/** Default timeouts (DESIGN §4). */
export const defaultTimeouts = {
  llmStepMs: 60 * 60_000,
  functionToolMs: 10 * 60_000,
  mcpToolMs: 30 * 60_000,
  approvalMs: 30 * 60_000,
} as const;

export function toolTimeoutMs(tool: ToolDefinition): number {
  return tool.timeoutMs ?? defaultTimeouts.functionToolMs;
}

/** The model input of `step`, rebuilt from the committed state (the conversation is not stored in the outbox). */
export function buildLlmRequest(state: RunState, step: number): LlmRequestPayload {
  const agent = state.agentSnapshot;
  return {
    step,
    model: agent.model,
    tools: agent.tools.map((tool) => ({ name: tool.name, description: tool.description, inputSchema: tool.inputSchema })),
    timeoutMs: agent.limits.llmStepTimeoutMs ?? defaultTimeouts.llmStepMs,
    body: { ...(agent.system === undefined ? {} : { system: agent.system }), messages: state.messages },
  };
}

/** The request to execute a recorded tool call. */
export function buildToolRequest(state: RunState, toolCallId: string): ToolRequestPayload {
  const call = state.toolCalls.find((candidate) => candidate.toolCallId === toolCallId);
  if (!call) throw new Error(`run ${state.runId} has no tool call ${toolCallId}`);
  const tool = state.agentSnapshot.tools.find((candidate) => candidate.name === call.toolName);
  if (!tool) throw new Error(`run ${state.runId} has no tool ${call.toolName}`);
  const args = call.approval?.approved && call.approval.args !== undefined ? call.approval.args : call.args;
  return { toolCallId, step: call.step, tool, args, timeoutMs: toolTimeoutMs(tool) };
}
