import { describe, expect, it, vi } from 'vitest';
import { createLogger, createMetrics, makeEnvelope, toolDefinitionSchema, type Delivery, type ToolRequestMessage } from '@abide/shared';
import { createToolCallHandler } from './execute-call.ts';
import type { KeyValueBucket, KvEntryLike } from '@abide/shared';
import { createToolMetrics } from './tool-metrics.ts';

/** A minimal in-memory KV (create refuses an existing key); the handler's bookkeeping is not what is tested here. */
function memoryBucket(): KeyValueBucket {
  const entries = new Map<string, KvEntryLike>();
  let revision = 0;
  return {
    async get(key) {
      return entries.get(key) ?? null;
    },
    async create(key, value) {
      if (entries.get(key)?.operation === 'PUT') throw new Error('key exists');
      entries.set(key, { value, revision: ++revision, operation: 'PUT' });
      return revision;
    },
    async update(key, value) {
      entries.set(key, { value, revision: ++revision, operation: 'PUT' });
      return revision;
    },
    async put(key, value) {
      entries.set(key, { value, revision: ++revision, operation: 'PUT' });
      return revision;
    },
    async delete(key) {
      entries.set(key, { value: new Uint8Array(), revision: ++revision, operation: 'DEL' });
    },
  };
}

describe('tool progress (MCP progress notifications)', () => {
  it('each progress report extends the message’s ack deadline with an in-progress ack', async () => {
    const working = vi.fn();
    const handler = createToolCallHandler({
      results: memoryBucket(),
      publish: async () => {},
      cancellations: { isCancelled: async () => false, track: () => ({ signal: new AbortController().signal, release: () => {} }) },
      async runTool(invocation) {
        invocation.onProgress?.();
        invocation.onProgress?.();
        invocation.onProgress?.();
        return { kind: 'success', value: 'done' };
      },
      workerId: 'worker-a',
      logger: createLogger('progress-test', 'silent'),
      metrics: createToolMetrics(createMetrics()),
      heartbeatMs: 60_000,
    });
    const tool = toolDefinitionSchema.parse({ name: 'srv__slow', kind: 'mcp', inputSchema: { type: 'object' }, mcp: { server: { transport: 'stdio', serverId: 'x' }, tool: 'slow' } });
    const message: ToolRequestMessage = makeEnvelope('tool.request', { id: 'run_1:2:0', runId: 'run_1', tenantId: 'tenant-a' }, { toolCallId: 's0c0', step: 0, tool, args: {}, timeoutMs: 5_000 });
    const delivery: Delivery<ToolRequestMessage> = {
      message,
      subject: 'tool.request.srv__slow',
      deliveryCount: 1,
      isLastDelivery: false,
      streamSequence: 1,
      signal: new AbortController().signal,
      working,
    };
    await handler.handle(delivery);
    expect(working).toHaveBeenCalledTimes(3);
  });
});
