import { traceparentOf } from '@abide/shared';
import { startCapturedTracing } from '@abide/shared/testing';
import Fastify from 'fastify';
import { describe, expect, it } from 'vitest';
import { registerRequestTracing } from './request-tracing.ts';

describe('request tracing (issue 10)', () => {
  it('a server span per request, active in the handler, a new trace linked to the caller’s; 5xx failed; probes untraced', async () => {
    const { tracing, exported } = await startCapturedTracing('gateway');
    const app = Fastify();
    try {
      registerRequestTracing(app);
      app.post('/v1/runs/:runId', async () => ({ traceparent: traceparentOf() }));
      app.get('/boom', async () => {
        throw new Error('database on fire');
      });
      app.get('/healthz', async () => ({ status: 'ok' }));
      await app.ready();

      const caller = '00-abcdef0123456789abcdef0123456789-0123456789abcdef-01';
      const ok = await app.inject({ method: 'POST', url: '/v1/runs/run_1', payload: { input: 'secret words' }, headers: { traceparent: caller } });
      const seen = (ok.json() as { traceparent?: string }).traceparent;
      expect(seen).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
      expect((await app.inject({ method: 'GET', url: '/boom' })).statusCode).toBe(500);
      expect((await app.inject({ method: 'GET', url: '/healthz' })).statusCode).toBe(200);
      await tracing.shutdown();

      expect(exported.map((span) => span.name).sort()).toEqual(['GET /boom', 'POST /v1/runs/:runId']);
      const post = exported.find((span) => span.name === 'POST /v1/runs/:runId')!;
      // The handler ran inside it: what it would store or publish continues this span.
      expect(seen!.split('-').slice(1, 3)).toEqual([post.spanContext().traceId, post.spanContext().spanId]);
      expect(post.parentSpanContext).toBeUndefined();
      expect(post.links.map((link) => link.context.traceId)).toEqual(['abcdef0123456789abcdef0123456789']);
      expect(post.attributes).toMatchObject({ 'http.route': '/v1/runs/:runId', 'http.response.status_code': 200 });
      expect(JSON.stringify(post.attributes)).not.toContain('secret words');
      const boom = exported.find((span) => span.name === 'GET /boom')!;
      expect([boom.status.code, boom.events.map((event) => event.name)]).toEqual([2, ['exception']]);
    } finally {
      await app.close();
      await tracing.shutdown();
    }
  });
});
