import type { RunTransitionView } from '@abide/shared';
import { useEffect, useState } from 'preact/hooks';
import { api, describeError } from '../api.ts';
import { runHref } from '../format.ts';

/** Every transition of a run (`GET /v1/runs/:runId/history`), oldest first. */
export function HistoryView({ runId }: { runId: string }) {
  const [transitions, setTransitions] = useState<RunTransitionView[]>([]);
  const [nextCursor, setNextCursor] = useState<string | null>(null);
  const [problem, setProblem] = useState<string | null>(null);

  async function load(after?: string) {
    try {
      const page = await api.history(runId, after);
      setTransitions((current) => (after ? [...current, ...page.transitions] : page.transitions));
      setNextCursor(page.nextCursor);
    } catch (error) {
      setProblem(describeError(error));
    }
  }

  useEffect(() => {
    void load();
  }, [runId]);

  return (
    <section aria-labelledby="history-title">
      <h1 id="history-title">
        History of <a href={runHref(runId)}>{runId}</a>
      </h1>
      {problem ? <p role="alert" class="problem">{problem}</p> : null}
      <div class="table-scroll">
        <table class="history">
          <thead>
            <tr>
              <th scope="col">Version</th>
              <th scope="col">Status</th>
              <th scope="col">Step</th>
              <th scope="col">Awaiting</th>
              <th scope="col">Cause</th>
              <th scope="col">At</th>
            </tr>
          </thead>
          <tbody>
            {transitions.map((transition) => (
              <tr key={transition.version}>
                <td>{transition.version}</td>
                <td>
                  <span class={`status status-${transition.status}`}>{transition.status}</span>
                </td>
                <td>{transition.step}</td>
                <td>{transition.awaiting ?? '—'}</td>
                <td>
                  <code>{transition.cause}</code>
                </td>
                <td>{new Date(transition.at).toLocaleString()}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      {nextCursor ? (
        <button type="button" onClick={() => load(nextCursor)}>
          Load more
        </button>
      ) : null}
    </section>
  );
}
