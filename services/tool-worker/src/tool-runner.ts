import { errorOutcome, type RunTool } from './tool-invocation.ts';
import type { BuiltinTools } from './builtins.ts';
import type { HttpTool } from './http-tool.ts';

/** Dispatches a call to the built-in or HTTP executor by the tool's `kind`. */
export function createToolRunner(deps: { builtins: BuiltinTools; http: HttpTool }): RunTool {
  return async (invocation) => {
    switch (invocation.tool.kind) {
      case 'builtin':
        return deps.builtins.run(invocation);
      case 'http':
        return deps.http.run(invocation);
      default:
        return errorOutcome('tool_error', `tool kind "${String(invocation.tool.kind)}" is not supported by this worker`);
    }
  };
}
