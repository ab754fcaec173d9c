import { render } from 'preact';
import { useEffect, useMemo, useState } from 'preact/hooks';
import { ApiRequestError, api, describeError, session } from './api.ts';
import { LiveConnection } from './live.ts';
import './style.css';
import { ApprovalsView } from './views/approvals.tsx';
import { HistoryView } from './views/history.tsx';
import { RunView } from './views/run.tsx';
import { RunsView } from './views/runs.tsx';

type Route = { view: 'runs' } | { view: 'run'; runId: string } | { view: 'history'; runId: string } | { view: 'approvals' };

/** Hash routes, so the gateway serves one page: `#/runs`, `#/runs/<id>`, `#/runs/<id>/history`, `#/approvals`. */
function parseRoute(hash: string): Route {
  const parts = hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  if (parts[0] === 'approvals') return { view: 'approvals' };
  if (parts[0] === 'runs' && parts[1]) return parts[2] === 'history' ? { view: 'history', runId: parts[1] } : { view: 'run', runId: parts[1] };
  return { view: 'runs' };
}

function SignIn({ onSignedIn }: { onSignedIn: () => void }) {
  const [key, setKey] = useState('');
  const [problem, setProblem] = useState<string | null>(null);

  async function submit(event: Event) {
    event.preventDefault();
    session.signIn(key.trim());
    try {
      await api.listRuns({ limit: 1 });
      onSignedIn();
    } catch (error) {
      session.signOut();
      setProblem(describeError(error));
    }
  }

  return (
    <main class="sign-in">
      <form class="card" onSubmit={submit} aria-labelledby="sign-in-title">
        <h1 id="sign-in-title">Abide console</h1>
        <label>
          API key
          <input type="password" name="apiKey" autocomplete="off" required autofocus value={key} onInput={(event) => setKey(event.currentTarget.value)} />
        </label>
        <p class="muted">Kept in this tab's session storage only, and sent as the Authorization header.</p>
        <button type="submit" class="primary">
          Sign in
        </button>
        {problem ? <p role="alert" class="problem">{problem}</p> : null}
      </form>
    </main>
  );
}

function Console({ apiKey, onSignOut }: { apiKey: string; onSignOut: () => void }) {
  const [route, setRoute] = useState(parseRoute(location.hash));
  const live = useMemo(() => new LiveConnection(apiKey), [apiKey]);

  useEffect(() => {
    const onHash = () => setRoute(parseRoute(location.hash));
    addEventListener('hashchange', onHash);
    // A refused key (revoked, or another gateway) signs out instead of failing every request.
    const onRejection = (event: PromiseRejectionEvent) => {
      if (event.reason instanceof ApiRequestError && event.reason.code === 'unauthorized') onSignOut();
    };
    addEventListener('unhandledrejection', onRejection);
    return () => {
      removeEventListener('hashchange', onHash);
      removeEventListener('unhandledrejection', onRejection);
      live.close();
    };
  }, [live]);

  return (
    <>
      <header class="top">
        <a class="brand" href="#/runs">
          Abide
        </a>
        <nav aria-label="Main">
          <a href="#/runs" aria-current={route.view === 'runs' ? 'page' : undefined}>
            Runs
          </a>
          <a href="#/approvals" aria-current={route.view === 'approvals' ? 'page' : undefined}>
            Approvals
          </a>
        </nav>
        <button type="button" onClick={onSignOut}>
          Sign out
        </button>
      </header>
      <main>
        {route.view === 'runs' ? <RunsView live={live} /> : null}
        {route.view === 'run' ? <RunView runId={route.runId} live={live} /> : null}
        {route.view === 'history' ? <HistoryView runId={route.runId} /> : null}
        {route.view === 'approvals' ? <ApprovalsView /> : null}
      </main>
    </>
  );
}

function App() {
  const [apiKey, setApiKey] = useState(session.key());
  if (!apiKey) return <SignIn onSignedIn={() => setApiKey(session.key())} />;
  return (
    <Console
      apiKey={apiKey}
      onSignOut={() => {
        session.signOut();
        setApiKey(null);
      }}
    />
  );
}

const root = document.getElementById('app');
if (root) render(<App />, root);
