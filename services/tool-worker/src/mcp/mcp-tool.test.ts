import { describe, expect, it, vi } from 'vitest';
import { EgressDeniedError, SecretNotFoundError, toolDefinitionSchema, type ToolOutcome } from '@abide/shared';
import { StreamableHTTPError } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { ErrorCode, McpError } from '@modelcontextprotocol/sdk/types.js';
import { z } from 'zod';
import type { ToolInvocation } from '../tool-invocation.ts';
import type { McpConnection, McpConnectionPool } from './mcp-connection-pool.ts';
import { boundedFetch, ResponseTooLargeError } from './bounded-fetch.ts';
import { mcpFailure } from './mcp-errors.ts';
import { createMcpTools, mcpIdempotencyMetaKey } from './mcp-tool.ts';

const destination = 'http://mcp.example:80';

describe('MCP error mapping', () => {
  it('maps transport failures to retryable tool_error, protocol violations to final mcp_protocol_error', () => {
    const cases: [unknown, { code: string; retryable: boolean }][] = [
      [new TypeError('fetch failed'), { code: 'tool_error', retryable: true }],
      [new McpError(ErrorCode.ConnectionClosed, 'closed'), { code: 'tool_error', retryable: true }],
      [new StreamableHTTPError(503, 'Error POSTing to endpoint: secret body'), { code: 'tool_error', retryable: true }],
      [new StreamableHTTPError(404, 'session gone'), { code: 'tool_error', retryable: true }],
      [new StreamableHTTPError(403, 'Error POSTing to endpoint: secret body'), { code: 'tool_error', retryable: false }],
      [new StreamableHTTPError(-1, 'Unexpected content type: text/html'), { code: 'mcp_protocol_error', retryable: false }],
      [new McpError(ErrorCode.InvalidRequest, 'bad'), { code: 'mcp_protocol_error', retryable: false }],
      [new McpError(ErrorCode.MethodNotFound, 'no tools'), { code: 'mcp_protocol_error', retryable: false }],
      [z.object({ content: z.array(z.string()) }).safeParse({ content: 1 }).error, { code: 'mcp_protocol_error', retryable: false }],
      [new McpError(ErrorCode.InvalidParams, 'Unknown tool: nope'), { code: 'tool_error', retryable: false }],
      [new McpError(ErrorCode.RequestTimeout, 'Request timed out'), { code: 'tool_timeout', retryable: false }],
      [new TypeError('fetch failed', { cause: new EgressDeniedError('http://10.0.0.1:80', 'TOOL_EGRESS_ALLOW') }), { code: 'egress_denied', retryable: false }],
    ];
    for (const [error, expected] of cases) expect(mcpFailure(error, destination, 1_000), String(error)).toMatchObject(expected);
  });

  it('never shows a response body or network detail to the tenant', () => {
    expect(mcpFailure(new StreamableHTTPError(500, 'Error POSTing to endpoint: internal secret'), destination, 1_000).message).toBe(`HTTP 500 from the MCP server at ${destination}`);
    expect(mcpFailure(new Error('connect ECONNREFUSED 10.1.2.3:80'), destination, 1_000).message).toBe(`could not reach the MCP server at ${destination}`);
  });
});

describe('bounded fetch', () => {
  it('passes a body under the bound and errors one over it (a final tool_error, not a retry)', async () => {
    const inner = (async (input: string | URL | Request) => new Response(String(input).endsWith('small') ? 'x'.repeat(100) : 'y'.repeat(5_000))) as typeof fetch;
    const fetchBounded = boundedFetch(inner, 1_000);
    expect(await (await fetchBounded('http://a/small')).text()).toBe('x'.repeat(100));
    const error = await (await fetchBounded('http://a/large')).text().catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(ResponseTooLargeError);
    expect(mcpFailure(new TypeError('body failed', { cause: error }), destination, 1_000)).toMatchObject({ code: 'tool_error', retryable: false, message: "the MCP server's response is larger than 1000 bytes" });
  });
});

