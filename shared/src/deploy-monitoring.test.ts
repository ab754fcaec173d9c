import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';

const repoRoot = new URL('../../', import.meta.url).pathname;
const rulesFile = join(repoRoot, 'deploy/monitoring/alert-rules.yml');
const dashboardFile = join(repoRoot, 'deploy/monitoring/grafana-dashboard.json');

/** Every `.ts` file (tests excepted) under `dir`. */
function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((entry) => entry.isFile() && entry.name.endsWith('.ts') && !entry.name.endsWith('.test.ts'))
    .map((entry) => join(entry.parentPath, entry.name));
}

/**
 * The metric names the services export, read from their sources: every `counter`, `gauge` and
 * `histogram` of `Metrics` (prefixed `abide_`; a histogram's series end in `_bucket`, `_count`, `_sum`).
 */
function exportedMetricNames(): Set<string> {
  const names = new Set<string>();
  const files = [...sources(join(repoRoot, 'shared/src')), ...['gateway', 'orchestrator', 'llm-worker', 'tool-worker'].flatMap((service) => sources(join(repoRoot, 'services', service, 'src')))];
  for (const file of files) {
    for (const match of readFileSync(file, 'utf8').matchAll(/\.(counter|gauge|histogram)\(\s*'([a-z_]+)'/g)) {
      const name = `abide_${match[2]}`;
      if (match[1] === 'histogram') for (const suffix of ['_bucket', '_count', '_sum']) names.add(name + suffix);
      else names.add(name);
    }
  }
  return names;
}

const metricNamesIn = (expression: string) => [...expression.matchAll(/\babide_[a-z_]+/g)].map((match) => match[0]);

function expectBalanced(expression: string): void {
  const closing: Record<string, string> = { ')': '(', ']': '[', '}': '{' };
  const stack: string[] = [];
  for (const character of expression.replace(/"[^"]*"/g, '""')) {
    if ('([{'.includes(character)) stack.push(character);
    else if (character in closing) expect(stack.pop(), expression).toBe(closing[character]);
  }
  expect(stack, expression).toEqual([]);
}

type Rule = { alert?: string; expr?: unknown; for?: unknown; labels?: Record<string, unknown>; annotations?: Record<string, unknown> };

describe('deploy/monitoring', () => {
  const exported = exportedMetricNames();

  it('finds the metrics the services export (the check below is not vacuous)', () => {
    for (const name of ['abide_http_requests_total', 'abide_http_request_duration_seconds_bucket', 'abide_consumer_pending_messages', 'abide_tool_call_duration_seconds_count', 'abide_model_call_duration_seconds_bucket']) {
      expect(exported, name).toContain(name);
    }
  });

  it('alert rules: the five alerts, each well-formed, on metrics the services export', () => {
    const document = parse(readFileSync(rulesFile, 'utf8')) as { groups: { name: string; rules: Rule[] }[] };
    expect(document.groups.length).toBeGreaterThan(0);
    const rules = document.groups.flatMap((group) => {
      expect(group.name).toMatch(/\S/);
      return group.rules;
    });
    expect(rules.map((rule) => rule.alert).sort()).toEqual(['AbideBacklogGrowing', 'AbideDeliveryExhausted', 'AbideRedeliveries', 'AbideRunCacheTooSmall', 'AbideRunsStuckPastDeadline']);
    for (const rule of rules) {
      expect(Object.keys(rule).every((key) => ['alert', 'expr', 'for', 'labels', 'annotations', 'keep_firing_for'].includes(key)), rule.alert).toBe(true);
      expect(typeof rule.expr, rule.alert).toBe('string');
      const expression = rule.expr as string;
      expectBalanced(expression);
      if (rule.for !== undefined) expect(rule.for, rule.alert).toMatch(/^\d+[smhd]$/);
      expect(['warning', 'critical'], rule.alert).toContain(rule.labels?.severity);
      expect(rule.annotations?.summary, rule.alert).toEqual(expect.any(String));
      const names = metricNamesIn(expression);
      expect(names.length, rule.alert).toBeGreaterThan(0);
      for (const name of names) expect(exported, `${rule.alert} uses ${name}, which no service exports`).toContain(name);
    }
  });

  it('Grafana dashboard: a dashboard model whose panels query metrics the services export', () => {
    const dashboard = JSON.parse(readFileSync(dashboardFile, 'utf8')) as {
      uid: string;
      title: string;
      schemaVersion: number;
      panels: { id: number; type: string; title: string; gridPos: Record<string, number>; targets: { refId: string; expr: string }[] }[];
    };
    expect(dashboard.uid).toMatch(/^[a-z0-9-]{1,40}$/);
    expect(dashboard.title).toMatch(/\S/);
    expect(Number.isInteger(dashboard.schemaVersion)).toBe(true);
    expect(new Set(dashboard.panels.map((panel) => panel.id)).size).toBe(dashboard.panels.length);
    const queried = new Set<string>();
    for (const panel of dashboard.panels) {
      expect(panel.type, panel.title).toBe('timeseries');
      for (const key of ['h', 'w', 'x', 'y']) expect(Number.isInteger(panel.gridPos[key]), `${panel.title} gridPos.${key}`).toBe(true);
      expect(panel.gridPos.x! + panel.gridPos.w!).toBeLessThanOrEqual(24);
      expect(panel.targets.length, panel.title).toBeGreaterThan(0);
      expect(new Set(panel.targets.map((target) => target.refId)).size).toBe(panel.targets.length);
      for (const target of panel.targets) {
        expectBalanced(target.expr);
        for (const name of metricNamesIn(target.expr)) {
          expect(exported, `panel "${panel.title}" uses ${name}, which no service exports`).toContain(name);
          queried.add(name);
        }
      }
    }
    // The backlog KEDA scales on and the latencies the issue asks for are on the dashboard.
    for (const name of ['abide_consumer_pending_messages', 'abide_http_request_duration_seconds_bucket', 'abide_model_call_duration_seconds_bucket', 'abide_tool_call_duration_seconds_bucket', 'abide_commit_duration_seconds_bucket']) {
      expect(queried, name).toContain(name);
    }
  });
});
