import { describe, expect, it } from 'vitest';
import { watchConsumerBacklog, type ConsumerInfoReader } from './consumer-metrics.ts';
import { createLogger } from './logger.ts';
import { createMetrics } from './metrics.ts';

const silentLogger = createLogger('consumer-metrics-test', 'silent');

describe('consumer backlog gauges', () => {
  it('reads pending, ack-pending and redelivered per durable at every scrape', async () => {
    const metrics = createMetrics({ processMetrics: false });
    let pending = 12;
    const asked: string[] = [];
    const jsm: ConsumerInfoReader = {
      consumers: {
        async info(stream, durable) {
          asked.push(`${stream}/${durable}`);
          return { num_pending: durable === 'tool-worker' ? pending : 0, num_ack_pending: 3, num_redelivered: 1 };
        },
      },
    };
    watchConsumerBacklog({ metrics, jsm: () => jsm, durables: ['tool-worker', 'llm-worker'], logger: silentLogger });
    let text = await metrics.render();
    expect(asked).toEqual(['TOOL_REQUESTS/tool-worker', 'LLM_REQUESTS/llm-worker']);
    expect(text).toMatch(/^abide_consumer_pending_messages\{durable="tool-worker"\} 12$/m);
    expect(text).toMatch(/^abide_consumer_pending_messages\{durable="llm-worker"\} 0$/m);
    expect(text).toMatch(/^abide_consumer_ack_pending_messages\{durable="tool-worker"\} 3$/m);
    expect(text).toMatch(/^abide_consumer_redelivered_messages\{durable="llm-worker"\} 1$/m);
    pending = 40;
    text = await metrics.render();
    expect(text).toMatch(/^abide_consumer_pending_messages\{durable="tool-worker"\} 40$/m);
  });

  it('leaves out a durable whose info fails instead of reporting a stale number', async () => {
    const metrics = createMetrics({ processMetrics: false });
    let failing = false;
    const jsm: ConsumerInfoReader = {
      consumers: {
        async info() {
          if (failing) throw new Error('timeout');
          return { num_pending: 5, num_ack_pending: 0, num_redelivered: 0 };
        },
      },
    };
    watchConsumerBacklog({ metrics, jsm: () => jsm, durables: ['orchestrator'], logger: silentLogger });
    expect(await metrics.render()).toMatch(/^abide_consumer_pending_messages\{durable="orchestrator"\} 5$/m);
    failing = true;
    expect(await metrics.render()).not.toMatch(/abide_consumer_pending_messages\{/);
  });

  it('reports nothing before NATS is connected', async () => {
    const metrics = createMetrics({ processMetrics: false });
    watchConsumerBacklog({ metrics, jsm: () => undefined, durables: ['orchestrator'], logger: silentLogger });
    expect(await metrics.render()).not.toMatch(/abide_consumer_pending_messages\{/);
  });
});
