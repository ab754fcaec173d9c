import { describe, expect, it } from 'vitest';
import { jetStreamCheck } from './health.ts';

const manager = (info: () => Promise<{ cluster?: { name?: string; leader?: string } }>) => ({ streams: { info } });

describe('jetStreamCheck', () => {
  it('is ready when the stream answers with a leader (or on a standalone server)', async () => {
    expect(await jetStreamCheck(() => manager(async () => ({ cluster: { name: 'abide', leader: 'n2' } })), 'RUN_INBOX').check()).toBe(true);
    expect(await jetStreamCheck(() => manager(async () => ({ cluster: { leader: 'standalone' } })), 'RUN_INBOX').check()).toBe(true);
    expect(await jetStreamCheck(() => manager(async () => ({})), 'RUN_INBOX').check()).toBe(true);
  });

  it('is not ready before connecting, when a cluster stream has no leader (quorum lost) or does not answer in 2 s; a failed request rejects (probes count it as not ready)', async () => {
    expect(await jetStreamCheck(() => undefined, 'RUN_INBOX').check()).toBe(false);
    expect(await jetStreamCheck(() => manager(async () => ({ cluster: { name: 'abide' } })), 'RUN_INBOX').check()).toBe(false);
    expect(await jetStreamCheck(() => manager(() => new Promise(() => {})), 'RUN_INBOX').check()).toBe(false);
    await expect(jetStreamCheck(() => manager(() => Promise.reject(new Error('timeout'))), 'RUN_INBOX').check()).rejects.toThrow('timeout');
  });
});
