import { describe, expect, it } from 'vitest';
import { createEgressPolicy, EgressDeniedError, invalidEgressEntries, isEgressAllowed, isRefusedAddress, parseEgressEntry, type Resolver } from './egress.ts';

describe('isEgressAllowed', () => {
  it('allows nothing with an empty list', () => {
    expect(isEgressAllowed('https://example.com/', [])).toBe(false);
  });

  it('allows everything with *', () => {
    expect(isEgressAllowed('https://example.com/', ['*'])).toBe(true);
    expect(isEgressAllowed('http://10.0.0.1:9999/x', ['*'])).toBe(true);
  });

  it('matches a host on its default port only, case-insensitively, ignoring a trailing dot', () => {
    expect(isEgressAllowed('https://API.Example.com/x', ['api.example.com'])).toBe(true);
    expect(isEgressAllowed('http://api.example.com/x', ['API.EXAMPLE.COM'])).toBe(true);
    expect(isEgressAllowed('http://api.example.com:8080/x', ['API.EXAMPLE.COM'])).toBe(false);
    expect(isEgressAllowed('http://api.example.com:8080/x', ['API.EXAMPLE.COM:*'])).toBe(true);
    expect(isEgressAllowed('http://api.example.com./x', ['api.example.com'])).toBe(true);
    expect(isEgressAllowed('http://api.example.com/x', ['api.example.com.'])).toBe(true);
    expect(isEgressAllowed('http://other.example.com/x', ['api.example.com'])).toBe(false);
    expect(isEgressAllowed('http://api.example.com.evil.net/x', ['api.example.com'])).toBe(false);
  });

  it('matches host:port against the explicit or default port', () => {
    expect(isEgressAllowed('http://localhost:8080/', ['localhost:8080'])).toBe(true);
    expect(isEgressAllowed('http://localhost:8081/', ['localhost:8080'])).toBe(false);
    expect(isEgressAllowed('https://example.com/', ['example.com:443'])).toBe(true);
    expect(isEgressAllowed('http://example.com/', ['example.com:443'])).toBe(false);
    expect(isEgressAllowed('http://example.com/', ['example.com:80'])).toBe(true);
  });

  it('matches *.domain against subdomains only', () => {
    expect(isEgressAllowed('https://a.example.com/', ['*.example.com'])).toBe(true);
    expect(isEgressAllowed('https://a.b.example.com/', ['*.example.com'])).toBe(true);
    expect(isEgressAllowed('https://example.com/', ['*.example.com'])).toBe(false);
    expect(isEgressAllowed('https://badexample.com/', ['*.example.com'])).toBe(false);
    expect(isEgressAllowed('https://a.example.com:8443/', ['*.example.com:8443'])).toBe(true);
    expect(isEgressAllowed('https://a.example.com/', ['*.example.com:8443'])).toBe(false);
    expect(isEgressAllowed('https://a.example.com:8443/', ['*.example.com'])).toBe(false);
    expect(isEgressAllowed('https://a.example.com:8443/', ['*.example.com:*'])).toBe(true);
  });

  it('compares IP literals canonically and never by wildcard', () => {
    expect(isEgressAllowed('http://127.0.0.1:3000/', ['127.0.0.1:*'])).toBe(true);
    expect(isEgressAllowed('http://127.0.0.1:3000/', ['127.0.0.1'])).toBe(false);
    expect(isEgressAllowed('http://127.1/', ['127.0.0.1'])).toBe(true);
    expect(isEgressAllowed('http://127.0.0.2/', ['127.0.0.1'])).toBe(false);
    expect(isEgressAllowed('http://1.0.0.127/', ['*.0.0.127'])).toBe(false);
  });

  it('handles IPv6 literals with and without brackets and ports', () => {
    expect(isEgressAllowed('http://[::1]:8080/', ['[::1]:*'])).toBe(true);
    expect(isEgressAllowed('http://[::1]:8080/', ['[::1]'])).toBe(false);
    expect(isEgressAllowed('http://[::1]/', ['::1'])).toBe(true);
    expect(isEgressAllowed('http://[::1]:8080/', ['[::1]:8080'])).toBe(true);
    expect(isEgressAllowed('http://[::1]:8081/', ['[::1]:8080'])).toBe(false);
    expect(isEgressAllowed('http://[0:0:0:0:0:0:0:1]/', ['[::1]'])).toBe(true);
    expect(isEgressAllowed('http://[::2]/', ['[::1]'])).toBe(false);
    expect(isEgressAllowed('http://127.0.0.1/', ['[::1]'])).toBe(false);
  });

  it('refuses other schemes and non-URLs', () => {
    expect(isEgressAllowed('ftp://example.com/', ['*'])).toBe(false);
    expect(isEgressAllowed('file:///etc/passwd', ['*'])).toBe(false);
    expect(isEgressAllowed('not a url', ['*'])).toBe(false);
  });

  it('ignores invalid entries and reports them', () => {
    expect(isEgressAllowed('http://example.com/', ['http://example.com', 'example.com/path'])).toBe(false);
    expect(invalidEgressEntries(['example.com', 'a:*', '*.b:*', '[::1]:*', 'http://x', 'a:99999', '*.', '*.[::1]', 'host:port', '256.1.1.1', '*.127.0.0.1'])).toEqual([
      'http://x',
      'a:99999',
      '*.',
      '*.[::1]',
      'host:port',
      '256.1.1.1',
      '*.127.0.0.1',
    ]);
    expect(parseEgressEntry(' Example.COM:8080 ')).toEqual({ kind: 'host', host: 'example.com', port: 8080 });
  });
});

