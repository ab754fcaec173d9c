import { useEffect, useState } from 'preact/hooks';
import { api, describeError, type PendingApproval } from '../api.ts';
import { ApprovalCard } from './approval-card.tsx';

const refreshMs = 3_000;

/** Pending approvals across the tenant's runs (`GET /v1/approvals`). */
export function ApprovalsView() {
  const [approvals, setApprovals] = useState<PendingApproval[]>([]);
  const [loaded, setLoaded] = useState(false);
  const [problem, setProblem] = useState<string | null>(null);

  const load = () =>
    api.pendingApprovals().then(
      (answer) => {
        setApprovals(answer.approvals);
        setProblem(null);
        setLoaded(true);
      },
      (error: unknown) => setProblem(describeError(error)),
    );

  useEffect(() => {
    void load();
    const timer = setInterval(load, refreshMs);
    return () => clearInterval(timer);
  }, []);

  return (
    <section aria-labelledby="approvals-title">
      <h1 id="approvals-title">Approvals</h1>
      {problem ? <p role="alert" class="problem">{problem}</p> : null}
      {loaded && approvals.length === 0 ? <p class="muted" data-testid="no-approvals">Nothing waits for a decision.</p> : null}
      {approvals.map((approval) => (
        <ApprovalCard key={`${approval.runId}/${approval.toolCallId}`} {...approval} showRun />
      ))}
    </section>
  );
}
