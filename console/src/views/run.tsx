import type { RunView as RunSummary } from '@abide/shared';
import { useEffect, useState } from 'preact/hooks';
import { api, describeError } from '../api.ts';
import { json } from '../format.ts';
import type { ConnectionState, LiveConnection } from '../live.ts';
import { applyRunEvent, emptyRunModel, type RunModel, type ToolCallView } from '../run-model.ts';
import { ApprovalCard } from './approval-card.tsx';

function ToolCall({ runId, call }: { runId: string; call: ToolCallView }) {
  if (call.approval?.state === 'pending') {
    return <ApprovalCard runId={runId} toolCallId={call.toolCallId} toolName={call.toolName} args={call.args} expiresAt={call.approval.expiresAt} />;
  }
  return (
    <article class="card tool-call" aria-label={`Tool call ${call.toolName} ${call.toolCallId}`}>
      <header>
        <strong>{call.toolName}</strong> <code>{call.toolCallId}</code>
        {call.approval ? (
          <span class={`badge badge-${call.approval.state}`}>
            {call.approval.state}
            {call.approval.reason ? `: ${call.approval.reason}` : ''}
            {call.approval.source ? ` (${call.approval.source})` : ''}
          </span>
        ) : null}
      </header>
      <details open>
        {/* Events carry the model's arguments; an approver's edited ones show in the result. */}
        <summary>Arguments (as the model asked)</summary>
        <pre>{json(call.args)}</pre>
      </details>
      {call.error ? (
        <p class="problem">
          {call.error.code}: {call.error.message}
        </p>
      ) : 'result' in call ? (
        <details open>
          <summary>Result</summary>
          <pre data-testid="tool-result">{json(call.result)}</pre>
        </details>
      ) : (
        <p class="muted">waiting for the result…</p>
      )}
    </article>
  );
}

/** One run, followed over the WebSocket from its first event; resumes from the last `seq` after a drop. */
export function RunView({ runId, live }: { runId: string; live: LiveConnection }) {
  const [summary, setSummary] = useState<RunSummary | null>(null);
  const [model, setModel] = useState<RunModel>(emptyRunModel);
  const [problem, setProblem] = useState<string | null>(null);
  const [connection, setConnection] = useState<ConnectionState>(live.state);

  const refresh = () =>
    api.getRun(runId).then(
      (run) => {
        setSummary(run);
        setProblem(null);
      },
      (error: unknown) => setProblem(describeError(error)),
    );

  useEffect(() => {
    setModel(emptyRunModel);
    setSummary(null);
    setProblem(null);
    void refresh();
    const stopState = live.onState(setConnection);
    const stop = live.subscribe(runId, undefined, {
      onEvent(event) {
        setModel((current) => applyRunEvent(current, event));
        if (event.type === 'run.suspended' || event.type === 'run.resumed' || event.type.startsWith('run.c') || event.type === 'run.failed') void refresh();
      },
      onError(code, message) {
        setProblem(`${code}: ${message}`);
      },
    });
    return () => {
      stop();
      stopState();
    };
  }, [runId]);

  async function cancel() {
    try {
      await api.cancelRun(runId);
    } catch (error) {
      setProblem(describeError(error));
    }
  }

  const status = model.lastSeq !== null ? model.status : (summary?.status ?? 'queued');
  const usage = model.usage ?? summary?.usage;
  const ended = model.ended || ['completed', 'failed', 'cancelled'].includes(summary?.status ?? '');

  return (
    <section aria-labelledby="run-title" class="run-view">
      <header class="run-header">
        <h1 id="run-title">
          Run <code>{runId}</code>
        </h1>
        <p>
          <span class={`status status-${status}`} data-testid="run-status" aria-live="polite">
            {status}
          </span>
          {summary ? (
            <span class="muted">
              {' '}
              · agent {summary.agentId} v{summary.agentVersion} · conversation {summary.conversationId} · started {new Date(summary.createdAt).toLocaleString()}
            </span>
          ) : null}
          <span class={`connection connection-${connection}`}> · live: {connection}</span>
        </p>
        <nav class="actions" aria-label="Run actions">
          <a href={`#/runs/${encodeURIComponent(runId)}/history`}>History</a>
          {!ended ? (
            <button type="button" class="danger" onClick={cancel}>
              Cancel run
            </button>
          ) : null}
        </nav>
      </header>
      {problem ? <p role="alert" class="problem">{problem}</p> : null}
      <ol class="timeline">
        {model.steps.map((step) => (
          <li key={step.step}>
            <h2>Step {step.step}</h2>
            {step.text ? (
              <p class={`model-text ${step.completed ? '' : 'streaming'}`} data-testid="model-text">
                {step.text}
              </p>
            ) : null}
            {model.toolCalls
              .filter((call) => call.step === step.step)
              .map((call) => (
                <ToolCall key={call.toolCallId} runId={runId} call={call} />
              ))}
          </li>
        ))}
      </ol>
      {model.status === 'completed' ? (
        <div class="card terminal completed" data-testid="run-output">
          <h2>Output</h2>
          <p>{model.output}</p>
        </div>
      ) : null}
      {model.status === 'failed' && model.error ? (
        <div class="card terminal failed" role="alert">
          <h2>Failed</h2>
          <p>
            {model.error.code}: {model.error.message}
          </p>
        </div>
      ) : null}
      {model.status === 'cancelled' ? (
        <div class="card terminal cancelled">
          <h2>Cancelled</h2>
          {model.cancelReason ? <p>{model.cancelReason}</p> : null}
        </div>
      ) : null}
      {usage ? (
        <p class="muted" data-testid="usage">
          Usage: {usage.inputTokens} input + {usage.outputTokens} output = {usage.totalTokens} tokens
        </p>
      ) : null}
    </section>
  );
}
