import { afterEach, describe, expect, it, vi } from 'vitest';
import { AbideError, createLogger } from '@abide/shared';
import { createMcpConnectionPool, type McpConnection } from './mcp-connection-pool.ts';

/** A fake connection that records whether it was closed (the pool is what is under test). */
function fakeConnection(label: string, closed: string[]): McpConnection {
  return {
    client: { callTool: vi.fn(), listTools: vi.fn() } as unknown as McpConnection['client'],
    async close() {
      closed.push(label);
    },
  };
}

const logger = createLogger('pool-test', 'silent');
const never = () => false;

describe('MCP connection pool', () => {
  afterEach(() => vi.useRealTimers());

  it('reuses one connection per key and opens separate ones for other keys (tenant, url, credentials)', async () => {
    const closed: string[] = [];
    const pool = createMcpConnectionPool({ maxConnections: 10, idleMs: 60_000, logger });
    const open = vi.fn(async () => fakeConnection(`c${open.mock.calls.length}`, closed));
    const seen: McpConnection[] = [];
    await pool.use('tenant-a\nurl\nhash1', open, async (connection) => seen.push(connection), never);
    await pool.use('tenant-a\nurl\nhash1', open, async (connection) => seen.push(connection), never);
    await pool.use('tenant-b\nurl\nhash1', open, async (connection) => seen.push(connection), never);
    await pool.use('tenant-a\nurl\nhash2', open, async (connection) => seen.push(connection), never);
    expect(open).toHaveBeenCalledTimes(3);
    expect(seen[0]).toBe(seen[1]);
    expect(new Set(seen).size).toBe(3);
    expect(pool.size).toBe(3);
    await pool.close();
    expect(closed.sort()).toEqual(['c1', 'c2', 'c3']);
  });

  it('shares one opening between concurrent first uses of a key', async () => {
    const pool = createMcpConnectionPool({ maxConnections: 10, idleMs: 60_000, logger });
    let release!: () => void;
    const open = vi.fn(() => new Promise<McpConnection>((resolve) => (release = () => resolve(fakeConnection('c', [])))));
    const first = pool.use('k', open, async (connection) => connection, never);
    const second = pool.use('k', open, async (connection) => connection, never);
    release();
    expect(await first).toBe(await second);
    expect(open).toHaveBeenCalledTimes(1);
  });

  it('closes a connection left idle for idleMs, and not one in use', async () => {
    vi.useFakeTimers();
    const closed: string[] = [];
    const pool = createMcpConnectionPool({ maxConnections: 10, idleMs: 1_000, logger });
    await pool.use('idle', async () => fakeConnection('idle', closed), async () => undefined, never);
    let finishBusy!: () => void;
    const busy = pool.use('busy', async () => fakeConnection('busy', closed), () => new Promise<void>((resolve) => (finishBusy = resolve)), never);
    await vi.advanceTimersByTimeAsync(1_500);
    expect(closed).toEqual(['idle']);
    expect(pool.size).toBe(1);
    finishBusy();
    await busy;
    await vi.advanceTimersByTimeAsync(999);
    expect(closed).toEqual(['idle']);
    await vi.advanceTimersByTimeAsync(2);
    expect(closed).toEqual(['idle', 'busy']);
    expect(pool.size).toBe(0);
  });

  it('is bounded: a full pool closes its least recently used idle connection, and refuses (retryable) when all are busy', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    const closed: string[] = [];
    const pool = createMcpConnectionPool({ maxConnections: 2, idleMs: 60_000, logger });
    await pool.use('a', async () => fakeConnection('a', closed), async () => undefined, never);
    vi.setSystemTime(Date.now() + 1_000);
    await pool.use('b', async () => fakeConnection('b', closed), async () => undefined, never);
    await pool.use('c', async () => fakeConnection('c', closed), async () => undefined, never);
    await vi.waitFor(() => expect(closed).toEqual(['a']));
    expect(pool.size).toBe(2);

    const holds: (() => void)[] = [];
    const hold = () => new Promise<void>((resolve) => holds.push(resolve));
    const inUse = [pool.use('b', async () => fakeConnection('b2', closed), hold, never), pool.use('c', async () => fakeConnection('c2', closed), hold, never)];
    await vi.waitFor(() => expect(holds).toHaveLength(2));
    const refused = await pool.use('d', async () => fakeConnection('d', closed), async () => undefined, never).catch((error: unknown) => error);
    expect(AbideError.isInstance(refused)).toBe(true);
    expect(refused).toMatchObject({ code: 'tool_error', retryable: true });
    for (const finish of holds) finish();
    await Promise.all(inUse);
  });

  it('drops a connection after a transport failure, so the next call opens a new session', async () => {
    const closed: string[] = [];
    const pool = createMcpConnectionPool({ maxConnections: 10, idleMs: 60_000, logger });
    const open = vi.fn(async () => fakeConnection(`c${open.mock.calls.length}`, closed));
    const broken = new Error('socket hang up');
    await expect(pool.use('k', open, async () => Promise.reject(broken), (error) => error === broken)).rejects.toBe(broken);
    await vi.waitFor(() => expect(closed).toEqual(['c1']));
    // An error that is not a transport failure (a tool error) keeps the connection.
    const toolError = new Error('tool said no');
    await expect(pool.use('k', open, async () => Promise.reject(toolError), (error) => error === broken)).rejects.toBe(toolError);
    await pool.use('k', open, async () => undefined, never);
    expect(open).toHaveBeenCalledTimes(2);
    expect(closed).toEqual(['c1']);
  });

  it('a failed opening leaves nothing behind, and a closed pool refuses new calls as retryable', async () => {
    const pool = createMcpConnectionPool({ maxConnections: 10, idleMs: 60_000, logger });
    await expect(pool.use('k', async () => Promise.reject(new Error('refused')), async () => undefined, never)).rejects.toThrow('refused');
    expect(pool.size).toBe(0);
    await pool.close();
    await expect(pool.use('k', async () => fakeConnection('c', []), async () => undefined, never)).rejects.toMatchObject({ retryable: true });
  });
});
