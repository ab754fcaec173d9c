import {
  AbideError,
  agentLimits,
  jsonByteLength,
  consumers,
  decodeJson,
  encodeJson,
  ensureError,
  mcpListRequestSchema,
  subjects,
  type Logger,
  type McpListReply,
  type NatsConnection,
} from '@abide/shared';
import type { McpTools } from './mcp-tool.ts';

type Subscription = ReturnType<NatsConnection['subscribe']>;

/**
 * Answers the gateway's `tools/list` requests (core NATS request/reply on `mcp.tools.list`, queue
 * group `tool-worker`): the listing goes through this worker's egress policy, tenant secrets and
 * connection pool, so the gateway holds no secret and opens no outbound connection. At most
 * `maxInFlight` listings run at once; beyond that the reply is `unavailable` (the gateway answers 503).
 */
export function createMcpListResponder(deps: { nats: NatsConnection; mcp: Pick<McpTools, 'list'>; logger: Logger; maxInFlight?: number }) {
  const maxInFlight = deps.maxInFlight ?? 16;
  let inFlight = 0;
  let subscription: Subscription | undefined;

  async function answer(data: Uint8Array): Promise<McpListReply> {
    let request;
    try {
      request = mcpListRequestSchema.parse(decodeJson(data));
    } catch (error) {
      deps.logger.warn({ err: ensureError(error) }, 'MCP list request does not parse; answered invalid_message');
      return { ok: false, error: { code: 'invalid_message', message: 'the list request does not parse' } };
    }
    if (inFlight >= maxInFlight) return { ok: false, error: { code: 'unavailable', message: 'too many MCP tool listings at once; retry' } };
    inFlight += 1;
    try {
      const listed = await deps.mcp.list(request.tenantId, request.server);
      const wanted = request.tools === 'all' ? undefined : new Set(request.tools);
      const tools = wanted ? listed.filter((tool) => wanted.has(tool.name)) : listed;
      // An agent cannot hold more than this anyway, and the reply must stay far below the bus's max payload.
      const bytes = jsonByteLength(tools);
      if (bytes > agentLimits.maxDefinitionBytes) {
        return { ok: false, error: { code: 'tool_error', message: `the MCP server's tools take ${bytes} bytes as JSON, more than an agent may hold (${agentLimits.maxDefinitionBytes}); name fewer tools` } };
      }
      return { ok: true, tools };
    } catch (error) {
      if (AbideError.isInstance(error)) return { ok: false, error: { code: error.code, message: error.message } };
      deps.logger.error({ err: ensureError(error), tenantId: request.tenantId }, 'MCP list failed unexpectedly');
      return { ok: false, error: { code: 'internal', message: 'listing the MCP server’s tools failed' } };
    } finally {
      inFlight -= 1;
    }
  }

  return {
    start(): void {
      subscription = deps.nats.subscribe(subjects.mcpToolsList, {
        queue: consumers.toolWorker,
        callback: (error, message) => {
          if (error) {
            deps.logger.warn({ err: error }, 'MCP list subscription error');
            return;
          }
          void answer(message.data).then((reply) => {
            if (!message.respond(encodeJson(reply))) deps.logger.warn('MCP list request had no reply subject; dropped');
          });
        },
      });
    },
    async stop(): Promise<void> {
      await subscription?.drain().catch((error: unknown) => deps.logger.warn({ err: ensureError(error) }, 'could not drain the MCP list subscription'));
    },
  };
}
