import { readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { runErrorCodes } from './errors.ts';

describe('run error codes', () => {
  it('documents every code a run can fail with in docs/api.md', () => {
    const docs = readFileSync(new URL('../../docs/api.md', import.meta.url), 'utf8');
    const section = docs.slice(docs.indexOf('### Run error codes'));
    expect(section.length).toBeLessThan(docs.length);
    for (const code of runErrorCodes) expect(section, `docs/api.md lacks run error ${code}`).toMatch(new RegExp(`^\\|\\s*\`${code}\`\\s*\\|`, 'm'));
  });
});
