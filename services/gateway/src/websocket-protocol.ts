/**
 * API keys over the WebSocket subprotocol header, for browsers (which cannot set an
 * `Authorization` header on a WebSocket and must not put the key in a URL). The client offers
 * `Sec-WebSocket-Protocol: abide.v1, abide.key.<base64url(key)>`; the server selects `abide.v1`
 * and never echoes the key. See docs/api.md (WebSocket) and docs/decisions.md.
 */
export const webSocketProtocol = 'abide.v1';
export const webSocketKeyProtocolPrefix = 'abide.key.';

/** The API key carried in `Sec-WebSocket-Protocol`, if any. */
export function apiKeyFromWebSocketProtocols(header: string | string[] | undefined): string | undefined {
  if (header === undefined) return undefined;
  for (const protocol of [header].flat().join(',').split(',')) {
    const trimmed = protocol.trim();
    if (!trimmed.startsWith(webSocketKeyProtocolPrefix)) continue;
    const encoded = trimmed.slice(webSocketKeyProtocolPrefix.length);
    if (!/^[A-Za-z0-9_-]{1,1024}$/.test(encoded)) return undefined;
    return Buffer.from(encoded, 'base64url').toString('utf8');
  }
  return undefined;
}

/** The `ws` server's `handleProtocols`: answer `abide.v1` when offered, never the key protocol. */
export function selectWebSocketProtocol(protocols: Set<string>): string | false {
  return protocols.has(webSocketProtocol) ? webSocketProtocol : false;
}

/** Whether a browser's `Origin` is the gateway's own (the console it serves), judged by the `Host` it connected to. */
export function isSameOrigin(origin: string | undefined, host: string | undefined): boolean {
  if (origin === undefined || host === undefined) return false;
  try {
    const page = new URL(origin);
    // Through URL on both sides, so a default port (`:80` / `:443`) compares equal to none.
    return page.host === new URL(`${page.protocol}//${host}`).host;
  } catch {
    // Not a URL (`null` from a sandboxed page, garbage): not the gateway's own page.
    return false;
  }
}
