import { agentDefinitionSchema, toolDefinitionSchema } from '../agent.ts';
import { zeroUsage, type RunState } from '../run-state.ts';

/**
 * A run's state for unit tests (exported as `@abide/shared/testing`, never by the package's
 * index): run `run_1` of tenant `t1`, queued, with one user message, on a scripted agent `a1`
 * with one `echo` built-in. `overrides` replace fields; `agent` replaces fields of the agent
 * definition (parsed like a `PUT /v1/agents` body) and `agentVersion` its version.
 */
export function testRunState(overrides: Partial<RunState> = {}, options: { at?: string; agent?: Record<string, unknown>; agentVersion?: number } = {}): RunState {
  const at = options.at ?? '2026-11-24T10:00:00.000Z';
  const definition = agentDefinitionSchema.parse({
    model: { provider: 'scripted', steps: [{ text: 'hi' }] },
    tools: [{ name: 'echo', kind: 'builtin', inputSchema: { type: 'object' } }],
    maxSteps: 5,
    ...options.agent,
  });
  return {
    schemaVersion: 1,
    runId: 'run_1',
    tenantId: 't1',
    agentId: 'a1',
    agentSnapshot: { ...definition, tools: definition.tools.map((tool) => toolDefinitionSchema.parse(tool)), tenantId: 't1', agentId: 'a1', version: options.agentVersion ?? 1, createdAt: at, updatedAt: at },
    conversationId: 'conv_1',
    status: 'queued',
    step: 0,
    awaiting: { kind: null, step: 0 },
    messages: [{ role: 'user', content: 'hello' }],
    historyLength: 0,
    toolCalls: [],
    pendingApprovals: [],
    llmAttempts: [],
    usage: zeroUsage,
    output: null,
    error: null,
    cancelReason: null,
    requestHash: 'h',
    metadata: null,
    nextDeadlineAt: null,
    createdAt: at,
    updatedAt: at,
    ...overrides,
  };
}
