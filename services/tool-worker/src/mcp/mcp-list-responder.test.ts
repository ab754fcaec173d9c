import { describe, expect, it, vi } from 'vitest';
import { AbideError, createLogger, decodeJson, encodeJson, subjects, type McpListedTool, type NatsConnection } from '@abide/shared';
import { createMcpListResponder } from './mcp-list-responder.ts';

/** A fake core-NATS connection: captures the subscription's callback so the test can deliver requests to it. */
function fakeNats() {
  let callback: ((error: Error | null, message: { data: Uint8Array; respond(data: Uint8Array): boolean }) => void) | undefined;
  const subscribed: { subject: string; queue: string | undefined }[] = [];
  const nats = {
    subscribe(subject: string, options: { queue?: string; callback: typeof callback }) {
      subscribed.push({ subject, queue: options.queue });
      callback = options.callback;
      return { drain: async () => {} };
    },
  } as unknown as NatsConnection;
  async function request(body: unknown): Promise<any> {
    return new Promise((resolve) => callback!(null, { data: encodeJson(body), respond: (data) => (resolve(decodeJson(data)), true) }));
  }
  return { nats, subscribed, request };
}

const tool = (name: string, bytes = 10): McpListedTool => ({ name, description: 'd'.repeat(bytes), inputSchema: { type: 'object' } });
const server = { transport: 'streamable-http', url: 'https://mcp.example/mcp' };

describe('MCP list responder', () => {
  it('answers the gateway on mcp.tools.list in the tool-worker queue group, only the tools asked for', async () => {
    const { nats, subscribed, request } = fakeNats();
    const list = vi.fn(async () => [tool('echo'), tool('get-sum'), tool('other')]);
    createMcpListResponder({ nats, mcp: { list }, logger: createLogger('t', 'silent') }).start();
    expect(subscribed).toEqual([{ subject: subjects.mcpToolsList, queue: 'tool-worker' }]);
    expect(await request({ v: 1, tenantId: 'tenant-a', server, tools: ['get-sum', 'echo'] })).toEqual({ ok: true, tools: [tool('echo'), tool('get-sum')] });
    expect(list).toHaveBeenCalledWith('tenant-a', server);
    expect((await request({ v: 1, tenantId: 'tenant-a', server })).tools).toHaveLength(3);
  });

  it('answers a stable code for a failure, a request that does not parse, and a list too large for an agent', async () => {
    const { nats, request } = fakeNats();
    const list = vi
      .fn()
      .mockRejectedValueOnce(new AbideError('egress_denied', 'calls to https://mcp.example:443 are not allowed (TOOL_EGRESS_ALLOW)'))
      .mockResolvedValueOnce(Array.from({ length: 64 }, (_, index) => tool(`t${index}`, 5_000)));
    createMcpListResponder({ nats, mcp: { list }, logger: createLogger('t', 'silent') }).start();
    expect(await request({ v: 1, tenantId: 'tenant-a', server })).toEqual({ ok: false, error: { code: 'egress_denied', message: 'calls to https://mcp.example:443 are not allowed (TOOL_EGRESS_ALLOW)' } });
    expect(await request({ v: 1, tenantId: 'tenant a', server })).toMatchObject({ ok: false, error: { code: 'invalid_message' } });
    expect(await request({ v: 1, tenantId: 'tenant-a', server })).toMatchObject({ ok: false, error: { code: 'tool_error', message: expect.stringContaining('name fewer tools') } });
  });
});
