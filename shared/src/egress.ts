/**
 * The one egress policy of Abide (DESIGN §8, issue 8): which destinations a tenant's HTTP tools
 * (`TOOL_EGRESS_ALLOW`) and `openai-compatible` models (`LLM_EGRESS_ALLOW`) may reach.
 *
 * Rules, for an entry of an allow list:
 * - `*` allows every host on every port.
 * - `host` allows that host on the scheme's default port only (80 for `http`, 443 for `https`);
 *   `host:port` only on that port; `host:*` on any port.
 * - `*.domain` (or `*.domain:port`, `*.domain:*`) allows every subdomain of `domain`, at any
 *   depth, but not `domain` itself (list it separately); the port rules are those of `host`.
 * - IPv6 literals are written in brackets (`[::1]`, `[::1]:8080`, `[::1]:*`); a bare literal
 *   (`::1`) is accepted without a port. IP literals are compared in canonical form (`127.1` is
 *   `127.0.0.1`), never by wildcard.
 * - Hosts compare case-insensitively and without a trailing dot.
 * - Only `http` and `https` URLs are ever allowed; an empty list allows nothing.
 *
 * The name is only half of the check: the address actually connected to is checked too. A
 * connection resolves the name, drops every address in a refused range (loopback, private,
 * link-local, CGNAT, `0.0.0.0/8`, multicast, broadcast and reserved, cloud metadata, and the
 * IPv4-mapped forms of those), and connects to the first address left; none left → refused. An
 * address in a refused range is allowed only when an entry is that IP literal (with a port that
 * matches). Names are resolved once per connection, so DNS rebinding and redirects (which are
 * never followed) cannot reach what the check refused.
 */
import { lookup as dnsLookup } from 'node:dns/promises';
import { BlockList, isIP } from 'node:net';
import type { Agent, fetch as undiciFetch } from 'undici';
import { AbideError } from './errors.ts';

export type EgressPort = number | '*' | undefined;

export type EgressRule =
  | { kind: 'any' }
  | { kind: 'host'; host: string; port: EgressPort }
  | { kind: 'subdomains'; domain: string; port: EgressPort };

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

/**
 * True when `url`'s scheme, host name and port are allowed by `allowList` (the name half of the
 * policy; `createEgressPolicy` adds the address half).
 */
export function isEgressAllowed(url: string | URL, allowList: readonly string[]): boolean {
  const target = parseTarget(url);
  if (!target) return false;
  return nameAllowed(target.host, target.port, allowList.map(parseEgressEntry).filter((rule) => rule !== undefined));
}

/** A refused destination: final, with a stable code and a message naming only scheme, host and port. */
export class EgressDeniedError extends AbideError {
  override readonly name = 'EgressDeniedError';
  constructor(destination: string, variable: string) {
    super('egress_denied', `calls to ${destination} are not allowed (${variable})`, { retryable: false });
  }

  /** The `EgressDeniedError` inside `error`'s cause chain (fetch wraps connect errors), if any. */
  static find(error: unknown): EgressDeniedError | undefined {
    let current: unknown = error;
    for (let depth = 0; depth < 6 && current instanceof Error; depth += 1) {
      if (current instanceof EgressDeniedError) return current;
      current = current.cause;
    }
    return undefined;
  }
}

/** Resolves a host name to its addresses (the system resolver; tests pass a fake). */
export type Resolver = (hostname: string) => Promise<{ address: string; family: number }[]>;

export type EgressPolicyOptions = {
  /** The allow list (already split on commas). */
  allow: readonly string[];
  /** The variable it came from, named in refusals (`TOOL_EGRESS_ALLOW`, `LLM_EGRESS_ALLOW`). */
  variable: string;
  /** @default the system resolver (`dns.lookup`, all addresses) */
  resolve?: Resolver;
  /** Time to open a connection. @default 10000 */
  connectTimeoutMs?: number;
};

