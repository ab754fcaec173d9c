import { describe, expect, it } from 'vitest';
import { invalidEgressEntries, isEgressAllowed, parseEgressEntry } from './egress.ts';

describe('isEgressAllowed', () => {
  it('allows nothing with an empty list', () => {
    expect(isEgressAllowed('https://example.com/', [])).toBe(false);
  });

  it('allows everything with *', () => {
    expect(isEgressAllowed('https://example.com/', ['*'])).toBe(true);
    expect(isEgressAllowed('http://10.0.0.1:9999/x', ['*'])).toBe(true);
  });

  it('matches a host on any port, case-insensitively, ignoring a trailing dot', () => {
    expect(isEgressAllowed('https://API.Example.com/x', ['api.example.com'])).toBe(true);
    expect(isEgressAllowed('http://api.example.com:8080/x', ['API.EXAMPLE.COM'])).toBe(true);
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
  });

  it('compares IP literals canonically and never by wildcard', () => {
    expect(isEgressAllowed('http://127.0.0.1:3000/', ['127.0.0.1'])).toBe(true);
    expect(isEgressAllowed('http://127.1/', ['127.0.0.1'])).toBe(true);
    expect(isEgressAllowed('http://127.0.0.2/', ['127.0.0.1'])).toBe(false);
    expect(isEgressAllowed('http://1.0.0.127/', ['*.0.0.127'])).toBe(false);
  });

  it('handles IPv6 literals with and without brackets and ports', () => {
    expect(isEgressAllowed('http://[::1]:8080/', ['[::1]'])).toBe(true);
    expect(isEgressAllowed('http://[::1]:8080/', ['::1'])).toBe(true);
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
    expect(invalidEgressEntries(['example.com', 'http://x', 'a:99999', '*.', '*.[::1]', 'host:port', '256.1.1.1', '*.127.0.0.1'])).toEqual([
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
