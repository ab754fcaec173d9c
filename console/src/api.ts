import type { RunHistoryResponse, RunView } from '@abide/shared';

/** The key lives in this tab's session storage only: never in a URL, never in local storage. */
const storageKey = 'abide.apiKey';

export const session = {
  key: (): string | null => sessionStorage.getItem(storageKey),
  signIn: (key: string) => sessionStorage.setItem(storageKey, key),
  signOut: () => sessionStorage.removeItem(storageKey),
};

/** An error answered by the API (`{ error: { code, message } }`), or `network` when none came back. */
export class ApiRequestError extends Error {
  override readonly name = 'ApiRequestError';
  readonly code: string;
  readonly status: number;
  constructor(code: string, message: string, status: number) {
    super(message);
    this.code = code;
    this.status = status;
  }
}

export type PendingApproval = { runId: string; toolCallId: string; toolName: string; args: unknown; expiresAt?: string };
export type ToolDefinition = { name: string; description?: string; inputSchema: Record<string, unknown>; needsApproval?: boolean };
export type AgentView = { agentId: string; version: number; tools: ToolDefinition[] };
export type RunListPage = { runs: RunView[]; nextCursor: string | null };

/** Calls the public API with `Authorization: Bearer <key>`. */
export async function request<Body>(method: string, path: string, body?: unknown): Promise<Body> {
  const key = session.key();
  let response: Response;
  try {
    response = await fetch(path, {
      method,
      headers: { ...(key ? { authorization: `Bearer ${key}` } : {}), ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
      ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    });
  } catch (error) {
    throw new ApiRequestError('network', `cannot reach the gateway (${(error as Error).message})`, 0);
  }
  const text = await response.text();
  let parsed: unknown;
  try {
    parsed = text ? JSON.parse(text) : undefined;
  } catch {
    // A proxy's HTML error page, say: reported with the status below.
    parsed = undefined;
  }
  if (!response.ok) {
    const error = (parsed as { error?: { code?: string; message?: string } } | undefined)?.error;
    throw new ApiRequestError(error?.code ?? 'http_error', error?.message ?? `HTTP ${response.status}`, response.status);
  }
  return parsed as Body;
}

const query = (fields: Record<string, string | number | undefined>) => {
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(fields)) if (value !== undefined && value !== '') params.set(name, String(value));
  const text = params.toString();
  return text ? `?${text}` : '';
};

export const api = {
  listRuns: (filters: { status?: string; conversationId?: string; cursor?: string; limit?: number }) => request<RunListPage>('GET', `/v1/runs${query(filters)}`),
  getRun: (runId: string) => request<RunView>('GET', `/v1/runs/${encodeURIComponent(runId)}`),
  createRun: (body: { agentId: string; input: string; conversationId?: string }) =>
    request<{ runId: string; status: string; conversationId: string }>('POST', '/v1/runs', body),
  cancelRun: (runId: string) => request<{ status: string }>('POST', `/v1/runs/${encodeURIComponent(runId)}/cancel`, {}),
  history: (runId: string, after?: string) => request<RunHistoryResponse>('GET', `/v1/runs/${encodeURIComponent(runId)}/history${query({ after })}`),
  pendingApprovals: () => request<{ approvals: PendingApproval[] }>('GET', '/v1/approvals'),
  decide: (runId: string, toolCallId: string, decision: { approved: boolean; reason?: string; args?: Record<string, unknown> }) =>
    request<{ status: string }>('POST', `/v1/runs/${encodeURIComponent(runId)}/approvals/${encodeURIComponent(toolCallId)}`, decision),
  getAgent: (agentId: string) => request<AgentView>('GET', `/v1/agents/${encodeURIComponent(agentId)}`),
};

/** A short, human message for an API error code. */
export function describeError(error: unknown): string {
  if (!(error instanceof ApiRequestError)) return (error as Error)?.message ?? String(error);
  const hints: Record<string, string> = {
    unauthorized: 'The API key was refused. Sign in again.',
    run_not_found: 'No such run (or it belongs to another tenant).',
    agent_not_found: 'No such agent.',
    approval_not_found: 'That call is not pending any more.',
    conversation_busy: 'Another run of this conversation is active.',
    approval_conflict: 'Someone decided this call differently first.',
    run_not_suspended: 'The run is not waiting for an approval.',
    run_finished: 'The run has ended.',
    run_history_pruned: "This run ended longer ago than the deployment's retention: its history was deleted (the run itself is still shown).",
    invalid_args: 'The edited arguments do not match the tool schema.',
    rate_limited: 'Too many requests: try again shortly.',
    unavailable: 'The gateway is not ready: try again shortly.',
    network: 'The gateway cannot be reached.',
  };
  return `${hints[error.code] ?? 'Request failed.'} (${error.code}: ${error.message})`;
}