export type EgressPolicy = {
  /** The allow list's variable name. */
  readonly variable: string;
  /**
   * Checks what can be checked without DNS: scheme, name and port, and an IP-literal host's
   * address. Throws an `EgressDeniedError` when refused.
   */
  assertUrlAllowed(url: string | URL): void;
  /**
   * The address to connect to for `hostname:port`: resolves the name and keeps the first address
   * the policy allows. Throws an `EgressDeniedError` when none is.
   */
  resolveAddress(hostname: string, port: number, protocol: string): Promise<string>;
  /**
   * A `fetch` whose every connection goes through `resolveAddress` (undici's own fetch over an
   * `Agent` with a checking connector). Redirects are never followed: a 3xx is answered as is.
   */
  fetch: typeof globalThis.fetch;
  /** Closes the pooled connections. */
  close(): Promise<void>;
};

/** Builds the policy for one allow list (see the module comment for the rules). */
export function createEgressPolicy(options: EgressPolicyOptions): EgressPolicy {
  const rules = options.allow.map(parseEgressEntry).filter((rule) => rule !== undefined);
  const resolve = options.resolve ?? systemResolver;
  const refuse = (destination: string) => new EgressDeniedError(destination, options.variable);

  function addressAllowed(address: string, port: number): boolean {
    if (!isRefusedAddress(address)) return true;
    const literal = canonicalAddressHost(address);
    return rules.some((rule) => rule.kind === 'host' && rule.host === literal && portMatches(rule.port, port));
  }

  function assertUrlAllowed(url: string | URL): void {
    const target = parseTarget(url);
    if (!target) throw refuse(originOf(url));
    const destination = `${target.protocol}//${target.displayHost}:${target.port}`;
    if (!nameAllowed(target.host, target.port, rules)) throw refuse(destination);
    const literal = literalAddress(target.host);
    if (literal !== undefined && !addressAllowed(literal, target.port)) throw refuse(destination);
  }

  async function resolveAddress(hostname: string, port: number, protocol: string): Promise<string> {
    const host = stripTrailingDot(hostname.toLowerCase().replace(/^\[(.*)\]$/, '$1'));
    const displayHost = isIP(host) === 6 ? `[${host}]` : host;
    const destination = `${protocol}//${displayHost}:${port}`;
    const nameForRules = isIP(host) ? canonicalAddressHost(host) : host;
    if (!nameAllowed(nameForRules, port, rules)) throw refuse(destination);
    const addresses = isIP(host) ? [host] : (await resolve(host)).map((entry) => entry.address);
    const chosen = addresses.find((address) => addressAllowed(address, port));
    if (chosen === undefined) throw refuse(destination);
    return chosen;
  }

  /**
   * undici (its `Agent` with a checking connector, and its `fetch`) is loaded at the first call:
   * a process that builds a policy it never uses (or none: the gateway and the orchestrator
   * load this module for its rules) does not pay the ~10 MB the library costs (issue 9).
   */
  let client: Promise<{ dispatcher: Agent; fetch: typeof undiciFetch }> | undefined;
  let closed = false;
  const loadClient = () =>
    (client ??= import('undici').then(({ Agent, buildConnector, fetch }) => {
      const connector = buildConnector({ timeout: options.connectTimeoutMs ?? 10_000 });
      const dispatcher = new Agent({
        connect(connectOptions, callback) {
          const protocol = connectOptions.protocol;
          const port = Number(connectOptions.port) || (protocol === 'https:' ? 443 : 80);
          resolveAddress(connectOptions.hostname, port, protocol).then(
            // `host` keeps the name: TLS sends it as SNI and checks the certificate against it.
            (address) => connector({ ...connectOptions, hostname: address }, callback),
            (error: unknown) => callback(error as Error, null),
          );
        },
      });
      return { dispatcher, fetch };
    }));

  const checkedFetch = (async (input: string | URL | Request, init?: RequestInit) => {
    const url = typeof input === 'string' || input instanceof URL ? input : input.url;
    assertUrlAllowed(url);
    if (closed) throw new Error(`the ${options.variable} egress policy is closed`);
    const { dispatcher, fetch } = await loadClient();
    const request = { ...(init ?? {}), redirect: 'manual', dispatcher } as Parameters<typeof undiciFetch>[1];
    return fetch(url, request);
  }) as unknown as typeof globalThis.fetch;

  return {
    variable: options.variable,
    assertUrlAllowed,
    resolveAddress,
    fetch: checkedFetch,
    async close() {
      closed = true;
      if (client) await (await client).dispatcher.close();
    },
  };
}

