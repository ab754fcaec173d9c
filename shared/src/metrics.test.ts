import { describe, expect, it } from 'vitest';
import { createMetrics } from './metrics.ts';

describe('createMetrics (prom-client)', () => {
  it('keeps one registry per process object: two instances share no series', async () => {
    const first = createMetrics({ processMetrics: false });
    const second = createMetrics({ processMetrics: false });
    first.counter('things_total', 'Things').inc({ kind: 'a' });
    second.counter('things_total', 'Things').inc({ kind: 'a' }, 5);
    expect(await first.render()).toMatch(/^abide_things_total\{kind="a"\} 1$/m);
    expect(await second.render()).toMatch(/^abide_things_total\{kind="a"\} 5$/m);
  });

  it('renders counters, collected gauges and histograms in the Prometheus text format', async () => {
    const metrics = createMetrics({ processMetrics: false });
    let open = 3;
    metrics.counter('plain_total', 'Unlabelled').inc();
    metrics.gauge('open_things', 'Open things', () => open);
    metrics.histogram('wait_seconds', 'Waits', ['kind'], [0.1, 1]).observe({ kind: 'x' }, 0.5);
    let text = await metrics.render();
    expect(text).toContain('# TYPE abide_plain_total counter');
    expect(text).toMatch(/^abide_plain_total 1$/m);
    expect(text).toMatch(/^abide_open_things 3$/m);
    expect(text).toMatch(/^abide_wait_seconds_bucket\{le="0.1",kind="x"\} 0$/m);
    expect(text).toMatch(/^abide_wait_seconds_bucket\{le="1",kind="x"\} 1$/m);
    expect(text).toMatch(/^abide_wait_seconds_sum\{kind="x"\} 0.5$/m);
    open = 4;
    text = await metrics.render();
    expect(text).toMatch(/^abide_open_things 4$/m);
    expect(metrics.contentType).toContain('text/plain');
  });

  it('includes the process metrics by default', async () => {
    expect(await createMetrics().render()).toMatch(/^process_resident_memory_bytes \d+/m);
  });

  it('refuses a label set other than the one a series was made with (labels are a fixed set)', () => {
    const counter = createMetrics({ processMetrics: false }).counter('calls_total', 'Calls', ['tool']);
    expect(() => counter.inc({ tenant: 'acme' })).toThrow();
  });
});
