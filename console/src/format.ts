/** Small display helpers. */

export function age(iso: string, now = Date.now()): string {
  const seconds = Math.max(0, Math.round((now - Date.parse(iso)) / 1000));
  if (seconds < 60) return `${seconds}s`;
  if (seconds < 3600) return `${Math.floor(seconds / 60)}m`;
  if (seconds < 86_400) return `${Math.floor(seconds / 3600)}h`;
  return `${Math.floor(seconds / 86_400)}d`;
}

export const json = (value: unknown) => JSON.stringify(value, null, 2) ?? 'undefined';

export const runHref = (runId: string) => `#/runs/${encodeURIComponent(runId)}`;
