import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { waitForStatus } from './harness/run-checks.ts';
import { Stack, testKeys } from './harness/stack.ts';
import type { ServiceName } from './harness/service-process.ts';

/**
 * Issue 10: the metrics the real processes serve at /metrics after one run, and every metric the
 * alert rules and the dashboard use among them.
 */
describe('metrics of the running services', () => {
  let stack: Stack;

  beforeAll(async () => {
    stack = await Stack.start();
  });
  afterAll(async () => {
    await stack?.stop();
  });

  async function scrape(name: ServiceName): Promise<string> {
    const response = await fetch(`${stack.service(name).healthUrl}/metrics`);
    expect(response.status, name).toBe(200);
    expect(response.headers.get('content-type'), name).toContain('text/plain');
    return response.text();
  }

  it('serve durations, backlog gauges and the alerts\' metrics after a run, labelled by fixed sets only', { timeout: 120_000 }, async () => {
    const agent = {
      model: { provider: 'scripted', steps: [{ text: 'Echoing.', toolCalls: [{ toolName: 'echo', args: { message: 'ping' } }] }, { text: 'Done.' }] },
      tools: [{ name: 'echo', kind: 'builtin', inputSchema: { type: 'object' } }],
    };
    expect((await stack.api(testKeys.a, 'PUT', '/v1/agents/metrics-agent', agent)).status).toBe(200);
    const socket = await stack.socket(testKeys.a);
    socket.send({ type: 'run.create', requestId: 'm1', agentId: 'metrics-agent', input: 'hi' });
    const created = await socket.waitFor((frame) => frame.type === 'run.created' && frame.requestId === 'm1');
    const runId: string = created.runId;
    await socket.untilTerminal(runId, 60_000).catch((error: Error) => {
      throw new Error(`${error.message}\n${stack.logs()}`);
    });
    socket.close();
    expect((await stack.api(testKeys.a, 'GET', `/v1/runs/${runId}`)).body).toMatchObject({ status: 'completed' });
    // One run waiting for an approval when the orchestrator first counts runs (its first scrape below).
    const approver = {
      model: { provider: 'scripted', steps: [{ toolCalls: [{ toolName: 'echo', args: { message: 'may I?' } }] }, { text: 'Done.' }] },
      tools: [{ name: 'echo', kind: 'builtin', needsApproval: true, inputSchema: { type: 'object' } }],
    };
    expect((await stack.api(testKeys.a, 'PUT', '/v1/agents/metrics-approver', approver)).status).toBe(200);
    const suspended = await stack.api(testKeys.a, 'POST', '/v1/runs', { agentId: 'metrics-approver', input: 'wait' });
    expect(suspended.status, JSON.stringify(suspended.body)).toBe(201);
    await waitForStatus(stack, testKeys.a, suspended.body.runId, ['suspended'], 60_000);

    const texts = {
      gateway: await scrape('gateway'),
      orchestrator: await scrape('orchestrator'),
      'llm-worker': await scrape('llm-worker'),
      'tool-worker': await scrape('tool-worker'),
    };
    // Two agents stored; three model steps (two of the completed run, one of the suspended one).
    expect(texts.gateway).toMatch(/^abide_http_request_duration_seconds_count\{method="PUT",route="\/v1\/agents\/:agentId"\} 2$/m);
    expect(texts['llm-worker']).toMatch(/^abide_model_call_duration_seconds_count\{provider="scripted",outcome="finished"\} 3$/m);
    expect(texts['tool-worker']).toMatch(/^abide_tool_call_duration_seconds_count\{tool="builtin:echo",outcome="success"\} 1$/m);
    // The backlog per durable, read from JetStream by each service for its own consumers: all acked.
    for (const [service, durable] of [
      ['orchestrator', 'orchestrator'],
      ['orchestrator', 'orchestrator-approvals'],
      ['orchestrator', 'orchestrator-advisories'],
      ['llm-worker', 'llm-worker'],
      ['tool-worker', 'tool-worker'],
    ] as const) {
      expect(texts[service], durable).toMatch(new RegExp(`^abide_consumer_pending_messages\\{durable="${durable}"\\} 0$`, 'm'));
      expect(texts[service], durable).toMatch(new RegExp(`^abide_consumer_ack_pending_messages\\{durable="${durable}"\\} \\d+$`, 'm'));
    }
    expect(texts.orchestrator).toMatch(/^abide_oldest_overdue_deadline_seconds 0$/m);
    // The run cache: each run's start carried its version 1, every later input found its run kept;
    // the suspended run is still kept, nothing was evicted.
    expect(texts.orchestrator).toMatch(/^abide_run_cache_lookups_total\{result="carried"\} 2$/m);
    expect(texts.orchestrator).toMatch(/^abide_run_cache_lookups_total\{result="hit"\} [1-9]\d*$/m);
    expect(texts.orchestrator).not.toMatch(/^abide_run_cache_lookups_total\{result="miss"\}/m);
    expect(texts.orchestrator).toMatch(/^abide_run_cache_runs 1$/m);
    expect(texts.orchestrator).toMatch(/^abide_run_cache_bytes [1-9]\d*$/m);
    expect(texts.orchestrator).toMatch(/^# TYPE abide_run_cache_evictions_total counter$/m);
    expect(texts.orchestrator).not.toMatch(/^abide_run_cache_evictions_total [1-9]/m);
    // Runs by live status, the counts of the status sets the read-model writes keep (the first scrape counts): one suspended, the other completed (out of every set).
    expect(texts.orchestrator).toMatch(/^abide_runs\{status="suspended"\} 1$/m);
    for (const status of ['queued', 'running']) expect(texts.orchestrator, status).toMatch(new RegExp(`^abide_runs\\{status="${status}"\\} 0$`, 'm'));
    expect(texts.orchestrator).not.toMatch(/^abide_runs\{status="completed"\}/m);
    // Every supervised consume loop is declared; none restarted during the run.
    for (const [service, durable] of [
      ['orchestrator', 'orchestrator'],
      ['llm-worker', 'llm-worker'],
      ['tool-worker', 'tool-worker'],
    ] as const) {
      expect(texts[service], durable).toMatch(/^# TYPE abide_consumer_restarts_total counter$/m);
      expect(texts[service], durable).not.toMatch(new RegExp(`^abide_consumer_restarts_total\\{durable="${durable}"\\} [1-9]`, 'm'));
    }
    // Open sockets: the WebSocket above is closed again.
    expect(texts.gateway).toMatch(/^abide_websocket_connections \d+$/m);
    for (const [service, text] of Object.entries(texts)) {
      expect(text, service).not.toContain(runId);
      expect(text, service).not.toContain('tenant-a');
      expect(text, service).toMatch(/^process_resident_memory_bytes \d+/m);
    }

    // Every metric the alert rules and the dashboard query is served by some process.
    const served = new Set([...Object.values(texts).join('\n').matchAll(/^# TYPE (\S+) (\S+)$/gm)].flatMap(([, name, type]) => (type === 'histogram' ? [`${name}_bucket`, `${name}_count`, `${name}_sum`] : [name!])));
    const rules = parse(readFileSync(new URL('../../deploy/monitoring/alert-rules.yml', import.meta.url), 'utf8')) as { groups: { rules: { expr: string }[] }[] };
    const dashboard = JSON.parse(readFileSync(new URL('../../deploy/monitoring/grafana-dashboard.json', import.meta.url), 'utf8')) as { panels: { targets: { expr: string }[] }[] };
    const expressions = [...rules.groups.flatMap((group) => group.rules.map((rule) => rule.expr)), ...dashboard.panels.flatMap((panel) => panel.targets.map((target) => target.expr))];
    const used = new Set(expressions.flatMap((expression) => [...expression.matchAll(/\babide_[a-z_]+/g)].map((match) => match[0])));
    expect(used.size).toBeGreaterThan(10);
    for (const name of used) expect(served, `${name} is not served by any process`).toContain(name);
  });
});
