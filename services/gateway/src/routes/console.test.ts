import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildConsole } from '../../../../console/build.ts';
import { createTestApp, type TestApp } from '../testing/test-app.ts';

let t: TestApp;
let directory: string;
let built: string[];
beforeAll(async () => {
  // The console is built from its sources (console/dist is not committed), here into a temp dir.
  directory = mkdtempSync(join(tmpdir(), 'abide-console-'));
  built = await buildConsole(directory);
  t = createTestApp({ consoleDirectory: directory });
});
afterAll(async () => {
  await t.app.close();
  rmSync(directory, { recursive: true, force: true });
});

describe('GET /console', () => {
  it('serves index.html without caching and with a strict CSP, no inline script', async () => {
    const response = await t.app.inject('/console');
    expect(response.statusCode).toBe(200);
    expect(response.headers['content-type']).toMatch(/^text\/html/);
    expect(response.headers['cache-control']).toBe('no-cache');
    const csp = String(response.headers['content-security-policy']);
    expect(csp).toContain("default-src 'none'");
    expect(csp).toContain("script-src 'self'");
    expect(csp).not.toContain('unsafe');
    expect(response.headers['x-content-type-options']).toBe('nosniff');
    expect(response.body).not.toMatch(/<script(?![^>]*\ssrc=)[^>]*>/);
    expect(response.body).not.toMatch(/<style|style=/);
    expect(response.body).not.toMatch(/https?:\/\//);
    expect((await t.app.inject('/console/')).headers.location).toBe('/console');
  });

  it('serves the hashed assets it names for a year, and 404s anything else', async () => {
    const index = (await t.app.inject('/console')).body;
    const assets = [...index.matchAll(/\/console\/assets\/([A-Za-z0-9_.-]+)/g)].map((match) => match[1]!);
    expect(assets.some((name) => name.endsWith('.js'))).toBe(true);
    expect(assets.some((name) => name.endsWith('.css'))).toBe(true);
    for (const name of assets) {
      const response = await t.app.inject(`/console/assets/${name}`);
      expect(response.statusCode).toBe(200);
      expect(response.headers['cache-control']).toBe('public, max-age=31536000, immutable');
      expect(response.headers['content-security-policy']).toBeDefined();
    }
    expect((await t.app.inject('/console/assets/missing-AAAA.js')).statusCode).toBe(404);
    expect((await t.app.inject('/console/assets/..%2Fpackage.json')).statusCode).toBe(404);
  });

  it('serves exactly the files the build produced, and 404 when the console was never built', async () => {
    const assets = built.filter((file) => file.startsWith('assets/')).map((file) => file.slice('assets/'.length));
    expect(assets.some((name) => name.endsWith('.js')) && assets.some((name) => name.endsWith('.css'))).toBe(true);
    const index = (await t.app.inject('/console')).body;
    for (const name of assets) expect(index).toContain(`/console/assets/${name}`);
    const empty = mkdtempSync(join(tmpdir(), 'abide-console-none-'));
    const bare = createTestApp({ consoleDirectory: empty });
    try {
      expect((await bare.app.inject('/console')).statusCode).toBe(404);
    } finally {
      await bare.app.close();
      rmSync(empty, { recursive: true, force: true });
    }
  });
});
