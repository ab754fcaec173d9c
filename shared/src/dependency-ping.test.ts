import { describe, expect, it } from 'vitest';
import { pingDependency } from './dependency-ping.ts';
import type { Logger } from './logger.ts';

function recordingLogger() {
  const warnings: { fields: Record<string, unknown>; message: string }[] = [];
  const logger = { warn: (fields: Record<string, unknown>, message: string) => warnings.push({ fields, message }) } as unknown as Logger;
  return { logger, warnings };
}

describe('pingDependency', () => {
  it('answers the ping and logs nothing when the dependency answers', async () => {
    const { logger, warnings } = recordingLogger();
    expect(await pingDependency('nats', async () => true, logger)).toBe(true);
    expect(warnings).toEqual([]);
  });

  it('answers not-ready and logs the cause when the ping throws', async () => {
    const { logger, warnings } = recordingLogger();
    expect(await pingDependency('mongo', () => Promise.reject(new Error('connection refused')), logger)).toBe(false);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]!.fields).toMatchObject({ dependency: 'mongo', err: expect.objectContaining({ message: 'connection refused' }) });
  });
});
