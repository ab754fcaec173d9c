import { agentDefinitionSchema, agentLimits, ApiError, jsonByteLength, type Agent, type AgentDefinition, type ToolDefinition } from '@abide/shared';
import { expandToolEntries, type McpToolLister } from './mcp-tool-lists.ts';
import type { GatewayStore } from './ports.ts';
import type { ArgsValidation } from './args-validation.ts';
import { parseOr400 } from './validation.ts';

const day = 86_400_000;

/** The longest deadline an agent may set (tool and step timeouts): inside the events' retention minus a day. */
export const maxAgentDeadlineMs = (eventsMaxAgeMs: number) => eventsMaxAgeMs - day;
/** Concurrent PUTs of one agent each take the next version; this bounds the retries of one request. */
const maxVersionAttempts = 20;

/**
 * Agents (DESIGN §3, §8): each PUT inserts `agent_versions` `<tenantId>:<agentId>:<version>`
 * (the insert decides the version), then rewrites `agents` by `_id`.
 */
export function createAgentService(deps: { store: GatewayStore; toolArgs: Pick<ArgsValidation, 'checkSchema'>; eventsMaxAgeMs: number; listMcpTools?: McpToolLister | undefined; now?: () => Date }) {
  const { store, toolArgs } = deps;
  const now = deps.now ?? (() => new Date());

  /** Rules zod cannot express: compilable tool schemas, deadlines inside the events' retention. */
  function checkDefinition(tenantId: string, definition: AgentDefinition, tools: readonly ToolDefinition[]): void {
    const maxDeadlineMs = maxAgentDeadlineMs(deps.eventsMaxAgeMs);
    const tooLong = (value: number | undefined, field: string) => {
      if (value !== undefined && value > maxDeadlineMs) {
        throw new ApiError('invalid_request', `body.${field}: must be at most ${maxDeadlineMs} ms (EVENTS_MAX_AGE minus a day)`);
      }
    };
    tooLong(definition.limits.llmStepTimeoutMs, 'limits.llmStepTimeoutMs');
    tools.forEach((tool, index) => {
      tooLong(tool.timeoutMs, `tools.${index}.timeoutMs`);
      tooLong(tool.approvalTimeoutMs, `tools.${index}.approvalTimeoutMs`);
      const problem = toolArgs.checkSchema(tenantId, tool.inputSchema);
      if (problem) throw new ApiError('invalid_request', `body.tools.${index}.inputSchema${problem.path} (tool ${tool.name}): ${problem.message}`);
    });
  }

  return {
    /** Creates or replaces an agent; answers the new version. */
    async putAgent(tenantId: string, agentId: string, body: unknown): Promise<Agent> {
      const definition = parseOr400(agentDefinitionSchema, body, 'body');
      // MCP server entries become the tools their servers list (one tool-worker round trip per server).
      const tools = await expandToolEntries(tenantId, definition.tools, deps.listMcpTools);
      // The listed tools count against the definition's size like declared ones (the agent travels in every model request).
      const expandedBytes = jsonByteLength({ ...definition, tools });
      if (expandedBytes > agentLimits.maxDefinitionBytes) {
        throw new ApiError('invalid_request', `body: the agent definition with its MCP servers' tools must be at most ${agentLimits.maxDefinitionBytes} bytes as JSON (is ${expandedBytes}); name fewer MCP tools`);
      }
      checkDefinition(tenantId, definition, tools);
      for (let attempt = 0; attempt < maxVersionAttempts; attempt += 1) {
        const current = await store.findAgent(tenantId, agentId);
        const at = now().toISOString();
        const agent: Agent = {
          tenantId,
          agentId,
          version: (current?.version ?? 0) + 1,
          ...(definition.system === undefined ? {} : { system: definition.system }),
          model: definition.model,
          tools,
          maxSteps: definition.maxSteps,
          limits: definition.limits,
          createdAt: current?.createdAt ?? at,
          updatedAt: at,
        };
        // Another PUT took this version first: read again and take the next one.
        if (!(await store.insertAgentVersion(agent))) continue;
        await store.writeAgent(agent);
        return agent;
      }
      throw new ApiError('unavailable', `agent ${agentId} is being changed by too many requests at once; retry`, { headers: { 'retry-after': '1' } });
    },

    /** The agent in force, or 404 `agent_not_found`. */
    async getAgent(tenantId: string, agentId: string): Promise<Agent> {
      const agent = await store.findAgent(tenantId, agentId);
      if (!agent) throw new ApiError('agent_not_found', `agent ${agentId} not found`);
      return agent;
    },
  };
}
export type AgentService = ReturnType<typeof createAgentService>;
