import { describe, expect, it } from 'vitest';
import { createReadiness, jetStreamCheck, mongoCheck, natsCheck } from './health.ts';
import { createLogger } from './logger.ts';

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

describe('createReadiness (the one rule of every service)', () => {
  const logger = createLogger('health-test', 'silent');
  const up = (name: string) => ({ name, check: async () => true });

  it('is ready only when every check passes and the process is not draining; a check that throws counts as not ready', async () => {
    let draining = false;
    let consumers = true;
    const readiness = createReadiness({
      logger,
      isDraining: () => draining,
      nats: up('nats'),
      jetstream: up('jetstream'),
      mongodb: { name: 'mongodb', check: () => Promise.reject(new Error('connection refused')) },
      consumers: { name: 'consumers', check: async () => consumers },
    });
    expect(await readiness()).toEqual({ ready: false, checks: { nats: true, jetstream: true, mongodb: false, consumers: true }, draining: false });
    const withoutMongo = createReadiness({ logger, isDraining: () => draining, nats: up('nats'), jetstream: up('jetstream'), consumers: { name: 'consumers', check: async () => consumers } });
    expect(await withoutMongo()).toEqual({ ready: true, checks: { nats: true, jetstream: true, consumers: true }, draining: false });
    consumers = false;
    expect((await withoutMongo()).ready).toBe(false);
    consumers = true;
    draining = true;
    expect(await withoutMongo()).toMatchObject({ ready: false, draining: true });
  });

  it('nats: open, not draining and answering a round trip; mongodb: ping answers ok 1', async () => {
    const connection = (fields: { closed?: boolean; draining?: boolean; rtt?: () => Promise<number> }) => ({
      isClosed: () => fields.closed ?? false,
      isDraining: () => fields.draining ?? false,
      rtt: fields.rtt ?? (async () => 1),
    });
    expect(await natsCheck(() => connection({})).check()).toBe(true);
    expect(await natsCheck(() => undefined).check()).toBe(false);
    expect(await natsCheck(() => connection({ closed: true })).check()).toBe(false);
    expect(await natsCheck(() => connection({ draining: true })).check()).toBe(false);
    expect(await natsCheck(() => connection({ rtt: () => new Promise(() => {}) })).check()).toBe(false);
    expect(await mongoCheck(() => ({ command: async () => ({ ok: 1 }) })).check()).toBe(true);
    expect(await mongoCheck(() => ({ command: async () => ({}) })).check()).toBe(false);
    expect(await mongoCheck(() => undefined).check()).toBe(false);
  });
});
