import { afterEach, describe, expect, it } from 'vitest';
import { auth, createTestApp, type TestApp } from './testing/test-app.ts';

let current: TestApp | undefined;
afterEach(async () => {
  await current?.app.close();
  current = undefined;
});

describe('HTTP metrics', () => {
  it('times requests by method and route pattern, never by an id from the URL', async () => {
    current = createTestApp();
    const { app } = current;
    for (const runId of ['run_tenant_chosen_1', 'run_tenant_chosen_2']) await app.inject({ method: 'GET', url: `/v1/runs/${runId}`, headers: auth() });
    await app.inject({ method: 'GET', url: '/v1/no/such/route', headers: auth() });
    const response = await app.inject('/metrics');
    expect(response.headers['content-type']).toContain('text/plain');
    const text = response.body;
    expect(text).toMatch(/^abide_http_request_duration_seconds_count\{method="GET",route="\/v1\/runs\/:runId"\} 2$/m);
    expect(text).toMatch(/^abide_http_request_duration_seconds_bucket\{le="\+Inf",method="GET",route="\/v1\/runs\/:runId"\} 2$/m);
    expect(text).toMatch(/^abide_http_requests_total\{method="GET",route="\/v1\/runs\/:runId",status="404"\} 2$/m);
    expect(text).not.toContain('tenant_chosen');
    expect(text).not.toContain('/v1/no/such/route');
    // Open sockets and streams are gauges read at scrape time.
    expect(text).toMatch(/^abide_websocket_connections 0$/m);
  });
});
