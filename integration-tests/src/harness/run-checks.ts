import { setTimeout as sleep } from 'node:timers/promises';
import { jetstreamManager, jetstream, DeliverPolicy } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { collections, consumers, createAgentVersionReader, foldStoredTransitions, resolveTransitionAgent, streams, subjects, unpackTransition, type TransitionDocument } from '@abide/shared';
import type { Db } from 'mongodb';
import type { Stack } from './stack.ts';

/** Client event types that end a run; exactly one of them is a run's last event. */
/** The events of the three-step booker run (echo, HTTP tool, answer), deltas left out. */
export const bookerMilestones: readonly string[] = [
  'run.started',
  'llm.step.started',
  'message.completed',
  'tool.call',
  'tool.result',
  'llm.step.started',
  'message.completed',
  'tool.call',
  'tool.result',
  'llm.step.started',
  'message.completed',
  'run.completed',
];

export const terminalTypes: readonly string[] = ['run.completed', 'run.failed', 'run.cancelled'];

export type ClientEvent = { seq: number; eventId: string; type: string; [field: string]: any };

/**
 * What a client sees of an ended run from a fresh subscription without a cursor: every event
 * from the first one to the terminal one. Waits for the terminal event.
 */
export async function fullReplay(stack: Stack, key: string, runId: string, timeoutMs = 30_000): Promise<ClientEvent[]> {
  const socket = await stack.socket(key);
  try {
    socket.send({ type: 'subscribe', runId });
    return (await socket.untilTerminal(runId, timeoutMs)) as ClientEvent[];
  } finally {
    socket.close();
  }
}

/**
 * The rules every event stream a client receives keeps (DESIGN §5, §6): strictly increasing
 * `seq`, no `eventId` twice, exactly one terminal event and it is the last, and no
 * `message.delta` of a step after that step's `message.completed`. Returns the problems found.
 */
export function eventStreamProblems(events: readonly ClientEvent[]): string[] {
  const problems: string[] = [];
  for (let index = 1; index < events.length; index += 1) {
    if (!(events[index]!.seq > events[index - 1]!.seq)) problems.push(`seq not increasing at ${index}: ${events[index - 1]!.seq} then ${events[index]!.seq}`);
  }
  const ids = new Set<string>();
  for (const event of events) {
    if (ids.has(event.eventId)) problems.push(`eventId ${event.eventId} twice`);
    ids.add(event.eventId);
  }
  const terminal = events.filter((event) => terminalTypes.includes(event.type));
  if (terminal.length !== 1) problems.push(`${terminal.length} terminal events`);
  if (events.length > 0 && !terminalTypes.includes(events.at(-1)!.type)) problems.push(`last event is ${events.at(-1)!.type}`);
  const completedSteps = new Set<number>();
  for (const event of events) {
    if (event.type === 'message.completed') completedSteps.add(event.step);
    if (event.type === 'message.delta' && completedSteps.has(event.step)) problems.push(`delta ${event.eventId} after message.completed of step ${event.step}`);
  }
  return problems;
}

/** The run's event types without the deltas (the milestones, in order). */
export function milestones(events: readonly ClientEvent[]): string[] {
  return events.filter((event) => event.type !== 'message.delta').map((event) => event.type);
}

/** The versions of the run's transitions, in order (the history must be 1, 2, 3, …). */
export async function transitionVersions(db: Db, runId: string): Promise<number[]> {
  const documents = await db.collection('run_transitions').find({ runId }, { projection: { version: 1 } }).sort({ version: 1 }).toArray();
  return documents.map((document) => document.version as number);
}

/**
 * Waits until the run's read model records its latest transition as published
 * (`publishedVersion`; transitions themselves are never marked, docs/decisions.md "one write per
 * step"); the write follows the publish by a moment. Returns that version.
 */
export async function waitForPublishedLatest(db: Db, runId: string, timeoutMs = 30_000): Promise<number> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const latest = await latestTransition(db, runId);
    const run = await db.collection('runs').findOne({ _id: runId as never }, { projection: { publishedVersion: 1 } });
    if (run?.publishedVersion === latest.version) return latest.version as number;
    if (Date.now() > deadline) throw new Error(`run ${runId}: the read model records version ${run?.publishedVersion} as published, the latest is ${latest.version}`);
    await sleep(100);
  }
}

