import { Validator, type Schema } from '@cfworker/json-schema';
import { useState } from 'preact/hooks';
import { api, describeError, type AgentView } from '../api.ts';
import { json, runHref } from '../format.ts';

/** Agents by id, fetched once per page load (`GET /v1/agents/:agentId`). */
const agentTools = new Map<string, Promise<AgentView>>();

/**
 * The tool's input schema as the run knows it, or null when the agent has changed since the run
 * started (the run keeps its own version; the API then checks the arguments against that one).
 */
async function toolSchema(runId: string, toolName: string): Promise<Record<string, unknown> | null> {
  const run = await api.getRun(runId);
  let agent = agentTools.get(run.agentId);
  if (!agent) {
    agent = api.getAgent(run.agentId);
    agentTools.set(run.agentId, agent);
    // A failed read is not cached; the caller awaiting `agent` below reports the error itself.
    agent.catch(() => agentTools.delete(run.agentId));
  }
  const current = await agent;
  if (current.version !== run.agentVersion) return null;
  return current.tools.find((tool) => tool.name === toolName)?.inputSchema ?? null;
}

/** Problems of `args` under the tool's JSON Schema (empty when valid). */
export function validateArgs(schema: Record<string, unknown>, args: unknown): string[] {
  const result = new Validator(schema as Schema, '2020-12', false).validate(args);
  return result.valid ? [] : result.errors.filter((error) => error.instanceLocation !== '#' || result.errors.length === 1).slice(0, 5).map((error) => `${error.instanceLocation}: ${error.error}`);
}

type Props = { runId: string; toolCallId: string; toolName: string; args: unknown; expiresAt?: string | undefined; showRun?: boolean; onDecided?: () => void };

/** A pending tool call: approve, deny with a reason, or approve with edited arguments checked against the tool's schema. */
export function ApprovalCard(props: Props) {
  const [reason, setReason] = useState('');
  const [editing, setEditing] = useState(false);
  const [editedArgs, setEditedArgs] = useState(json(props.args));
  const [problems, setProblems] = useState<string[]>([]);
  const [busy, setBusy] = useState(false);
  const [outcome, setOutcome] = useState<string | null>(null);
  const idPrefix = `approval-${props.runId}-${props.toolCallId}`;

  async function decide(approved: boolean, args?: Record<string, unknown>) {
    setBusy(true);
    setProblems([]);
    try {
      const answer = await api.decide(props.runId, props.toolCallId, { approved, ...(reason ? { reason } : {}), ...(args ? { args } : {}) });
      setOutcome(`${approved ? 'Approved' : 'Denied'} (${answer.status})`);
      props.onDecided?.();
    } catch (error) {
      setProblems([describeError(error)]);
    } finally {
      setBusy(false);
    }
  }

  async function approveEdited() {
    let args: unknown;
    try {
      args = JSON.parse(editedArgs);
    } catch (error) {
      setProblems([`Not JSON: ${(error as Error).message}`]);
      return;
    }
    if (typeof args !== 'object' || args === null || Array.isArray(args)) {
      setProblems(['The arguments must be a JSON object.']);
      return;
    }
    try {
      const schema = await toolSchema(props.runId, props.toolName);
      const found = schema ? validateArgs(schema, args) : [];
      if (found.length > 0) {
        setProblems(found);
        return;
      }
    } catch (error) {
      setProblems([`Cannot read the tool's schema: ${describeError(error)}`]);
      return;
    }
    await decide(true, args as Record<string, unknown>);
  }

  return (
    <article class="card approval" aria-label={`Approval for ${props.toolName} ${props.toolCallId}`} data-testid="approval-card">
      <header>
        <strong>{props.toolName}</strong> <code>{props.toolCallId}</code>
        {props.showRun ? (
          <>
            {' '}of run <a href={runHref(props.runId)}>{props.runId}</a>
          </>
        ) : null}
        {props.expiresAt ? <span class="muted"> · expires {new Date(props.expiresAt).toLocaleString()}</span> : null}
      </header>
      <pre class="args">{json(props.args)}</pre>
      {outcome ? (
        <p role="status" class="ok">
          {outcome}
        </p>
      ) : (
        <div class="actions">
          <button type="button" class="primary" disabled={busy} onClick={() => decide(true)}>
            Approve
          </button>
          <label for={`${idPrefix}-reason`} class="visually-hidden">
            Reason for denying
          </label>
          <input id={`${idPrefix}-reason`} placeholder="reason (for deny)" value={reason} onInput={(event) => setReason(event.currentTarget.value)} />
          <button type="button" class="danger" disabled={busy} onClick={() => decide(false)}>
            Deny
          </button>
          <button type="button" disabled={busy} aria-expanded={editing} onClick={() => setEditing(!editing)}>
            Edit arguments
          </button>
        </div>
      )}
      {editing && !outcome ? (
        <div class="edit">
          <label for={`${idPrefix}-args`}>Arguments (JSON, checked against the tool's schema)</label>
          <textarea id={`${idPrefix}-args`} rows={6} value={editedArgs} onInput={(event) => setEditedArgs(event.currentTarget.value)} />
          <button type="button" class="primary" disabled={busy} onClick={approveEdited}>
            Approve with these arguments
          </button>
        </div>
      ) : null}
      {problems.length > 0 ? (
        <ul role="alert" class="problems">
          {problems.map((problem) => (
            <li key={problem}>{problem}</li>
          ))}
        </ul>
      ) : null}
    </article>
  );
}