/**
 * Ranges a tenant's call may not reach unless an entry names the address: the host itself, the
 * networks behind it and the cloud's metadata service.
 */
const refusedRanges = (() => {
  const list = new BlockList();
  for (const [network, prefix] of [
    ['0.0.0.0', 8], // "this network"
    ['10.0.0.0', 8], // RFC 1918
    ['100.64.0.0', 10], // CGNAT
    ['127.0.0.0', 8], // loopback
    ['169.254.0.0', 16], // link-local, cloud metadata (169.254.169.254)
    ['172.16.0.0', 12], // RFC 1918
    ['192.0.0.0', 24], // IETF protocol assignments
    ['192.168.0.0', 16], // RFC 1918
    ['198.18.0.0', 15], // benchmarking
    ['224.0.0.0', 4], // multicast
    ['240.0.0.0', 4], // reserved and broadcast
  ] as const) {
    list.addSubnet(network, prefix, 'ipv4');
  }
  for (const [network, prefix] of [
    ['::', 128], // unspecified
    ['::1', 128], // loopback
    ['fc00::', 7], // unique local (fd00:ec2::254, the EC2 metadata service, included)
    ['fe80::', 10], // link-local
    ['ff00::', 8], // multicast
  ] as const) {
    list.addSubnet(network, prefix, 'ipv6');
  }
  return list;
})();

/** True for an address in a refused range; IPv4-mapped, -compatible and NAT64 forms are checked as the IPv4 address they carry. */
export function isRefusedAddress(address: string): boolean {
  // A zone (`fe80::1%eth0`) names an interface, not another address.
  const bare = address.replace(/%.*$/, '');
  const family = isIP(bare);
  if (family === 4) return refusedRanges.check(bare, 'ipv4');
  if (family !== 6) return true;
  const embedded = embeddedIPv4(bare);
  if (embedded !== undefined) return refusedRanges.check(embedded, 'ipv4');
  return refusedRanges.check(bare, 'ipv6');
}

/** The IPv4 address inside `::ffff:a.b.c.d`, `::a.b.c.d` or `64:ff9b::a.b.c.d` (any spelling). */
function embeddedIPv4(address: string): string | undefined {
  const words = expandIPv6(address);
  if (!words) return undefined;
  const mapped = words.slice(0, 5).every((word) => word === 0) && (words[5] === 0xffff || words[5] === 0);
  const nat64 = words[0] === 0x64 && words[1] === 0xff9b && words.slice(2, 6).every((word) => word === 0);
  if (!mapped && !nat64) return undefined;
  return [words[6]! >> 8, words[6]! & 0xff, words[7]! >> 8, words[7]! & 0xff].join('.');
}

/** The eight 16-bit words of an IPv6 address, or undefined when it is not one. */
function expandIPv6(address: string): number[] | undefined {
  let text = address.toLowerCase().replace(/%.*$/, '');
  const dotted = /(\d+\.\d+\.\d+\.\d+)$/.exec(text);
  if (dotted) {
    const parts = dotted[1]!.split('.').map(Number);
    text = `${text.slice(0, -dotted[1]!.length)}${((parts[0]! << 8) | parts[1]!).toString(16)}:${((parts[2]! << 8) | parts[3]!).toString(16)}`;
  }
  const [head, tail] = text.split('::') as [string, string | undefined];
  const headWords = head ? head.split(':') : [];
  const tailWords = tail ? tail.split(':') : [];
  const missing = 8 - headWords.length - tailWords.length;
  if (tail === undefined ? missing !== 0 : missing < 0) return undefined;
  const words = [...headWords, ...Array<string>(tail === undefined ? 0 : missing).fill('0'), ...tailWords].map((word) => Number.parseInt(word, 16));
  return words.length === 8 && words.every((word) => Number.isInteger(word) && word >= 0 && word <= 0xffff) ? words : undefined;
}

