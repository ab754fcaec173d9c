import { setTimeout as sleep } from 'node:timers/promises';
import { readFile } from 'node:fs/promises';
import { DeliverPolicy, jetstream, jetstreamManager } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { streams, subjects } from '@abide/shared';
import type { Db } from 'mongodb';
import type { Stack } from '../harness/stack.ts';
import { latestTransition, type ClientEvent } from '../harness/run-checks.ts';
import { TestSocket } from '../harness/test-socket.ts';

/** Everything stored about the chaos runs, gathered once they all ended. */

export type RawEvent = { seq: number; id: string; type: string; runId: string };

/** Every message of `RUN_EVENTS`, grouped by run (one ordered consumer over the whole stream). */
export async function readAllRawEvents(natsUrl: string): Promise<Map<string, RawEvent[]>> {
  const connection = await connect({ servers: natsUrl.split(',') });
  const byRun = new Map<string, RawEvent[]>();
  try {
    const jsm = await jetstreamManager(connection);
    const info = await jsm.streams.info(streams.runEvents);
    const lastSeq = info.state.last_seq;
    if (info.state.messages === 0) return byRun;
    const consumer = await jetstream(connection).consumers.get(streams.runEvents, { filter_subjects: subjects.runEventsAll, deliver_policy: DeliverPolicy.All });
    const messages = await consumer.consume({ max_messages: 1_024 });
    const decoder = new TextDecoder();
    for await (const message of messages) {
      const event = JSON.parse(decoder.decode(message.data)) as { id: string; type: string; runId: string };
      const list = byRun.get(event.runId) ?? [];
      list.push({ seq: message.seq, id: event.id, type: event.type, runId: event.runId });
      byRun.set(event.runId, list);
      if (message.seq >= lastSeq) break;
    }
    messages.stop();
    return byRun;
  } finally {
    await connection.close();
  }
}

/** The latest transition of each run and the versions of all its transitions. */
export async function readTransitions(db: Db, runIds: readonly string[]): Promise<Map<string, { versions: number[]; unpublished: number[]; latest: Record<string, any> | null }>> {
  const wanted = new Set(runIds);
  const all = await db.collection('run_transitions').find({}, { projection: { runId: 1, version: 1 } }).toArray();
  // Transitions are never marked (docs/decisions.md, "one write per step"): a run's outbox is
  // known published up to the read model's `publishedVersion`, and every version below a later one.
  const readModels = await db.collection('runs').find({}, { projection: { publishedVersion: 1 } }).toArray();
  const publishedUpTo = new Map(readModels.map((run) => [String(run._id), Number(run.publishedVersion ?? 0)]));
  const byRun = new Map<string, { versions: number[]; unpublished: number[] }>();
  for (const document of all) {
    const runId = String(document.runId);
    if (!wanted.has(runId)) continue;
    const entry = byRun.get(runId) ?? { versions: [], unpublished: [] };
    entry.versions.push(Number(document.version));
    byRun.set(runId, entry);
  }
  const result = new Map<string, { versions: number[]; unpublished: number[]; latest: Record<string, any> | null }>();
  for (const runId of runIds) {
    const entry = byRun.get(runId) ?? { versions: [], unpublished: [] };
    entry.versions.sort((a, b) => a - b);
    const top = entry.versions.at(-1);
    if (top !== undefined && top > (publishedUpTo.get(runId) ?? 0)) entry.unpublished.push(top);
    const latest = top === undefined ? null : await latestTransition(db, runId);
    result.set(runId, { ...entry, latest });
  }
  return result;
}

/**
 * Waits until no run's latest outbox is left unpublished: every read model records its latest
 * transition as published, and no new run's outbox work item is left (a crash after a commit is
 * finished by the input's redelivery, or by the outbox sweeper for a new run). Returns what is
 * left, one line per run and reason, so a failure names the run and the window.
 */
export async function waitForPublished(db: Db, timeoutMs: number): Promise<string[]> {
  const deadline = Date.now() + timeoutMs;
  let left: string[] = [];
  while (Date.now() < deadline) {
    left = [];
    for (const item of await db.collection('run_work').find({ kind: 'outbox' }).toArray()) left.push(`${String(item.runId)}: outbox work item due ${String(item.dueAt)} still there`);
    const runs = await db.collection('runs').find({}, { projection: { version: 1, publishedVersion: 1 } }).toArray();
    for (const run of runs) {
      const ahead = await db.collection('run_transitions').findOne({ _id: `${String(run._id)}:${Number(run.version) + 1}` as never }, { projection: { _id: 1 } });
      if (ahead) left.push(`${String(run._id)}: read model at version ${run.version}, version ${Number(run.version) + 1} committed`);
      else if (run.publishedVersion !== run.version) left.push(`${String(run._id)}: read model at version ${run.version} records version ${run.publishedVersion} as published`);
    }
    if (left.length === 0) return left;
    await sleep(500);
  }
  return left;
}

/** Full replays of `runIds` through the public WebSocket API, a few at a time. */
export async function fullReplays(gatewayUrls: readonly string[], key: string, runIds: readonly string[], parallel = 8): Promise<Map<string, ClientEvent[] | Error>> {
  const result = new Map<string, ClientEvent[] | Error>();
  const queue = [...runIds];
  let urlIndex = 0;
  async function worker(): Promise<void> {
    const url = `${gatewayUrls[urlIndex++ % gatewayUrls.length]!.replace('http', 'ws')}/v1/ws`;
    const socket = await TestSocket.open(url, { authorization: `Bearer ${key}` });
    try {
      for (let runId = queue.shift(); runId !== undefined; runId = queue.shift()) {
        socket.send({ type: 'subscribe', runId });
        try {
          result.set(runId, (await socket.untilTerminal(runId, 30_000)) as ClientEvent[]);
        } catch (error) {
          result.set(runId, error as Error);
        }
      }
    } finally {
      socket.close();
    }
  }
  await Promise.all(Array.from({ length: Math.min(parallel, runIds.length) }, worker));
  return result;
}

/**
 * Tool calls a tool-worker ran again because an earlier attempt was interrupted (its log line
 * "running the interrupted call again with the same idempotency key"), as `<runId>:<toolCallId>`.
 */
export async function interruptedCallRetries(stack: Stack): Promise<Set<string>> {
  const keys = new Set<string>();
  for (const service of stack.services.filter((candidate) => candidate.name === 'tool-worker')) {
    const text = await readFile(service.logFile, 'utf8').catch(() => '');
    for (const line of text.split('\n')) {
      if (!line.includes('running the interrupted call again')) continue;
      try {
        const entry = JSON.parse(line) as { runId?: string; toolCallId?: string };
        if (entry.runId && entry.toolCallId) keys.add(`${entry.runId}:${entry.toolCallId}`);
      } catch {
        // A line cut short by a SIGKILL: not evidence either way.
      }
    }
  }
  return keys;
}
