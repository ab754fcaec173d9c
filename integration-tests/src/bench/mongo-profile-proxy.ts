import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { performance } from 'node:perf_hooks';

/**
 * A TCP proxy in front of the MongoDB(-compatible) server that times every command (OP_MSG
 * request → the reply whose `responseTo` names it) by command and collection, e.g.
 * `insert run_transitions`. Opt-in (BENCH_MONGO_PROFILE=1): it adds a hop to every command, so
 * the timed numbers of a profiled scenario are not the product's.
 */
export type CommandStats = { count: number; totalMs: number; maxMs: number };

export type MongoProfileProxy = {
  port: number;
  /** Per `<command> <collection>`: count and time, since the last reset. */
  stats(): Map<string, CommandStats>;
  reset(): void;
  close(): Promise<void>;
};

const opMsg = 2013;

/** `<command> <collection>` of an OP_MSG request (first key of the body section, and its string value). */
function commandOf(message: Buffer): string | undefined {
  if (message.length < 21 || message.readInt32LE(12) !== opMsg) return undefined;
  let offset = 20; // header (16) + flagBits (4)
  while (offset < message.length) {
    const kind = message[offset]!;
    offset += 1;
    if (kind === 0) {
      // BSON document: int32 size, then elements: type, cstring name, value.
      const type = message[offset + 4];
      const nameStart = offset + 5;
      const nameEnd = message.indexOf(0, nameStart);
      if (nameEnd < 0) return undefined;
      const name = message.toString('latin1', nameStart, nameEnd);
      if (type === 0x02) {
        const length = message.readInt32LE(nameEnd + 1);
        return `${name} ${message.toString('utf8', nameEnd + 5, nameEnd + 4 + length)}`;
      }
      return name;
    }
    if (kind === 1) {
      offset += message.readInt32LE(offset); // document sequence: size includes itself
      continue;
    }
    return undefined;
  }
  return undefined;
}

/** Splits a byte stream into wire messages (int32 length prefix), calling `onMessage` for each. */
function messageSplitter(onMessage: (message: Buffer) => void): (chunk: Buffer) => void {
  let pending: Buffer = Buffer.alloc(0);
  return (chunk) => {
    pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
    while (pending.length >= 4) {
      const length = pending.readInt32LE(0);
      if (pending.length < length) break;
      onMessage(pending.subarray(0, length));
      pending = pending.subarray(length);
    }
  };
}

export async function startMongoProfileProxy(upstreamHost: string, upstreamPort: number): Promise<MongoProfileProxy> {
  let stats = new Map<string, CommandStats>();
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    const upstream = createConnection({ host: upstreamHost, port: upstreamPort });
    client.setNoDelay(true);
    upstream.setNoDelay(true);
    sockets.add(client);
    sockets.add(upstream);
    const inFlight = new Map<number, { command: string; at: number }>();
    const fromClient = messageSplitter((message) => {
      const command = commandOf(message);
      if (command) inFlight.set(message.readInt32LE(4), { command, at: performance.now() });
    });
    const fromServer = messageSplitter((message) => {
      const request = inFlight.get(message.readInt32LE(8));
      if (!request) return;
      inFlight.delete(message.readInt32LE(8));
      const ms = performance.now() - request.at;
      const entry = stats.get(request.command) ?? { count: 0, totalMs: 0, maxMs: 0 };
      entry.count += 1;
      entry.totalMs += ms;
      entry.maxMs = Math.max(entry.maxMs, ms);
      stats.set(request.command, entry);
    });
    client.on('data', (chunk: Buffer) => {
      fromClient(chunk);
      upstream.write(chunk);
    });
    upstream.on('data', (chunk: Buffer) => {
      fromServer(chunk);
      client.write(chunk);
    });
    const close = () => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('close', close);
    upstream.on('close', close);
    client.on('error', close);
    upstream.on('error', close);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  return {
    port: typeof address === 'object' && address ? address.port : 0,
    stats: () => stats,
    reset() {
      stats = new Map();
    },
    close() {
      for (const socket of sockets) socket.destroy();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
