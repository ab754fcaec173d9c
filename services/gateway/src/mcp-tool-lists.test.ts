import { describe, expect, it, vi } from 'vitest';
import { agentDefinitionSchema, ApiError, type McpListReply } from '@abide/shared';
import { expandToolEntries, type McpToolLister } from './mcp-tool-lists.ts';

const server = { transport: 'streamable-http', url: 'https://mcp.example/mcp', headersFromSecrets: { authorization: 'MCP_TOKEN' } };
const listed: McpListReply = {
  ok: true,
  tools: [
    { name: 'echo', description: 'Echoes', inputSchema: { type: 'object', properties: { message: { type: 'string' } } } },
    { name: 'get-sum', description: 'Adds', inputSchema: { type: 'object' } },
    { name: 'weird.name', description: '', inputSchema: { type: 'object' } },
  ],
};

function entries(tools: unknown[]) {
  return agentDefinitionSchema.parse({ model: { provider: 'scripted', steps: [{ text: 'hi' }] }, tools }).tools;
}

async function apiErrorOf(promise: Promise<unknown>): Promise<ApiError> {
  const error = await promise.catch((caught: unknown) => caught);
  expect(error).toBeInstanceOf(ApiError);
  return error as ApiError;
}

describe('MCP server entries of an agent definition', () => {
  it('become one tool per listed tool, named <server>__<tool>, with the entry’s policy and a 30-min default timeout', async () => {
    const lister = vi.fn<McpToolLister>(async () => listed);
    const tools = await expandToolEntries(
      'tenant-a',
      entries([{ name: 'echo', kind: 'builtin', inputSchema: { type: 'object' } }, { kind: 'mcp', name: 'srv', server, tools: ['echo', 'get-sum'], needsApproval: true, onOutcomeUnknown: 'fail' }]),
      lister,
    );
    expect(lister).toHaveBeenCalledWith({ v: 1, tenantId: 'tenant-a', server, tools: ['echo', 'get-sum'] });
    expect(tools.map((tool) => tool.name)).toEqual(['echo', 'srv__echo', 'srv__get-sum']);
    expect(tools[1]).toEqual({
      name: 'srv__echo',
      description: 'Echoes',
      inputSchema: { type: 'object', properties: { message: { type: 'string' } } },
      kind: 'mcp',
      mcp: { server, tool: 'echo' },
      needsApproval: true,
      timeoutMs: 1_800_000,
      onApprovalTimeout: 'deny',
      onOutcomeUnknown: 'fail',
    });
  });

  it('refuses a named tool the server lacks, a name that cannot be an Abide tool name, and collisions', async () => {
    const lister: McpToolLister = async () => listed;
    expect((await apiErrorOf(expandToolEntries('t', entries([{ kind: 'mcp', name: 'srv', server, tools: ['nope'] }]), lister))).message).toBe('body.tools.0.tools: the MCP server has no tool "nope"');
    const all = await apiErrorOf(expandToolEntries('t', entries([{ kind: 'mcp', name: 'srv', server }]), lister));
    expect(all.code).toBe('invalid_request');
    expect(all.message).toContain('MCP tool "weird.name" cannot be named');
    const twice = await apiErrorOf(expandToolEntries('t', entries([{ kind: 'mcp', name: 'srv', server, tools: ['echo'] }, { kind: 'mcp', name: 'other', server, tools: ['echo'] }, { name: 'srv__echo', kind: 'http', inputSchema: { type: 'object' }, http: { url: 'https://x.example/' } }]), lister));
    expect(twice.message).toContain('duplicate tool name "srv__echo"');
  });

  it('a failed listing is 422 mcp_list_failed with the worker’s code; no worker is 503', async () => {
    const failed = await apiErrorOf(expandToolEntries('t', entries([{ kind: 'mcp', name: 'srv', server }]), async () => ({ ok: false, error: { code: 'secret_not_found', message: 'secret "MCP_TOKEN" not found for this tenant' } })));
    expect([failed.code, failed.status, failed.message]).toEqual(['mcp_list_failed', 422, 'body.tools.0: listing the MCP server\'s tools failed (secret_not_found: secret "MCP_TOKEN" not found for this tenant)']);
    expect((await apiErrorOf(expandToolEntries('t', entries([{ kind: 'mcp', name: 'srv', server }]), undefined))).status).toBe(503);
  });

  it('a tenant cannot declare an expanded mcp tool itself, nor a stdio command', () => {
    const declared = agentDefinitionSchema.safeParse({ model: { provider: 'scripted', steps: [{ text: 'hi' }] }, tools: [{ name: 'x', kind: 'mcp', inputSchema: { type: 'object' }, mcp: { server, tool: 'x' } }] });
    expect(declared.success).toBe(false);
    const command = agentDefinitionSchema.safeParse({ model: { provider: 'scripted', steps: [{ text: 'hi' }] }, tools: [{ kind: 'mcp', name: 'local', server: { transport: 'stdio', command: 'sh', args: ['-c', 'id'] } }] });
    expect(command.success).toBe(false);
  });
});
