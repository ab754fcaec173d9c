import { createMetrics, encodeJson, streams, type Delivery, type JetStreamManager, type Logger, type MaxDeliveriesAdvisory } from '@abide/shared';
import { describe, expect, it } from 'vitest';
import { createAdvisoryHandler } from './advisory-handler.ts';
import type { RunProcessor } from './run-processor.ts';

const advisory: MaxDeliveriesAdvisory = {
  type: 'io.nats.jetstream.advisory.v1.max_deliver',
  id: 'adv_1',
  stream: streams.toolRequests,
  consumer: 'tool-worker',
  stream_seq: 7,
  deliveries: 5,
};
const stored = {
  subject: 'tool.request.acme',
  data: encodeJson({ v: 1, id: 'msg_1', type: 'tool.request', runId: 'run_1', tenantId: 'acme', ts: '2026-11-29T00:00:00.000Z', payload: {} }),
};

function setup(options: { getMessage?: () => Promise<unknown>; deleteMessage?: () => Promise<boolean> } = {}) {
  const logged: { level: string; message: string; fields: Record<string, unknown> }[] = [];
  const record = (level: string) => (fields: Record<string, unknown>, message: string) => logged.push({ level, message, fields });
  const logger = { info: record('info'), warn: record('warn'), error: record('error') } as unknown as Logger;
  const applied: unknown[] = [];
  const jsm = {
    streams: {
      getMessage: options.getMessage ?? (async () => stored),
      deleteMessage: options.deleteMessage ?? (async () => true),
    },
  } as unknown as JetStreamManager;
  const processor = {
    apply: async (...args: unknown[]) => {
      applied.push(args);
      return { kind: 'committed' };
    },
  } as unknown as RunProcessor;
  const metrics = createMetrics({ processMetrics: false });
  const handle = createAdvisoryHandler({ jsm, processor, logger, metrics });
  const delivery = { message: advisory } as Delivery<MaxDeliveriesAdvisory>;
  return { handle: () => handle(delivery), logged, applied, metrics };
}

describe('the max-deliveries advisory handler', () => {
  it('fails the run and deletes the exhausted message', async () => {
    const { handle, applied, logged, metrics } = setup();
    await handle();
    expect(applied).toHaveLength(1);
    expect(await metrics.render()).toMatch(/^abide_deliveries_exhausted_total\{stream="TOOL_REQUESTS"\} 1$/m);
    expect(logged.filter((entry) => entry.level === 'error').map((entry) => entry.message)).toEqual(['message exhausted its deliveries; run failed']);
  });

  it('logs and rethrows when the exhausted message cannot be deleted (it would stay in the work queue)', async () => {
    const { handle, logged } = setup({ deleteMessage: () => Promise.reject(new Error('connection closed')) });
    await expect(handle()).rejects.toThrow('connection closed');
    expect(logged.at(-1)).toMatchObject({ level: 'error', fields: { stream: streams.toolRequests, seq: 7 } });
  });

  it('logs and rethrows when JetStream answers that it did not delete the message', async () => {
    const { handle, logged } = setup({ deleteMessage: async () => false });
    await expect(handle()).rejects.toThrow();
    expect(logged.at(-1)).toMatchObject({ level: 'error', fields: { stream: streams.toolRequests, seq: 7 } });
  });

  it('does not take an unreachable stream for a message already gone: the advisory is retried', async () => {
    const { handle, applied } = setup({ getMessage: () => Promise.reject(new Error('timeout')) });
    await expect(handle()).rejects.toThrow('timeout');
    expect(applied).toEqual([]);
  });
});
