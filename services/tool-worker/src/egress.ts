/**
 * Which hosts HTTP tools may call (`TOOL_EGRESS_ALLOW`, DESIGN §8).
 *
 * Rules, for an entry of the allow list:
 * - `*` allows every host and port.
 * - `host` allows that host on any port; `host:port` only on that port.
 * - `*.domain` (or `*.domain:port`) allows every subdomain of `domain`, at any depth, but not
 *   `domain` itself (list it separately).
 * - IPv6 literals are written in brackets (`[::1]`, `[::1]:8080`); a bare literal (`::1`) is
 *   accepted without a port. IP literals are compared in canonical form (`127.1` is `127.0.0.1`,
 *   `[0:0::1]` is `[::1]`), never by wildcard.
 * - Hosts compare case-insensitively and without a trailing dot; the URL's port is its explicit
 *   port or the scheme's default (80 for `http`, 443 for `https`).
 * - Only `http` and `https` URLs are ever allowed; an empty list allows nothing.
 *
 * The check is on the URL's host name, not on the address it resolves to: a name that resolves to
 * an internal address is allowed if the name is. List names you trust, not suffixes of names
 * someone else controls.
 */

export type EgressRule =
  | { kind: 'any' }
  | { kind: 'host'; host: string; port: number | undefined }
  | { kind: 'subdomains'; domain: string; port: number | undefined };

/** Parses one allow-list entry; undefined when it is not a valid entry. */
export function parseEgressEntry(entry: string): EgressRule | undefined {
  const text = entry.trim().toLowerCase();
  if (text === '*') return { kind: 'any' };
  const wildcard = text.startsWith('*.');
  const hostAndPort = splitHostAndPort(wildcard ? text.slice(2) : text);
  if (!hostAndPort) return undefined;
  const host = canonicalHost(hostAndPort.host, hostAndPort.ipv6);
  if (!host) return undefined;
  if (wildcard) {
    if (hostAndPort.ipv6 || isIPv4(host)) return undefined;
    return { kind: 'subdomains', domain: host, port: hostAndPort.port };
  }
  return { kind: 'host', host, port: hostAndPort.port };
}

/** Entries of `allowList` that are not valid (for a start-up check naming them). */
export function invalidEgressEntries(allowList: readonly string[]): string[] {
  return allowList.filter((entry) => parseEgressEntry(entry) === undefined);
}

/** True when an HTTP tool may call `url` under `allowList` (see the module comment for the rules). */
export function isEgressAllowed(url: string | URL, allowList: readonly string[]): boolean {
  let target: URL;
  try {
    target = typeof url === 'string' ? new URL(url) : url;
  } catch {
    // Not a URL at all: nothing to allow.
    return false;
  }
  if (target.protocol !== 'http:' && target.protocol !== 'https:') return false;
  const host = stripTrailingDot(target.hostname.toLowerCase());
  const port = target.port ? Number(target.port) : target.protocol === 'https:' ? 443 : 80;
  const isLiteral = host.startsWith('[') || isIPv4(host);
  return allowList.some((entry) => {
    const rule = parseEgressEntry(entry);
    if (!rule) return false;
    if (rule.kind === 'any') return true;
    if (rule.port !== undefined && rule.port !== port) return false;
    if (rule.kind === 'host') return rule.host === host;
    return !isLiteral && host.endsWith(`.${rule.domain}`);
  });
}

function splitHostAndPort(text: string): { host: string; port: number | undefined; ipv6: boolean } | undefined {
  if (text === '') return undefined;
  const bracketed = /^\[([^\]]+)\](?::(\d+))?$/.exec(text);
  if (bracketed) return withPort(bracketed[1]!, bracketed[2], true);
  if ((text.match(/:/g) ?? []).length >= 2) return { host: text, port: undefined, ipv6: true };
  const withExplicitPort = /^([^:]+):(\d+)$/.exec(text);
  if (withExplicitPort) return withPort(withExplicitPort[1]!, withExplicitPort[2], false);
  if (text.includes(':')) return undefined;
  return { host: text, port: undefined, ipv6: false };
}

function withPort(host: string, port: string | undefined, ipv6: boolean) {
  if (port === undefined) return { host, port: undefined, ipv6 };
  const number = Number(port);
  if (!Number.isInteger(number) || number < 1 || number > 65_535) return undefined;
  return { host, port: number, ipv6 };
}

/** The host as the WHATWG URL parser writes it (lowercase, punycode, canonical IP literals). */
function canonicalHost(host: string, ipv6: boolean): string | undefined {
  if (!ipv6 && /[/?#@\s[\]*]/.test(host)) return undefined;
  try {
    const parsed = new URL(`http://${ipv6 ? `[${host}]` : host}/`);
    return stripTrailingDot(parsed.hostname);
  } catch {
    // Not a host name or literal: the entry is invalid.
    return undefined;
  }
}

function stripTrailingDot(host: string): string {
  return host.endsWith('.') ? host.slice(0, -1) : host;
}

function isIPv4(host: string): boolean {
  return /^\d{1,3}(\.\d{1,3}){3}$/.test(host);
}
