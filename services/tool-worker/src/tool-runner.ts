import { errorOutcome, type RunTool } from './tool-invocation.ts';
import type { BuiltinTools } from './builtins.ts';
import type { HttpTool } from './http-tool.ts';
import type { McpTools } from './mcp/mcp-tool.ts';

/** Dispatches a call to the built-in, HTTP or MCP executor by the tool's `kind`. */
export function createToolRunner(deps: { builtins: BuiltinTools; http: HttpTool; mcp?: Pick<McpTools, 'run'> }): RunTool {
  return async (invocation) => {
    switch (invocation.tool.kind) {
      case 'builtin':
        return deps.builtins.run(invocation);
      case 'http':
        return deps.http.run(invocation);
      case 'mcp':
        if (deps.mcp) return deps.mcp.run(invocation);
        return errorOutcome('tool_error', 'MCP tools are not enabled on this worker');
      default:
        return errorOutcome('tool_error', `tool kind "${String(invocation.tool.kind)}" is not supported by this worker`);
    }
  };
}
