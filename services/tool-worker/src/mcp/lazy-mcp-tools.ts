import type { McpTools, McpToolsOptions } from './mcp-tool.ts';

/**
 * `createMcpTools`, loaded at the first MCP tool call or tools listing rather than at start-up:
 * the MCP SDK (with the JSON Schema validator and converter it brings) costs the tool-worker
 * ~10 MB of resident memory (issue 9), and a stack whose agents call no MCP tool never needs it.
 * The first call waits for the import (once per process); a failed import fails every MCP call
 * with its error, as a failed start-up import would have failed the process.
 */
export function createLazyMcpTools(options: McpToolsOptions): McpTools {
  let tools: Promise<McpTools> | undefined;
  const load = () => (tools ??= import('./mcp-tool.ts').then(({ createMcpTools }) => createMcpTools(options)));
  return {
    run: async (...args) => (await load()).run(...args),
    list: async (...args) => (await load()).list(...args),
  };
}
