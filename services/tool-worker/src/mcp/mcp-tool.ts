import { createHash } from 'node:crypto';
import {
  AbideError,
  ensureError,
  mcpLimits,
  mcpListedToolSchema,
  originOf,
  SecretNotFoundError,
  type EgressPolicy,
  type Logger,
  type McpListedTool,
  type McpServer,
  type McpStdioServerConfig,
  type TenantSecrets,
  type ToolOutcome,
} from '@abide/shared';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { errorOutcome, idempotencyKeyFor, type ToolInvocation } from '../tool-invocation.ts';
import type { McpConnection, McpConnectionPool } from './mcp-connection-pool.ts';
import { boundedFetch } from './bounded-fetch.ts';
import { isBrokenConnection, mcpFailure } from './mcp-errors.ts';

/** The `_meta` key carrying a call's idempotency key (`<runId>:<toolCallId>`, the same on every attempt). */
export const mcpIdempotencyMetaKey = 'abide/idempotency-key';

/** Headers the transport owns; a tenant's headers may not replace them. */
const reservedHeaders = new Set(['mcp-session-id', 'mcp-protocol-version', 'content-type', 'accept', 'last-event-id', 'host', 'content-length']);

export type McpToolsOptions = {
  /** The egress policy of `TOOL_EGRESS_ALLOW`; its `fetch` makes every HTTP request of the MCP client. */
  egress: Pick<EgressPolicy, 'assertUrlAllowed' | 'fetch'>;
  /** The calling tenant's secrets, for `headersFromSecrets` / `headersFromEnv`. */
  secrets: TenantSecrets;
  pool: McpConnectionPool;
  /** `MCP_STDIO_SERVERS`: the only stdio servers, by id. */
  stdioServers: Readonly<Record<string, McpStdioServerConfig>>;
  logger?: Pick<Logger, 'warn'>;
  /** Largest result accepted, as JSON. @default 1048576 (1 MiB) */
  maxResultBytes?: number;
  /** Time to open a session (initialize). @default 30000 */
  connectTimeoutMs?: number;
  /** Time a `tools/list` may take, all pages. @default 30000 */
  listTimeoutMs?: number;
  /** Largest HTTP response body read from an MCP server (one JSON answer or one SSE stream). @default 4194304 (4 MiB) */
  maxResponseBytes?: number;
};

/** Pages of `tools/list` read at most (a server paging forever with empty pages is cut off). */
const maxListPages = 100;

type Target = { key: string; destination: string; open: () => Promise<McpConnection> };

/**
 * MCP tools (issue 13), through the official SDK client: `tools/call` for a run's tool call and
 * `tools/list` for the gateway at agent creation. Connections come from the pool; the HTTP
 * transport's every request goes through the egress policy's `fetch`.
 */