/**
 * Every transition of the run from MongoDB (the truth, DESIGN §3), each with its whole state:
 * stored transitions after a base hold only a delta (issue 9), and a base names its agent by its
 * `agent_versions` `_id`; folded here by the stores' own decoder, which also refuses a gap in the
 * versions, a delta that does not fit its base, or an agent version that is not stored.
 */
export async function readRunTransitions(db: Db, runId: string): Promise<TransitionDocument[]> {
  const stored = await db.collection('run_transitions').find({ runId }).sort({ version: 1 }).toArray();
  const readAgentVersion = createAgentVersionReader({ agentVersions: db.collection<{ _id: string }>(collections.agentVersions) });
  return foldStoredTransitions(await Promise.all(stored.map((document) => resolveTransitionAgent(unpackTransition(document), readAgentVersion))));
}

/** The latest transition of the run from MongoDB, with its whole state. */
export async function latestTransition(db: Db, runId: string): Promise<Record<string, any>> {
  const latest = (await readRunTransitions(db, runId)).at(-1);
  if (!latest) throw new Error(`run ${runId} has no transitions`);
  return latest;
}

/**
 * Every event of the run as stored in `RUN_EVENTS`, read raw from NATS (no gateway filtering):
 * a message published twice beyond the `Nats-Msg-Id` dedupe would show here as a repeated eventId.
 */
export async function rawRunEvents(natsUrl: string, runId: string): Promise<{ seq: number; id: string; type: string; payload: any }[]> {
  const connection = await connect({ servers: natsUrl.split(',') });
  try {
    const js = jetstream(connection);
    const jsm = await jetstreamManager(connection);
    const last = await jsm.streams.getMessage(streams.runEvents, { last_by_subj: subjects.runEvents(runId) }).catch(() => null);
    if (!last) return [];
    const consumer = await js.consumers.get(streams.runEvents, { filter_subjects: subjects.runEvents(runId), deliver_policy: DeliverPolicy.All });
    const messages = await consumer.consume({ max_messages: 256 });
    const events: { seq: number; id: string; type: string; payload: any }[] = [];
    for await (const message of messages) {
      const event = JSON.parse(new TextDecoder().decode(message.data));
      events.push({ seq: message.seq, id: event.id, type: event.type, payload: event.payload });
      if (message.seq >= last.seq) break;
    }
    messages.stop();
    return events;
  } finally {
    await connection.close();
  }
}

/** Polls `GET /v1/runs/:runId` until its status is one of `statuses`. */
export async function waitForStatus(stack: Stack, key: string, runId: string, statuses: readonly string[], timeoutMs = 90_000): Promise<Record<string, any>> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  while (Date.now() < deadline) {
    const response = await stack.api(key, 'GET', `/v1/runs/${runId}`).catch((error: Error) => ({ status: 0, body: error.message }));
    last = response.body;
    if (response.status === 200 && statuses.includes(response.body.status)) return response.body;
    await sleep(200);
  }
  throw new Error(`run ${runId} not ${statuses.join('|')} within ${timeoutMs} ms; last answer ${JSON.stringify(last)}\n${stack.logs(30)}`);
}

/**
 * Waits until no JetStream work is pending or unacknowledged on the work-queue consumers, i.e.
 * every redelivery a crash caused has been handled (a killed process's messages come back after
 * their `ack_wait`).
 */
export async function waitForQuietConsumers(natsUrl: string, timeoutMs = 90_000): Promise<void> {
  const connection = await connect({ servers: natsUrl.split(',') });
  const watched: [string, string][] = [
    [streams.runInbox, consumers.orchestrator],
    [streams.llmRequests, consumers.llmWorker],
    [streams.toolRequests, consumers.toolWorker],
  ];
  try {
    const jsm = await jetstreamManager(connection);
    const deadline = Date.now() + timeoutMs;
    let busy: string[] = [];
    while (Date.now() < deadline) {
      busy = [];
      for (const [stream, durable] of watched) {
        const info = await jsm.consumers.info(stream, durable);
        if (info.num_ack_pending > 0 || info.num_pending > 0) busy.push(`${durable}: ${info.num_pending} pending, ${info.num_ack_pending} unacked`);
      }
      if (busy.length === 0) return;
      await sleep(250);
    }
    throw new Error(`consumers still busy after ${timeoutMs} ms: ${busy.join('; ')}`);
  } finally {
    await connection.close();
  }
}
