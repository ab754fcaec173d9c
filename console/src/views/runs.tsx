import type { RunView } from '@abide/shared';
import { useEffect, useState } from 'preact/hooks';
import { api, describeError } from '../api.ts';
import { age, runHref } from '../format.ts';
import type { LiveConnection } from '../live.ts';

const statuses = ['', 'queued', 'running', 'suspended', 'completed', 'failed', 'cancelled'] as const;
const statusByEvent: Record<string, RunView['status']> = {
  'run.started': 'running',
  'run.resumed': 'running',
  'run.suspended': 'suspended',
  'run.completed': 'completed',
  'run.failed': 'failed',
  'run.cancelled': 'cancelled',
};
const activeStatuses = new Set(['queued', 'running', 'suspended']);
/** New runs (created elsewhere) appear within this; status changes arrive live over the socket. */
const refreshMs = 5_000;

function StartRunForm() {
  const [agentId, setAgentId] = useState('');
  const [input, setInput] = useState('');
  const [conversationId, setConversationId] = useState('');
  const [problem, setProblem] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);

  async function submit(event: Event) {
    event.preventDefault();
    setBusy(true);
    setProblem(null);
    try {
      const created = await api.createRun({ agentId: agentId.trim(), input, ...(conversationId.trim() ? { conversationId: conversationId.trim() } : {}) });
      location.hash = runHref(created.runId);
    } catch (error) {
      setProblem(describeError(error));
    } finally {
      setBusy(false);
    }
  }

  return (
    <form class="card start-run" onSubmit={submit} aria-labelledby="start-run-title">
      <h2 id="start-run-title">Start a run</h2>
      <div class="fields">
        <label>
          Agent
          <input name="agentId" required value={agentId} onInput={(event) => setAgentId(event.currentTarget.value)} />
        </label>
        <label>
          Conversation (optional)
          <input name="conversationId" value={conversationId} onInput={(event) => setConversationId(event.currentTarget.value)} />
        </label>
        <label class="wide">
          Input
          <textarea name="input" required rows={2} value={input} onInput={(event) => setInput(event.currentTarget.value)} />
        </label>
      </div>
      <button type="submit" class="primary" disabled={busy}>
        Start
      </button>
      {problem ? <p role="alert" class="problem">{problem}</p> : null}
    </form>
  );
}

/** The tenant's runs, newest first, with filters; statuses update live. */
export function RunsView({ live }: { live: LiveConnection }) {
  const [status, setStatus] = useState('');
  const [conversationId, setConversationId] = useState('');
  const [runs, setRuns] = useState<RunView[]>([]);
  const [nextCursor, setNextCursor] = useState<string | null>(null);
  const [problem, setProblem] = useState<string | null>(null);
  const [loaded, setLoaded] = useState(false);
  const [, setTick] = useState(0);

  async function load(cursor?: string) {
    try {
      const page = await api.listRuns({ status: status || undefined, conversationId: conversationId.trim() || undefined, cursor });
      setRuns((current) => (cursor ? [...current, ...page.runs] : page.runs));
      setNextCursor(page.nextCursor);
      setProblem(null);
    } catch (error) {
      setProblem(describeError(error));
    } finally {
      setLoaded(true);
    }
  }

  useEffect(() => {
    void load();
    const timer = setInterval(() => {
      void load();
      setTick((tick) => tick + 1);
    }, refreshMs);
    return () => clearInterval(timer);
  }, [status, conversationId]);

  // Live status: follow each active run shown, from the last event the list knows of.
  const activeKey = runs.filter((run) => activeStatuses.has(run.status)).map((run) => `${run.runId}@${run.lastSeq ?? ''}`).join(',');
  useEffect(() => {
    const stops = runs
      .filter((run) => activeStatuses.has(run.status))
      .map((run) =>
        live.subscribe(run.runId, run.lastSeq ?? undefined, {
          onEvent(event) {
            const next = statusByEvent[event.type];
            if (next) setRuns((current) => current.map((candidate) => (candidate.runId === run.runId ? { ...candidate, status: next } : candidate)));
          },
          onError() {
            // The list refreshes from the API every few seconds; a failed follow only delays a status.
          },
        }),
      );
    return () => stops.forEach((stop) => stop());
  }, [activeKey]);

  return (
    <section aria-labelledby="runs-title">
      <StartRunForm />
      <h1 id="runs-title">Runs</h1>
      <form class="filters" onSubmit={(event) => event.preventDefault()} aria-label="Filters">
        <label>
          Status
          <select name="status" value={status} onChange={(event) => setStatus(event.currentTarget.value)}>
            {statuses.map((value) => (
              <option key={value} value={value}>
                {value || 'any'}
              </option>
            ))}
          </select>
        </label>
        <label>
          Conversation
          <input name="conversation" value={conversationId} onChange={(event) => setConversationId(event.currentTarget.value)} />
        </label>
      </form>
      {problem ? <p role="alert" class="problem">{problem}</p> : null}
      <div class="table-scroll">
        <table class="runs">
          <thead>
            <tr>
              <th scope="col">Run</th>
              <th scope="col">Status</th>
              <th scope="col">Agent</th>
              <th scope="col">Conversation</th>
              <th scope="col">Age</th>
            </tr>
          </thead>
          <tbody>
            {runs.map((run) => (
              <tr key={run.runId} data-run-id={run.runId}>
                <td>
                  <a href={runHref(run.runId)}>{run.runId}</a>
                </td>
                <td>
                  <span class={`status status-${run.status}`}>{run.status}</span>
                </td>
                <td>{run.agentId}</td>
                <td>{run.conversationId}</td>
                <td title={run.createdAt}>{age(run.createdAt)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {loaded && runs.length === 0 ? <p class="muted" data-testid="no-runs">No runs.</p> : null}
      {nextCursor ? (
        <button type="button" onClick={() => load(nextCursor)}>
          Load more
        </button>
      ) : null}
    </section>
  );
}
