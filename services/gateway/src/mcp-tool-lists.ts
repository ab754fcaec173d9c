import {
  agentLimits,
  ApiError,
  defaultMcpToolTimeoutMs,
  mcpAbideToolName,
  type AgentToolEntry,
  type McpListReply,
  type McpListRequest,
  type McpServerEntry,
  type ToolDefinition,
} from '@abide/shared';

export type McpToolLister = (request: McpListRequest) => Promise<McpListReply>;

/**
 * Turns an agent definition's tool entries into the tools stored with the agent version (issue 13):
 * each MCP server entry is listed (`tools/list`, through a tool-worker) and each tool it may use
 * becomes a tool named `<entry name>__<tool name>`, with the server's description and input schema
 * and the entry's policy (approval, timeouts — 30 min by default —, onOutcomeUnknown). A run is
 * pinned to this list: a server that changes its tools changes an agent only on its next PUT.
 */
export async function expandToolEntries(tenantId: string, entries: readonly AgentToolEntry[], lister: McpToolLister | undefined): Promise<ToolDefinition[]> {
  const tools: ToolDefinition[] = [];
  for (const [index, entry] of entries.entries()) {
    if (entry.kind !== 'mcp') {
      tools.push(entry);
      continue;
    }
    if (!lister) throw new ApiError('unavailable', 'MCP servers cannot be listed by this gateway', { headers: { 'retry-after': '5' } });
    const reply = await lister({ v: 1, tenantId, server: entry.server, tools: entry.tools });
    if (!reply.ok) {
      if (reply.error.code === 'unavailable') throw new ApiError('unavailable', `body.tools.${index}: ${reply.error.message}`, { headers: { 'retry-after': '5' } });
      throw new ApiError('mcp_list_failed', `body.tools.${index}: listing the MCP server's tools failed (${reply.error.code}: ${reply.error.message})`);
    }
    tools.push(...selectTools(entry, index, reply.tools));
    if (tools.length > agentLimits.maxTools) {
      throw new ApiError('invalid_request', `body.tools: the agent would have more than ${agentLimits.maxTools} tools; name a subset of the MCP server's tools in body.tools.${index}.tools`);
    }
  }
  const seen = new Set<string>();
  for (const tool of tools) {
    if (seen.has(tool.name)) throw new ApiError('invalid_request', `body.tools: duplicate tool name "${tool.name}" (MCP tools are named <server name>__<tool name>)`);
    seen.add(tool.name);
  }
  return tools;
}

function selectTools(entry: McpServerEntry, index: number, listed: Extract<McpListReply, { ok: true }>['tools']): ToolDefinition[] {
  const byName = new Map(listed.map((tool) => [tool.name, tool]));
  const wanted = entry.tools === 'all' ? listed : entry.tools.map((name) => {
    const tool = byName.get(name);
    if (!tool) throw new ApiError('invalid_request', `body.tools.${index}.tools: the MCP server has no tool ${JSON.stringify(name)}`);
    return tool;
  });
  return wanted.map((tool) => {
    const name = mcpAbideToolName(entry.name, tool.name);
    if (!name) {
      throw new ApiError(
        'invalid_request',
        `body.tools.${index}: MCP tool ${JSON.stringify(tool.name)} cannot be named "${entry.name}__${tool.name}" (tool names match [A-Za-z0-9_-]{1,64}); name the tools to use in body.tools.${index}.tools`,
      );
    }
    return {
      name,
      description: tool.description,
      inputSchema: tool.inputSchema,
      kind: 'mcp' as const,
      mcp: { server: entry.server, tool: tool.name },
      needsApproval: entry.needsApproval,
      timeoutMs: entry.timeoutMs ?? defaultMcpToolTimeoutMs,
      ...(entry.approvalTimeoutMs === undefined ? {} : { approvalTimeoutMs: entry.approvalTimeoutMs }),
      onApprovalTimeout: entry.onApprovalTimeout,
      onOutcomeUnknown: entry.onOutcomeUnknown,
    };
  });
}
