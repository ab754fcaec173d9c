/** A minimal Prometheus registry: counters and gauges with labels, rendered as text format 0.0.4. */
type Labels = Record<string, string>;

function labelKey(labels: Labels): string {
  const entries = Object.entries(labels);
  if (entries.length === 0) return '';
  return `{${entries.map(([name, value]) => `${name}="${value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')}"`).join(',')}}`;
}

export function createMetrics(prefix = 'abide_') {
  const series = new Map<string, { help: string; type: 'counter' | 'gauge'; values: Map<string, number>; collect?: () => number }>();

  function define(name: string, help: string, type: 'counter' | 'gauge', collect?: () => number) {
    const full = prefix + name;
    if (!series.has(full)) series.set(full, { help, type, values: new Map(), ...(collect ? { collect } : {}) });
    return series.get(full)!;
  }

  return {
    counter(name: string, help: string) {
      const entry = define(name, help, 'counter');
      return {
        inc(labels: Labels = {}, by = 1) {
          const key = labelKey(labels);
          entry.values.set(key, (entry.values.get(key) ?? 0) + by);
        },
      };
    },
    gauge(name: string, help: string, collect?: () => number) {
      const entry = define(name, help, 'gauge', collect);
      return {
        set(value: number, labels: Labels = {}) {
          entry.values.set(labelKey(labels), value);
        },
      };
    },
    render(): string {
      const lines: string[] = [];
      for (const [name, entry] of series) {
        lines.push(`# HELP ${name} ${entry.help}`, `# TYPE ${name} ${entry.type}`);
        if (entry.collect) entry.values.set('', entry.collect());
        for (const [key, value] of entry.values) lines.push(`${name}${key} ${value}`);
      }
      const memory = process.memoryUsage();
      lines.push('# TYPE process_resident_memory_bytes gauge', `process_resident_memory_bytes ${memory.rss}`);
      return `${lines.join('\n')}\n`;
    },
  };
}
export type Metrics = ReturnType<typeof createMetrics>;