/** A resolver answering from a table, as an attacker's DNS would. */
function fakeResolver(table: Record<string, string[]>): Resolver {
  return async (hostname) => {
    const addresses = table[hostname];
    if (!addresses) throw Object.assign(new Error(`getaddrinfo ENOTFOUND ${hostname}`), { code: 'ENOTFOUND' });
    return addresses.map((address) => ({ address, family: address.includes(':') ? 6 : 4 }));
  };
}

describe('the address policy', () => {
  const resolve = fakeResolver({
    'ten.evil.example': ['10.0.0.7'],
    'loop.evil.example': ['127.0.0.1'],
    'metadata.evil.example': ['169.254.169.254'],
    'mapped.evil.example': ['::ffff:127.0.0.1'],
    'mapped-hex.evil.example': ['::ffff:a9fe:a9fe'],
    'v6-metadata.evil.example': ['fd00:ec2::254'],
    'cgnat.evil.example': ['100.64.1.1'],
    'mixed.evil.example': ['127.0.0.1', '93.184.215.14'],
    'public.example': ['93.184.215.14'],
    'app.internal.example': ['10.1.2.3'],
  });

  it('refuses a name allowed by *.domain that resolves to a private, loopback, metadata or mapped address', async () => {
    const policy = createEgressPolicy({ allow: ['*.evil.example:*'], variable: 'TOOL_EGRESS_ALLOW', resolve });
    for (const name of ['ten', 'loop', 'metadata', 'mapped', 'mapped-hex', 'v6-metadata', 'cgnat']) {
      const refused = await policy.resolveAddress(`${name}.evil.example`, 443, 'https:').catch((error: unknown) => error);
      expect(refused, name).toBeInstanceOf(EgressDeniedError);
      expect(refused).toMatchObject({ code: 'egress_denied', retryable: false, message: `calls to https://${name}.evil.example:443 are not allowed (TOOL_EGRESS_ALLOW)` });
    }
    await policy.close();
  });

  it('connects to an allowed address among refused ones', async () => {
    const policy = createEgressPolicy({ allow: ['*.evil.example'], variable: 'TOOL_EGRESS_ALLOW', resolve });
    expect(await policy.resolveAddress('mixed.evil.example', 443, 'https:')).toBe('93.184.215.14');
    await policy.close();
  });

  it('lets an IP-literal entry allow exactly that address (and its port)', async () => {
    const policy = createEgressPolicy({ allow: ['app.internal.example', '10.1.2.3', '127.0.0.1:8080', '[::1]:*'], variable: 'LLM_EGRESS_ALLOW', resolve });
    expect(await policy.resolveAddress('app.internal.example', 443, 'https:')).toBe('10.1.2.3');
    await expect(policy.resolveAddress('app.internal.example', 8443, 'https:')).rejects.toBeInstanceOf(EgressDeniedError);
    expect(await policy.resolveAddress('127.0.0.1', 8080, 'http:')).toBe('127.0.0.1');
    await expect(policy.resolveAddress('127.0.0.1', 8081, 'http:')).rejects.toBeInstanceOf(EgressDeniedError);
    await expect(policy.resolveAddress('127.0.0.2', 8080, 'http:')).rejects.toBeInstanceOf(EgressDeniedError);
    expect(await policy.resolveAddress('[::1]', 9, 'http:')).toBe('::1');
    expect(() => policy.assertUrlAllowed('http://127.0.0.1:8080/v1')).not.toThrow();
    expect(() => policy.assertUrlAllowed('http://127.0.0.1:8081/v1')).toThrow(EgressDeniedError);
    await policy.close();
  });

  it('refuses a loopback literal under * and a non-default port under a plain host entry', async () => {
    const any = createEgressPolicy({ allow: ['*'], variable: 'TOOL_EGRESS_ALLOW', resolve });
    expect(() => any.assertUrlAllowed('http://127.0.0.1:4222/')).toThrow(EgressDeniedError);
    expect(() => any.assertUrlAllowed('http://[::ffff:169.254.169.254]/latest/meta-data')).toThrow(EgressDeniedError);
    expect(await any.resolveAddress('public.example', 8443, 'https:')).toBe('93.184.215.14');
    await any.close();
    const plain = createEgressPolicy({ allow: ['public.example'], variable: 'TOOL_EGRESS_ALLOW', resolve });
    expect(await plain.resolveAddress('public.example', 443, 'https:')).toBe('93.184.215.14');
    await expect(plain.resolveAddress('public.example', 8443, 'https:')).rejects.toBeInstanceOf(EgressDeniedError);
    await plain.close();
    const anyPort = createEgressPolicy({ allow: ['public.example:*'], variable: 'TOOL_EGRESS_ALLOW', resolve });
    expect(await anyPort.resolveAddress('public.example', 8443, 'https:')).toBe('93.184.215.14');
    await anyPort.close();
  });

  it('classifies addresses', () => {
    for (const address of ['127.0.0.1', '10.2.3.4', '172.16.0.1', '192.168.1.1', '169.254.169.254', '100.64.0.1', '0.0.0.0', '224.0.0.1', '255.255.255.255', '::1', '::', 'fe80::1', 'fc00::1', 'fd00:ec2::254', 'ff02::1', '::ffff:10.0.0.1', '::ffff:7f00:1', '64:ff9b::7f00:1', 'fe80::1%eth0', 'not-an-address']) {
      expect(isRefusedAddress(address), address).toBe(true);
    }
    for (const address of ['93.184.215.14', '8.8.8.8', '2606:4700::1111', '::ffff:8.8.8.8']) {
      expect(isRefusedAddress(address), address).toBe(false);
    }
  });

  it('checks the address its fetch connects to, so a name resolving to loopback is never reached', async () => {
    const { createServer } = await import('node:http');
    let requests = 0;
    const server = createServer((_request, response) => {
      requests += 1;
      response.end('{}');
    });
    await new Promise<void>((done) => server.listen(0, '127.0.0.1', done));
    const port = (server.address() as import('node:net').AddressInfo).port;
    const rebinding = createEgressPolicy({ allow: ['*.evil.example:*'], variable: 'TOOL_EGRESS_ALLOW', resolve });
    const error = await rebinding.fetch(`http://loop.evil.example:${port}/`).catch((caught: unknown) => caught);
    expect(EgressDeniedError.find(error)).toBeInstanceOf(EgressDeniedError);
    expect(requests).toBe(0);
    const allowed = createEgressPolicy({ allow: [`127.0.0.1:${port}`], variable: 'TOOL_EGRESS_ALLOW', resolve });
    const response = await allowed.fetch(`http://127.0.0.1:${port}/`);
    expect(response.status).toBe(200);
    expect(requests).toBe(1);
    await Promise.all([rebinding.close(), allowed.close()]);
    server.closeAllConnections();
    await new Promise((done) => server.close(done));
  });
});