export function createMcpTools(options: McpToolsOptions) {
  const maxResultBytes = options.maxResultBytes ?? 1_048_576;
  const connectTimeoutMs = options.connectTimeoutMs ?? 30_000;
  const listTimeoutMs = options.listTimeoutMs ?? 30_000;
  const fetchForMcp = boundedFetch(options.egress.fetch, options.maxResponseBytes ?? 4_194_304);

  /** Resolves where and as whom to connect; throws a final `AbideError` for what the tenant may not use. */
  async function resolveTarget(tenantId: string, server: McpServer): Promise<Target> {
    if (server.transport === 'stdio') {
      const configured = Object.hasOwn(options.stdioServers, server.serverId) ? options.stdioServers[server.serverId] : undefined;
      if (!configured) throw new AbideError('tool_error', `no stdio MCP server "${server.serverId}" is configured (MCP_STDIO_SERVERS)`);
      return {
        key: `${tenantId}\nstdio:${server.serverId}`,
        destination: `stdio:${server.serverId}`,
        open: () => openClient(new StdioClientTransport({ command: configured.command, args: configured.args, env: configured.env, stderr: 'ignore' })),
      };
    }
    options.egress.assertUrlAllowed(server.url);
    const headers: Record<string, string> = {};
    const set = (name: string, value: string) => {
      if (reservedHeaders.has(name.toLowerCase())) throw new AbideError('tool_error', `header "${name}" is set by the MCP transport and cannot be configured`);
      headers[name.toLowerCase()] = value;
    };
    for (const [name, value] of Object.entries(server.headers ?? {})) set(name, value);
    for (const [name, secretName] of [...Object.entries(server.headersFromEnv ?? {}), ...Object.entries(server.headersFromSecrets ?? {})]) {
      set(name, await options.secrets.read(tenantId, secretName));
    }
    // The credential hash keeps sessions of different credentials (and tenants) apart; values never appear in the key.
    const credentials = createHash('sha256').update(JSON.stringify(Object.entries(headers).sort())).digest('hex');
    const url = new URL(server.url);
    return {
      key: `${tenantId}\n${server.url}\n${credentials}`,
      destination: originOf(url),
      open: () =>
        openClient(
          new StreamableHTTPClientTransport(url, {
            fetch: fetchForMcp,
            requestInit: { headers, redirect: 'manual' },
          }),
        ),
    };
  }

  async function openClient(transport: StreamableHTTPClientTransport | StdioClientTransport): Promise<McpConnection> {
    const client = new Client({ name: 'abide-tool-worker', version: '0.1.0' }, { capabilities: {} });
    try {
      await client.connect(transport, { timeout: connectTimeoutMs });
    } catch (error) {
      await client.close().catch((closeError: unknown) => options.logger?.warn({ err: ensureError(closeError) }, 'could not close a failed MCP client'));
      throw error;
    }
    return {
      client,
      async close() {
        if (transport instanceof StreamableHTTPClientTransport) {
          // Politeness: tell the server the session is over, so it can free it; bounded, and a refusal (405) is fine.
          await Promise.race([transport.terminateSession(), new Promise((resolve) => setTimeout(resolve, 2_000).unref())]).catch((error: unknown) =>
            options.logger?.warn({ err: ensureError(error) }, 'could not end the MCP session'),
          );
        }
        await client.close().catch((error: unknown) => options.logger?.warn({ err: ensureError(error) }, 'could not close the MCP client'));
      },
    };
  }

  /** Resolves the target, converting what a tenant may not use into the error to report. */
  async function targetFor(tenantId: string, server: McpServer): Promise<Target> {
    try {
      return await resolveTarget(tenantId, server);
    } catch (error) {
      if (AbideError.isInstance(error) || error instanceof SecretNotFoundError) throw error;
      throw new AbideError('tool_error', 'could not prepare the MCP connection', { cause: error });
    }
  }

  /** A `tools/call` for a run's tool call. */
  async function run(invocation: ToolInvocation): Promise<ToolOutcome> {
    const { tool, signal } = invocation;
    signal.throwIfAborted();
    if (!tool.mcp) return errorOutcome('tool_error', `tool "${tool.name}" has no mcp configuration`);
    const args = invocation.args ?? {};
    if (typeof args !== 'object' || Array.isArray(args)) return errorOutcome('tool_error', 'the arguments of an MCP tool must be a JSON object');
    let target: Target;
    try {
      target = await targetFor(invocation.tenantId, tool.mcp.server);
    } catch (error) {
      if (AbideError.isInstance(error) && !error.retryable) return errorOutcome(error.code, error.message);
      throw error;
    }
    const log = (fields: Record<string, unknown>, message: string) =>
      options.logger?.warn({ runId: invocation.runId, tenantId: invocation.tenantId, tool: tool.name, destination: target.destination, ...fields }, message);
    let result: Awaited<ReturnType<McpConnection['client']['callTool']>>;
    try {
      result = await options.pool.use(
        target.key,
        target.open,
        async (connection) => {
          signal.throwIfAborted();
          invocation.onExternalEffect();
          // Aborting `signal` makes the SDK send `notifications/cancelled` for this request.
          return connection.client.callTool(
            { name: tool.mcp!.tool, arguments: args as Record<string, unknown>, _meta: { [mcpIdempotencyMetaKey]: idempotencyKeyFor(invocation.runId, invocation.toolCallId) } },
            undefined,
            { signal, timeout: invocation.timeoutMs, maxTotalTimeout: invocation.timeoutMs, onprogress: () => invocation.onProgress?.() },
          );
        },
        (error) => !signal.aborted && isBrokenConnection(mcpFailure(error, target.destination, invocation.timeoutMs)),
      );
    } catch (error) {
      if (signal.aborted) throw signal.reason;
      const failure = mcpFailure(error, target.destination, invocation.timeoutMs);
      log({ err: ensureError(error), code: failure.code, retryable: failure.retryable }, 'MCP tool call failed');
      if (failure.retryable) throw failure;
      return errorOutcome(failure.code, failure.message);
    }
    // The SDK validated the result against its CallToolResult schema: `content` is an array of blocks.
    const content = (Array.isArray(result.content) ? result.content : []) as ContentBlock[];
    const value = result.structuredContent !== undefined ? result.structuredContent : contentValue(content);
    const size = Buffer.byteLength(JSON.stringify(value ?? null));
    if (size > maxResultBytes) return errorOutcome('tool_error', `the MCP tool's result is larger than ${maxResultBytes} bytes`);
    if (result.isError) return errorOutcome('tool_error', textOf(content).slice(0, 10_000) || 'the MCP tool reported an error');
    return { kind: 'success', value };
  }

  /**
   * `tools/list` (all pages) for the gateway: bounded in count and schema size; a tool that does
   * not fit Abide's shapes is a protocol error, so what an agent stores is exactly what was listed.
   */
  async function list(tenantId: string, server: McpServer): Promise<McpListedTool[]> {
    const target = await targetFor(tenantId, server);
    const signal = AbortSignal.timeout(listTimeoutMs);
    try {
      return await options.pool.use(
        target.key,
        target.open,
        async (connection) => {
          const tools: McpListedTool[] = [];
          let cursor: string | undefined;
          let pages = 0;
          do {
            pages += 1;
            if (pages > maxListPages) throw new AbideError('mcp_protocol_error', `the MCP server's tools/list has more than ${maxListPages} pages`);
            const page = await connection.client.listTools(cursor === undefined ? {} : { cursor }, { signal, timeout: listTimeoutMs });
            for (const tool of page.tools) {
              if (tools.length >= mcpLimits.maxListedTools) throw new AbideError('mcp_protocol_error', `the MCP server lists more than ${mcpLimits.maxListedTools} tools`);
              const inputSchema = tool.inputSchema as Record<string, unknown>;
              if (Buffer.byteLength(JSON.stringify(inputSchema)) > mcpLimits.maxInputSchemaBytes) {
                throw new AbideError('mcp_protocol_error', `the input schema of MCP tool ${JSON.stringify(tool.name.slice(0, 128))} is larger than ${mcpLimits.maxInputSchemaBytes} bytes`);
              }
              const parsed = mcpListedToolSchema.safeParse({ name: tool.name, description: (tool.description ?? '').slice(0, 10_000), inputSchema });
              if (!parsed.success) throw new AbideError('mcp_protocol_error', `the MCP server lists a tool Abide cannot use (${JSON.stringify(tool.name.slice(0, 128))})`);
              tools.push(parsed.data);
            }
            cursor = page.nextCursor;
          } while (cursor !== undefined);
          return tools;
        },
        (error) => isBrokenConnection(mcpFailure(error, target.destination, listTimeoutMs)),
      );
    } catch (error) {
      const failure = signal.aborted ? new AbideError('tool_timeout', `the MCP server at ${target.destination} did not list its tools within ${listTimeoutMs} ms`) : mcpFailure(error, target.destination, listTimeoutMs);
      options.logger?.warn({ err: ensureError(error), tenantId, destination: target.destination, code: failure.code }, 'MCP tools/list failed');
      throw failure;
    }
  }

  return { run, list };
}
export type McpTools = ReturnType<typeof createMcpTools>;

type ContentBlock = { type: string; text?: unknown; [field: string]: unknown };

/** The text of every text block, joined. */
function textOf(content: readonly ContentBlock[] | undefined): string {
  return (content ?? [])
    .filter((block) => block.type === 'text' && typeof block.text === 'string')
    .map((block) => block.text as string)
    .join('\n');
}

/** Only text blocks → `{ text }`; anything else (images, resources) → `{ content }` as the server sent it. */
function contentValue(content: readonly ContentBlock[] | undefined): unknown {
  const blocks = content ?? [];
  if (blocks.every((block) => block.type === 'text')) return { text: textOf(blocks) };
  return { content: blocks };
}