describe('MCP tool calls', () => {
  function setup(callTool: (...args: unknown[]) => Promise<unknown>) {
    const connection = { client: { callTool: vi.fn(callTool), listTools: vi.fn() }, close: async () => {} } as unknown as McpConnection;
    const keys: string[] = [];
    const pool = {
      async use(key: string, _open: unknown, work: (connection: McpConnection) => Promise<unknown>) {
        keys.push(key);
        return work(connection);
      },
    } as unknown as McpConnectionPool;
    const mcp = createMcpTools({
      egress: { assertUrlAllowed: () => {}, fetch: globalThis.fetch },
      secrets: { read: async (tenantId, name) => (tenantId === 'tenant-a' && name === 'TOKEN' ? 'Bearer a' : Promise.reject(new SecretNotFoundError(name))) },
      pool,
      stdioServers: {},
    });
    return { mcp, connection, keys };
  }

  function invocation(overrides: Partial<ToolInvocation> = {}): ToolInvocation {
    return {
      runId: 'run_1',
      tenantId: 'tenant-a',
      toolCallId: 's0c0',
      tool: toolDefinitionSchema.parse({
        name: 'srv__echo',
        kind: 'mcp',
        inputSchema: { type: 'object' },
        mcp: { server: { transport: 'streamable-http', url: 'http://mcp.example/mcp', headersFromSecrets: { authorization: 'TOKEN' } }, tool: 'echo' },
      }),
      args: { message: 'hi' },
      timeoutMs: 5_000,
      signal: new AbortController().signal,
      onExternalEffect: () => {},
      ...overrides,
    };
  }

  it('calls the server’s tool by its own name with the idempotency key in _meta and the call’s timeout and signal', async () => {
    const { mcp, connection } = setup(async () => ({ content: [{ type: 'text', text: 'Echo: hi' }] }));
    const onProgress = vi.fn();
    const outcome = await mcp.run(invocation({ onProgress }));
    expect(outcome).toEqual({ kind: 'success', value: { text: 'Echo: hi' } });
    const [params, , options] = (connection.client.callTool as ReturnType<typeof vi.fn>).mock.calls[0]!;
    expect(params).toEqual({ name: 'echo', arguments: { message: 'hi' }, _meta: { [mcpIdempotencyMetaKey]: 'run_1:s0c0' } });
    expect(options).toMatchObject({ timeout: 5_000, maxTotalTimeout: 5_000 });
    options.onprogress({ progress: 1 });
    expect(onProgress).toHaveBeenCalledTimes(1);
  });

  it('an isError result is a tool error the model sees; structured content wins over text', async () => {
    expect(await setup(async () => ({ isError: true, content: [{ type: 'text', text: 'city not found' }] })).mcp.run(invocation())).toEqual<ToolOutcome>({
      kind: 'error',
      error: { code: 'tool_error', message: 'city not found' },
    });
    expect(await setup(async () => ({ content: [{ type: 'text', text: '{"t":1}' }], structuredContent: { t: 1 } })).mcp.run(invocation())).toEqual({ kind: 'success', value: { t: 1 } });
  });

  it('a transport failure is thrown as retryable; a protocol violation is a final mcp_protocol_error outcome', async () => {
    await expect(setup(async () => Promise.reject(new TypeError('fetch failed'))).mcp.run(invocation())).rejects.toMatchObject({ code: 'tool_error', retryable: true });
    expect(await setup(async () => Promise.reject(new McpError(ErrorCode.InvalidRequest, 'x'))).mcp.run(invocation())).toMatchObject({ kind: 'error', error: { code: 'mcp_protocol_error' } });
  });

  it('an aborted call rethrows the signal’s reason (cancellation), not a tool error', async () => {
    const controller = new AbortController();
    const { mcp } = setup(async () => {
      controller.abort(new Error('run cancelled'));
      throw new McpError(ErrorCode.RequestTimeout, 'Error: run cancelled');
    });
    await expect(mcp.run(invocation({ signal: controller.signal }))).rejects.toThrow('run cancelled');
  });

  it('secrets resolve in the calling tenant only, and the pool key separates tenants and credentials', async () => {
    const { mcp, keys } = setup(async () => ({ content: [] }));
    await mcp.run(invocation());
    const other = await mcp.run(invocation({ tenantId: 'tenant-b' }));
    expect(other).toEqual({ kind: 'error', error: { code: 'secret_not_found', message: 'secret "TOKEN" not found for this tenant' } });
    expect(keys).toHaveLength(1);
    expect(keys[0]).toMatch(/^tenant-a\nhttp:\/\/mcp\.example\/mcp\n[0-9a-f]{64}$/);
    expect(keys[0]).not.toContain('Bearer a');
  });

  it('a stdio server must be configured by the operator', async () => {
    const { mcp } = setup(async () => ({ content: [] }));
    const tool = toolDefinitionSchema.parse({ name: 'local__x', kind: 'mcp', inputSchema: { type: 'object' }, mcp: { server: { transport: 'stdio', serverId: 'files' }, tool: 'x' } });
    expect(await mcp.run(invocation({ tool }))).toEqual({ kind: 'error', error: { code: 'tool_error', message: 'no stdio MCP server "files" is configured (MCP_STDIO_SERVERS)' } });
  });
});

