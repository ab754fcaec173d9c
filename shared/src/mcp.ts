/**
 * MCP servers as tools (issue 13): the wire shapes of listing a server's tools (gateway →
 * tool-worker over core NATS request/reply on `subjects.mcpToolsList`) and the naming rule that
 * turns a server's tool into an Abide tool.
 */
import { z } from 'zod';
import { mcpLimits, mcpServerSchema, mcpToolNameSchema, mcpToolNameSeparator, toolInputSchemaSchema } from './agent.ts';
import { tenantIdSchema, toolNameSchema } from './envelope.ts';
import { errorInfoSchema } from './run-state.ts';

/** The gateway's request: list `server`'s tools as `tenantId` (whose secrets fill the headers). */
export const mcpListRequestSchema = z.object({
  v: z.literal(1),
  tenantId: tenantIdSchema,
  server: mcpServerSchema,
  /** Only these tools (by the server's names) are answered; `all` answers every one. */
  tools: z.union([z.literal('all'), z.array(mcpToolNameSchema).max(mcpLimits.maxNamedTools)]).default('all'),
});
export type McpListRequest = z.infer<typeof mcpListRequestSchema>;

/** One tool as a server lists it, already bounded by the tool-worker. */
export const mcpListedToolSchema = z.object({
  name: mcpToolNameSchema,
  description: z.string().max(10_000),
  inputSchema: toolInputSchemaSchema,
});
export type McpListedTool = z.infer<typeof mcpListedToolSchema>;

/** The tool-worker's reply: the tools, or a stable code with a sanitized message. */
export const mcpListReplySchema = z.discriminatedUnion('ok', [
  z.object({ ok: z.literal(true), tools: z.array(mcpListedToolSchema).max(mcpLimits.maxListedTools) }),
  z.object({ ok: z.literal(false), error: errorInfoSchema }),
]);
export type McpListReply = z.infer<typeof mcpListReplySchema>;

/**
 * The Abide name of a server's tool: `<server name>__<tool name>`, or undefined when that is not a
 * valid tool name (`[A-Za-z0-9_-]{1,64}`: a server tool with `.` or other characters, or too long).
 * Server names have no `_`, so the first `__` always splits a name back into its two parts.
 */
export function mcpAbideToolName(serverName: string, toolName: string): string | undefined {
  const name = `${serverName}${mcpToolNameSeparator}${toolName}`;
  return toolNameSchema.safeParse(name).success ? name : undefined;
}
