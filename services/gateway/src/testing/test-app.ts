import { createLogger, createMetrics, type AgentDefinitionInput } from '@abide/shared';
import { createApp, type AppDeps } from '../app.ts';
import type { Backend } from '../ports.ts';
import { createFakeBus, createMemoryEventSource, createMemoryStore } from './fakes.ts';

export const keys = { t1: 'key-tenant-one-0123456789', t2: 'key-tenant-two-0123456789' } as const;
export const auth = (tenant: keyof typeof keys = 't1') => ({ authorization: `Bearer ${keys[tenant]}` });

export const scriptedAgent: AgentDefinitionInput = {
  system: 'You are a test.',
  model: { provider: 'scripted', steps: [{ text: 'hello' }] },
  tools: [
    {
      name: 'echo',
      kind: 'builtin',
      description: 'echoes',
      inputSchema: { type: 'object', properties: { text: { type: 'string' } }, required: ['text'], additionalProperties: false },
      needsApproval: true,
    },
  ],
};

/** The configuration of the test app (override it whole with `config`). */
export const testConfig: AppDeps['config'] = {
  apiKeys: new Map([
    [keys.t1, 't1'],
    [keys.t2, 't2'],
  ]),
  MAX_BODY_BYTES: 64 * 1024,
  WS_MAX_FRAME_BYTES: 16 * 1024,
  WS_ALLOWED_ORIGINS: ['https://app.example'],
  EVENTS_MAX_AGE: 7 * 86_400_000,
  REQUEST_TIMEOUT: 30_000,
  HEADERS_TIMEOUT: 10_000,
  CONNECTION_TIMEOUT: 120_000,
  KEEP_ALIVE_TIMEOUT: 72_000,
  WS_TICKET_TTL: 30_000,
};

/** The app over in-memory fakes, with short heartbeats. */
export function createTestApp(overrides: Partial<AppDeps> = {}) {
  const memory = createMemoryStore();
  const bus = createFakeBus();
  const events = createMemoryEventSource();
  const backend: Backend = { store: memory.store, bus: bus.bus, events: events.source };
  let draining = false;
  const { app, live } = createApp({
    config: testConfig,
    logger: createLogger('gateway-test', 'silent'),
    metrics: createMetrics(),
    backend: () => backend,
    readiness: async () => ({ ready: !draining, checks: { nats: true, jetstream: true, mongodb: true }, draining }),
    isDraining: () => draining,
    streaming: { heartbeatMs: 60_000 },
    ...overrides,
  });
  return {
    app,
    live,
    memory,
    bus,
    events,
    setDraining(value: boolean) {
      draining = value;
    },
  };
}
export type TestApp = ReturnType<typeof createTestApp>;
