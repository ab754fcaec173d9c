import { AbideError, ensureError, ShuttingDownError, type Logger } from '@abide/shared';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';

/** An open MCP session: the SDK client (only what the worker uses) and how to end it. */
export type McpConnection = {
  client: Pick<Client, 'callTool' | 'listTools'>;
  /** Ends the session (best effort) and closes the transport. Never rejects. */
  close(): Promise<void>;
};

export type McpConnectionPoolOptions = {
  /** Connections kept open at most (`MCP_MAX_CONNECTIONS`). */
  maxConnections: number;
  /** A connection unused this long is closed (`MCP_IDLE_TIMEOUT`). */
  idleMs: number;
  logger: Pick<Logger, 'info' | 'warn'>;
};

type Entry = {
  key: string;
  opening: Promise<McpConnection>;
  connection: McpConnection | undefined;
  users: number;
  lastUsedAt: number;
  idleTimer: NodeJS.Timeout | undefined;
};

/**
 * MCP connections pooled per key (issue 13): the key is (tenant, server url, hash of the resolved
 * credentials), so a session opened with one tenant's secrets is never used for another tenant,
 * nor for the same tenant after its secret changed. Bounded: when full, the least recently used
 * idle connection is closed; when every connection is in use, the call is retried later (a
 * retryable error). A connection is closed after `idleMs` unused, and dropped after a transport
 * failure so the next attempt opens a fresh session.
 */
export function createMcpConnectionPool(options: McpConnectionPoolOptions) {
  const entries = new Map<string, Entry>();
  let closed = false;

  function closeEntry(entry: Entry, why: string): void {
    if (entries.get(entry.key) === entry) entries.delete(entry.key);
    clearTimeout(entry.idleTimer);
    // Closing never rejects (McpConnection.close); a connection still opening is closed once open.
    void entry.opening.then(
      (connection) => {
        options.logger.info({ why }, 'MCP connection closed');
        return connection.close();
      },
      () => undefined,
    );
  }

  function makeRoom(): void {
    if (entries.size < options.maxConnections) return;
    let oldest: Entry | undefined;
    for (const entry of entries.values()) {
      if (entry.users === 0 && entry.connection && (!oldest || entry.lastUsedAt < oldest.lastUsedAt)) oldest = entry;
    }
    if (!oldest) {
      throw new AbideError('tool_error', `all ${options.maxConnections} MCP connections of this worker are in use; retrying later`, { retryable: true, retryAfterMs: 1_000 });
    }
    closeEntry(oldest, 'pool full: least recently used idle connection');
  }

  function release(entry: Entry): void {
    entry.users -= 1;
    entry.lastUsedAt = Date.now();
    if (entry.users > 0 || entries.get(entry.key) !== entry) return;
    clearTimeout(entry.idleTimer);
    entry.idleTimer = setTimeout(() => {
      if (entry.users === 0) closeEntry(entry, 'idle');
    }, options.idleMs);
    entry.idleTimer.unref();
  }

  return {
    /**
     * Runs `work` on the pooled connection for `key`, opening it with `open` when there is none.
     * An error for which `isBroken` answers true drops the connection (it is closed, the next
     * call opens a new one); the error is rethrown either way.
     */
    async use<T>(key: string, open: () => Promise<McpConnection>, work: (connection: McpConnection) => Promise<T>, isBroken: (error: unknown) => boolean): Promise<T> {
      if (closed) throw new ShuttingDownError('the MCP connection pool is closed (shutting down)');
      let entry = entries.get(key);
      if (!entry) {
        makeRoom();
        const created: Entry = { key, opening: open(), connection: undefined, users: 0, lastUsedAt: Date.now(), idleTimer: undefined };
        entry = created;
        entries.set(key, created);
        created.opening.then(
          (connection) => (created.connection = connection),
          () => {
            // The opener sees the failure through `await` below; here it only leaves the pool.
            if (entries.get(key) === created) entries.delete(key);
          },
        );
      }
      clearTimeout(entry.idleTimer);
      entry.users += 1;
      try {
        const connection = await entry.opening;
        return await work(connection);
      } catch (error) {
        if (isBroken(error) && entries.get(key) === entry) closeEntry(entry, `transport failure: ${ensureError(error).message.slice(0, 200)}`);
        throw error;
      } finally {
        release(entry);
      }
    },

    /** Connections open or opening (for tests and metrics). */
    get size(): number {
      return entries.size;
    },

    /** Closes every connection; later calls fail as retryable. */
    async close(): Promise<void> {
      closed = true;
      const all = [...entries.values()];
      entries.clear();
      await Promise.all(
        all.map(async (entry) => {
          clearTimeout(entry.idleTimer);
          const connection = await entry.opening.catch(() => undefined);
          await connection?.close();
        }),
      );
    },
  };
}
export type McpConnectionPool = ReturnType<typeof createMcpConnectionPool>;
