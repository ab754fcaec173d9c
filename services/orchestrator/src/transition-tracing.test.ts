import { contextFromTraceparent, inSpan, spanTraceparentField, type RunState, type TransitionDocument } from '@abide/shared';
import { startCapturedTracing } from '@abide/shared/testing';
import { describe, expect, it } from 'vitest';
import { createTransitionSpans } from './transition-tracing.ts';

function transition(version: number, status: RunState['status'], traceparent?: string): TransitionDocument {
  return {
    _id: `run_1:${version}`,
    runId: 'run_1',
    tenantId: 't1',
    version,
    at: new Date(),
    cause: 'c',
    state: { status, step: 1 } as RunState,
    outbox: [],
    published: true,
    ...(traceparent ? { traceparent } : {}),
  };
}

describe('run.transition spans (issue 10)', () => {
  it('continue the run trace across a suspension: a decision from another trace is a link, the run’s last transition the parent', async () => {
    const { tracing, exported } = await startCapturedTracing('orchestrator');
    try {
      // The run's trace: the transition that suspended it, hours ago.
      const suspended = transition(3, 'suspended', (await inSpan('run.transition', {}, async (span) => spanTraceparentField(span))).traceparent);
      const [, runTraceId, suspendedSpanId] = suspended.traceparent!.split('-');

      // The decision arrives in its own request's trace.
      const decision = await inSpan('POST approval', {}, async (requestSpan) => {
        const spans = createTransitionSpans();
        const stored = spans.start(suspended, transition(4, 'running'), 'approval_decision');
        spans.finish();
        return { stored, requestSpan: requestSpan.spanContext() };
      });
      // A result from the run's own trace: the message that brought it is the parent, no link;
      // a lost commit race starts the span again, the first one ends marked.
      const resultCause = await inSpan('publish run.in tool_result', { parent: contextFromTraceparent(decision.stored.traceparent) }, async (causeSpan) => {
        const spans = createTransitionSpans();
        const current = transition(4, 'running', decision.stored.traceparent);
        spans.start(current, transition(5, 'running'), 'tool_result');
        spans.start(current, transition(5, 'running'), 'tool_result');
        spans.finish(new Error('boom'));
        return causeSpan.spanContext();
      });
      await tracing.shutdown();

      const resumed = exported.find((span) => span.name === 'run.transition' && span.attributes['abide.run.version'] === 4)!;
      expect(resumed.spanContext().traceId).toBe(runTraceId);
      expect(resumed.parentSpanContext?.spanId).toBe(suspendedSpanId);
      expect(resumed.links.map((link) => link.context.spanId)).toEqual([decision.requestSpan.spanId]);
      expect(decision.requestSpan.traceId).not.toBe(runTraceId);
      expect(resumed.attributes).toMatchObject({ 'abide.run.id': 'run_1', 'abide.tenant.id': 't1', 'abide.run.status': 'running', 'abide.cause.kind': 'approval_decision' });
      // What version 4 stores continues the run's trace, from this span.
      expect(decision.stored.traceparent?.split('-').slice(1, 3)).toEqual([runTraceId, resumed.spanContext().spanId]);

      const fromResult = exported.filter((span) => span.name === 'run.transition' && span.attributes['abide.run.version'] === 5);
      expect(fromResult).toHaveLength(2);
      for (const span of fromResult) {
        expect([span.spanContext().traceId, span.parentSpanContext?.spanId, span.links]).toEqual([runTraceId, resultCause.spanId, []]);
      }
      expect(fromResult.map((span) => span.attributes['abide.commit.conflict'])).toEqual([true, undefined]);
      expect(fromResult.map((span) => span.status.code)).toEqual([0, 2]);
    } finally {
      await tracing.shutdown();
    }
  });
});
