import { CliError, exitCodes, fromApiError } from './errors.ts';

export type ClientOptions = { url: string; apiKey: string };

/** The public API over HTTP, `Authorization: Bearer <key>`; every non-2xx answer becomes a `CliError`. */
export function createClient(options: ClientOptions) {
  const base = options.url.replace(/\/+$/, '');

  async function request<Body>(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number; body: Body }> {
    let response: Response;
    try {
      response = await fetch(`${base}${path}`, {
        method,
        headers: { authorization: `Bearer ${options.apiKey}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }), ...headers },
        ...(body === undefined ? {} : { body: JSON.stringify(body) }),
        signal: AbortSignal.timeout(60_000),
      });
    } catch (error) {
      const nested = (error as { cause?: { code?: string; errors?: Array<{ code?: string }> } }).cause;
      const cause = nested?.code ?? nested?.errors?.[0]?.code ?? (error as Error).message;
      throw new CliError('network', `cannot reach the gateway at ${base} (${cause}); check ABIDE_URL (or --url)`, exitCodes.unavailable);
    }
    const text = await response.text();
    let parsed: unknown;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      // Not JSON: reported below with the status (a proxy's page, or not an Abide gateway).
      parsed = undefined;
    }
    if (!response.ok) {
      const error = (parsed as { error?: { code?: string; message?: string } } | undefined)?.error;
      throw fromApiError(response.status, error?.code, error?.message ?? (parsed === undefined ? text.slice(0, 200) : undefined));
    }
    return { status: response.status, body: parsed as Body };
  }

  const segment = encodeURIComponent;
  const query = (fields: Record<string, string | undefined>) => {
    const params = new URLSearchParams(Object.entries(fields).filter((entry): entry is [string, string] => entry[1] !== undefined));
    const text = params.toString();
    return text ? `?${text}` : '';
  };

  return {
    url: base,
    apiKey: options.apiKey,
    putAgent: (agentId: string, definition: unknown) => request<Record<string, unknown>>('PUT', `/v1/agents/${segment(agentId)}`, definition),
    getAgent: (agentId: string) => request<Record<string, unknown>>('GET', `/v1/agents/${segment(agentId)}`),
    createRun: (body: Record<string, unknown>, idempotencyKey?: string) =>
      request<{ runId: string; status: string; conversationId: string }>('POST', '/v1/runs', body, idempotencyKey ? { 'idempotency-key': idempotencyKey } : {}),
    listRuns: (filters: { status?: string; conversationId?: string; limit?: string; cursor?: string }) =>
      request<{ runs: Array<Record<string, unknown>>; nextCursor: string | null }>('GET', `/v1/runs${query(filters)}`),
    getRun: (runId: string) => request<Record<string, unknown> & { status: string; lastSeq: number | null }>('GET', `/v1/runs/${segment(runId)}`),
    history: (runId: string, after?: string, limit?: string) =>
      request<{ transitions: Array<Record<string, unknown>>; nextCursor: string | null }>('GET', `/v1/runs/${segment(runId)}/history${query({ after, limit })}`),
    cancelRun: (runId: string, reason?: string) => request<{ status: string }>('POST', `/v1/runs/${segment(runId)}/cancel`, reason ? { reason } : {}),
    decide: (runId: string, toolCallId: string, decision: { approved: boolean; reason?: string; args?: Record<string, unknown> }) =>
      request<{ status: string }>('POST', `/v1/runs/${segment(runId)}/approvals/${segment(toolCallId)}`, decision),
    pendingApprovals: () => request<{ approvals: Array<{ runId: string; toolCallId: string; toolName: string; args: unknown; expiresAt?: string }> }>('GET', '/v1/approvals'),
  };
}
export type Client = ReturnType<typeof createClient>;
