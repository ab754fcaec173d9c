import { abideTracer, contextFromTraceparent, linkTo, recordSpanError, SpanKind, activeTraceContext, spanTraceparentField, type Span, type TransitionDocument } from '@abide/shared';

/**
 * The `run.transition` spans of one input's apply (issue 10). One run is one trace: a
 * transition's span is a child of the message that caused it when that message belongs to the
 * run's trace (a model or tool result), and otherwise (an approval's decision, a cancel, a timer:
 * messages from their own requests' traces, maybe hours later) a child of the run's latest
 * transition, with a link to the cause. Waiting for a person is thus a gap in the run's trace,
 * never an hour-long span (docs/decisions.md, "Operations").
 */
export type TransitionSpans = {
  /**
   * Starts the span of `next`, about to be committed on `current`, and answers the
   * `traceparent` field `next` stores (empty when tracing is off). A span left open by a lost
   * commit race ends here, marked as such.
   */
  start(current: TransitionDocument, next: TransitionDocument, causeKind: string): { traceparent?: string };
  /** Ends the open span, recording `error` if the apply failed. */
  finish(error?: unknown): void;
};

export function createTransitionSpans(): TransitionSpans {
  let open: Span | undefined;
  return {
    start(current, next, causeKind) {
      if (open) {
        open.setAttribute('abide.commit.conflict', true);
        open.end();
      }
      const incoming = activeTraceContext();
      const run = contextFromTraceparent(current.traceparent);
      const runTraceId = linkTo(run)[0]?.context.traceId;
      const sameTrace = runTraceId === undefined || linkTo(incoming)[0]?.context.traceId === runTraceId;
      const span = abideTracer().startSpan(
        'run.transition',
        {
          kind: SpanKind.INTERNAL,
          attributes: {
            'abide.run.id': next.runId,
            'abide.tenant.id': next.tenantId,
            'abide.run.version': next.version,
            'abide.run.status': next.state.status,
            'abide.run.step': next.state.step,
            'abide.cause.kind': causeKind,
          },
          links: sameTrace ? [] : linkTo(incoming, { 'abide.link': 'cause' }),
        },
        sameTrace ? incoming : run,
      );
      open = span;
      return spanTraceparentField(span);
    },
    finish(error) {
      if (!open) return;
      if (error !== undefined) recordSpanError(open, error);
      open.end();
      open = undefined;
    },
  };
}
