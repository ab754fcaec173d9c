import { ApiError } from '@abide/shared';
import { createHash } from 'node:crypto';

/** Who is calling: the API key's tenant, and a short id of the key (never the key itself). */
export type Caller = { tenantId: string; keyId: string };

/** A short, non-reversible id of an API key, for logs and `decidedBy`. */
export function apiKeyId(key: string): string {
  return `key_${createHash('sha256').update(key).digest('hex').slice(0, 12)}`;
}

/**
 * Authenticates `Authorization: Bearer <key>` (or, where a browser cannot set headers — the
 * WebSocket and SSE routes — `?access_token=<key>`); anything else is 401 `unauthorized`.
 */
export function createAuthenticator(apiKeys: ReadonlyMap<string, string>) {
  const callers = new Map<string, Caller>([...apiKeys].map(([key, tenantId]) => [key, { tenantId, keyId: apiKeyId(key) }]));
  return {
    authenticate(authorization: string | undefined, accessToken: string | undefined): Caller {
      let key: string | undefined;
      if (authorization !== undefined) {
        const match = /^Bearer\s+(\S+)\s*$/i.exec(authorization);
        key = match?.[1];
      } else {
        key = accessToken;
      }
      const caller = key === undefined ? undefined : callers.get(key);
      if (!caller) throw new ApiError('unauthorized', 'missing or unknown API key (send Authorization: Bearer <key>)');
      return caller;
    },
  };
}
export type Authenticator = ReturnType<typeof createAuthenticator>;
