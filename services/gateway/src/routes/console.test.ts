import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildConsole } from '../../../../console/build.ts';
import { createTestApp, type TestApp } from '../testing/test-app.ts';
import { defaultConsoleDirectory } from './console.ts';

let t: TestApp;
beforeAll(() => {
  t = createTestApp();
});
afterAll(async () => {
  await t.app.close();
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

  it('committed console/dist is what the sources build to (rebuild with npm run build -w console)', async () => {
    const directory = mkdtempSync(join(tmpdir(), 'abide-console-'));
    try {
      const files = await buildConsole(directory);
      const committed = ['index.html', ...readdirSync(join(defaultConsoleDirectory, 'assets')).map((name) => `assets/${name}`)].sort();
      expect(committed).toEqual(files);
      for (const file of files) expect(readFileSync(join(defaultConsoleDirectory, file), 'utf8'), file).toBe(readFileSync(join(directory, file), 'utf8'));
    } finally {
      rmSync(directory, { recursive: true, force: true });
    }
  });
});