const systemResolver: Resolver = (hostname) => dnsLookup(hostname, { all: true, order: 'verbatim' });

type Target = { protocol: 'http:' | 'https:'; host: string; displayHost: string; port: number };

function parseTarget(url: string | URL): Target | undefined {
  let target: URL;
  try {
    target = typeof url === 'string' ? new URL(url) : url;
  } catch {
    // Not a URL at all: nothing to allow.
    return undefined;
  }
  if (target.protocol !== 'http:' && target.protocol !== 'https:') return undefined;
  const host = stripTrailingDot(target.hostname.toLowerCase());
  const port = target.port ? Number(target.port) : target.protocol === 'https:' ? 443 : 80;
  return { protocol: target.protocol, host, displayHost: host, port };
}

function nameAllowed(host: string, port: number, rules: readonly EgressRule[]): boolean {
  const isLiteral = host.startsWith('[') || isIPv4(host);
  return rules.some((rule) => {
    if (rule.kind === 'any') return true;
    if (rule.kind === 'host') return rule.host === host && portMatches(rule.port, port);
    return !isLiteral && host.endsWith(`.${rule.domain}`) && portMatches(rule.port, port);
  });
}

/** A plain entry (no port) means the scheme's default port: 80 or 443. */
function portMatches(rulePort: EgressPort, port: number): boolean {
  if (rulePort === '*') return true;
  if (rulePort === undefined) return port === 80 || port === 443;
  return rulePort === port;
}

/** The address a URL host names, when it is an IP literal (`[::1]` → `::1`). */
function literalAddress(host: string): string | undefined {
  if (isIPv4(host)) return host;
  if (host.startsWith('[') && host.endsWith(']')) return host.slice(1, -1);
  return undefined;
}

/** An address written as the URL parser writes a host (`::1` → `[::1]`), to compare with entries. */
function canonicalAddressHost(address: string): string {
  return isIP(address) === 6 ? new URL(`http://[${address.replace(/%.*$/, '')}]/`).hostname : new URL(`http://${address}/`).hostname;
}

/** Scheme, host and port, the default port written out (`http://api.example.com:80`): all a tenant is told of a destination. */
export function originOf(url: string | URL): string {
  try {
    const parsed = typeof url === 'string' ? new URL(url) : url;
    const port = parsed.port || (parsed.protocol === 'https:' ? '443' : '80');
    return `${parsed.protocol}//${parsed.hostname}:${port}`;
  } catch {
    // Not a URL: the message names nothing more.
    return 'that url';
  }
}

function splitHostAndPort(text: string): { host: string; port: EgressPort; ipv6: boolean } | undefined {
  if (text === '') return undefined;
  const bracketed = /^\[([^\]]+)\](?::(\d+|\*))?$/.exec(text);
  if (bracketed) return withPort(bracketed[1]!, bracketed[2], true);
  if ((text.match(/:/g) ?? []).length >= 2) return { host: text, port: undefined, ipv6: true };
  const withExplicitPort = /^([^:]+):(\d+|\*)$/.exec(text);
  if (withExplicitPort) return withPort(withExplicitPort[1]!, withExplicitPort[2], false);
  if (text.includes(':')) return undefined;
  return { host: text, port: undefined, ipv6: false };
}

function withPort(host: string, port: string | undefined, ipv6: boolean): { host: string; port: EgressPort; ipv6: boolean } | undefined {
  if (port === undefined) return { host, port: undefined, ipv6 };
  if (port === '*') return { host, port: '*', ipv6 };
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
