/**
 * The NATS users of deploy/nats/auth.conf against a real nats-server (deploy/nats/local.conf):
 * each service can provision and use what DESIGN §1–§2 gives it, with the same client library
 * and provisioning code the services use, and is refused everything else.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { jetstream, jetstreamManager } from '@nats-io/jetstream';
import { Kvm } from '@nats-io/kv';
import { Objm } from '@nats-io/obj';
import {
  buckets,
  consumers,
  createLogger,
  inboxPrefixes,
  objectStores,
  provisionJetStream,
  streams,
  subjects,
  type JetStreamSettings,
  type Provisioning,
} from '@abide/shared';
import { startAuthNats, type AuthNats, type NatsUser } from './auth-nats.ts';

/** What each service provisions at start-up (as in services/<name>/src: the streams it reads or publishes into). */
const provisioning: Record<Exclude<NatsUser, 'approvals-publisher' | 'admin'>, Provisioning> = {
  gateway: { streams: [streams.runInbox, streams.approvals, streams.runEvents], consumers: [], buckets: [buckets.approvalLedger, buckets.wsTickets, buckets.tenantLeases] },
  orchestrator: {
    streams: Object.values(streams),
    consumers: [consumers.orchestrator, consumers.orchestratorApprovals, consumers.orchestratorAdvisories],
    buckets: [buckets.runControl, buckets.approvalLedger],
    objectStores: [objectStores.payloads],
  },
  'llm-worker': {
    streams: [streams.llmRequests, streams.runEvents, streams.runInbox],
    consumers: [consumers.llmWorker],
    buckets: [buckets.llmResults, buckets.runControl, buckets.tenantLeases],
    objectStores: [objectStores.payloads],
  },
  'tool-worker': { streams: [streams.toolRequests, streams.runInbox], consumers: [consumers.toolWorker], buckets: [buckets.toolResults, buckets.runControl, buckets.tenantLeases] },
};

const settings = (url: string): JetStreamSettings => ({
  NATS_URL: url,
  JS_REPLICAS: 1,
  JS_DUPLICATE_WINDOW: 10 * 60_000,
  EVENTS_MAX_AGE: 7 * 86_400_000,
  EVENTS_MAX_BYTES: 1024 ** 3,
});

const runId = 'r_perm1';
const tenantId = 't_perm';
const logger = createLogger('nats-permissions-test', 'silent');

let nats: AuthNats;
let url: string;
const connectAs = (user: NatsUser) => nats.connectAs(user);

/** Subscribes to `subject` and resolves with the permissions error the server sends for it ('' if none before the flush). */
async function subscriptionError(connection: NatsConnection, subject: string): Promise<string> {
  const errors = (async () => {
    for await (const status of connection.status()) {
      if (status.type === 'error') return String((status as { error?: Error }).error?.message);
    }
    return '';
  })();
  const subscription = connection.subscribe(subject);
  await connection.flush();
  const message = await errors;
  subscription.unsubscribe();
  return message;
}
const violation = (subject: string) => new RegExp(`permissions violation for subscription to "${subject.replace(/[.>$]/g, '\\$&')}"`, 'i');

/** Expects `action` to fail with the server's permissions violation (not a timeout or a missing stream). */
async function expectRefused(action: () => Promise<unknown>, subject: string): Promise<void> {
  const error = await action().then(
    () => undefined,
    (reason: unknown) => reason as Error,
  );
  expect(error, `expected a permissions violation for ${subject}`).toBeInstanceOf(Error);
  expect(String(error?.message)).toMatch(/permissions violation/i);
  expect(String(error?.message)).toContain(subject);
}

beforeAll(async () => {
  nats = await startAuthNats();
  url = nats.url;
});

afterAll(async () => {
  await nats?.stop();
});

describe('deploy/nats/auth.conf', () => {
  it('refuses a wrong password and a missing user', async () => {
    await expect(connect({ servers: url, user: 'gateway', pass: 'wrong', reconnect: false })).rejects.toThrow(/authorization/i);
    await expect(connect({ servers: url, reconnect: false })).rejects.toThrow(/authorization/i);
  });

  it('lets every service provision its streams, consumers, buckets and stores', async () => {
    // The orchestrator first (it owns every stream), then the others re-provision the same names.
    for (const user of ['orchestrator', 'gateway', 'llm-worker', 'tool-worker'] as const) {
      const connection = await connectAs(user);
      await expect(provisionJetStream(connection, settings(url), provisioning[user], logger), user).resolves.toBeDefined();
    }
  });

  it('carries a run through the services, each within its own subjects', async () => {
    const [gateway, orchestrator, llmWorker, toolWorker, publisher] = await Promise.all(
      (['gateway', 'orchestrator', 'llm-worker', 'tool-worker', 'approvals-publisher'] as const).map(connectAs),
    );
    const gatewayJs = jetstream(gateway!);
    const orchestratorJs = jetstream(orchestrator!);
    const llmJs = jetstream(llmWorker!);
    const toolJs = jetstream(toolWorker!);

    // gateway: start, approval ledger entry + decision, cancel
    await expect(gatewayJs.publish(`run.in.${runId}.start`, '{}', { msgID: `${runId}:1:0` })).resolves.toMatchObject({ stream: streams.runInbox });
    const ledger = await new Kvm(gatewayJs).open(buckets.approvalLedger);
    await ledger.create(`${runId}.s0c0`, '{"approved":true}');
    expect((await ledger.get(`${runId}.s0c0`))?.string()).toBe('{"approved":true}');
    await expect(gatewayJs.publish(subjects.approvals(tenantId, runId), '{}')).resolves.toMatchObject({ stream: streams.approvals });
    // an internal approvals publisher
    await expect(jetstream(publisher!).publish(subjects.approvals(tenantId, runId), '{}')).resolves.toMatchObject({ stream: streams.approvals });

    // orchestrator: consume its inbox and approvals, write everything it owns
    const inbox = await orchestratorJs.consumers.get(streams.runInbox, consumers.orchestrator);
    const start = await inbox.next({ expires: 5_000 });
    expect(start?.subject).toBe(`run.in.${runId}.start`);
    await start!.ackAck();
    const approvals = await orchestratorJs.consumers.get(streams.approvals, consumers.orchestratorApprovals);
    const decision = await approvals.next({ expires: 5_000 });
    expect(decision?.subject).toBe(subjects.approvals(tenantId, runId));
    decision!.working();
    await decision!.ackAck();
    expect((await (await new Kvm(orchestratorJs).open(buckets.approvalLedger)).get(`${runId}.s0c0`))?.string()).toBe('{"approved":true}');
    await orchestratorJs.publish(subjects.runEvents(runId), '{"type":"run.started"}');
    await orchestratorJs.publish(`run.in.${runId}.timer`, '{}');
    const payloads = await new Objm(orchestratorJs).open(objectStores.payloads);
    await payloads.putBlob({ name: `${runId}.0` }, new TextEncoder().encode('x'.repeat(300_000)));
    await orchestratorJs.publish(subjects.llmRequest(runId), '{}');
    await orchestratorJs.publish(subjects.toolRequest('echo'), '{}');

    // llm-worker: request, payload, events, result
    const llmRequests = await llmJs.consumers.get(streams.llmRequests, consumers.llmWorker);
    const llmRequest = await llmRequests.next({ expires: 5_000 });
    expect(llmRequest?.subject).toBe(subjects.llmRequest(runId));
    llmRequest!.working();
    const payload = await (await new Objm(llmJs).open(objectStores.payloads)).getBlob(`${runId}.0`);
    expect(payload?.length).toBe(300_000);
    const llmResults = await new Kvm(llmJs).open(buckets.llmResults);
    await llmResults.put(`${runId}.0`, '{}');
    expect((await llmResults.get(`${runId}.0`))?.string()).toBe('{}');
    await llmJs.publish(subjects.runEvents(runId), '{"type":"message.delta"}');
    await llmJs.publish(`run.in.${runId}.llm_result`, '{}');
    await llmRequest!.ackAck();

    // tool-worker: request, started marker, result
    const toolRequests = await toolJs.consumers.get(streams.toolRequests, consumers.toolWorker);
    const toolRequest = await toolRequests.next({ expires: 5_000 });
    expect(toolRequest?.subject).toBe(subjects.toolRequest('echo'));
    const toolResults = await new Kvm(toolJs).open(buckets.toolResults);
    await toolResults.create(`${runId}.s0c0.started`, '{}');
    await toolResults.put(`${runId}.s0c0`, '{}');
    await toolJs.publish(`run.in.${runId}.tool_result`, '{}');
    await toolRequest!.ackAck();

    // workers watch RUN_CONTROL; the orchestrator cancels
    const llmControl = await new Kvm(llmJs).open(buckets.runControl);
    const toolControl = await new Kvm(toolJs).open(buckets.runControl);
    const llmWatch = await llmControl.watch({ key: runId });
    const toolWatch = await toolControl.watch({ key: runId });
    await gatewayJs.publish(`run.in.${runId}.cancel`, '{}');
    await (await new Kvm(orchestratorJs).open(buckets.runControl)).put(runId, '{"cancelled":true}');
    for (const watch of [llmWatch, toolWatch]) {
      for await (const entry of watch) {
        if (entry.key === runId && entry.operation === 'PUT') break;
      }
    }
    expect((await toolControl.get(runId))?.string()).toBe('{"cancelled":true}');

    // gateway: replay the run's events with an ordered consumer
    const replay = await gatewayJs.consumers.get(streams.runEvents, { filter_subjects: [subjects.runEvents(runId)] });
    const seen: string[] = [];
    for (let index = 0; index < 2; index += 1) {
      const message = await replay.next({ expires: 5_000 });
      if (message) seen.push(message.json<{ type: string }>().type);
    }
    expect(seen).toEqual(['run.started', 'message.delta']);
    await replay.delete();
  });

  it('refuses every service the subjects, buckets and APIs that are not its own', async () => {
    const [gateway, orchestrator, llmWorker, toolWorker, publisher] = await Promise.all(
      (['gateway', 'orchestrator', 'llm-worker', 'tool-worker', 'approvals-publisher'] as const).map(connectAs),
    );
    const refusedPublishes: [NatsConnection, string][] = [
      [gateway!, subjects.runEvents(runId)],
      [gateway!, `run.in.${runId}.llm_result`],
      [gateway!, `run.in.${runId}.tool_result`],
      [gateway!, subjects.llmRequest(runId)],
      [gateway!, `$KV.${buckets.runControl}.${runId}`],
      [gateway!, `$JS.API.STREAM.DELETE.${streams.runEvents}`],
      [gateway!, `$JS.API.STREAM.PURGE.${streams.runInbox}`],
      [gateway!, `$JS.API.CONSUMER.MSG.NEXT.${streams.runInbox}.${consumers.orchestrator}`],
      [orchestrator!, `run.in.${runId}.llm_result`],
      [orchestrator!, `run.in.${runId}.tool_result`],
      [orchestrator!, subjects.approvals(tenantId, runId)],
      [orchestrator!, `$KV.${buckets.toolResults}.${runId}.s0c0`],
      [orchestrator!, `$KV.${buckets.llmResults}.${runId}.0`],
      [orchestrator!, `$KV.${buckets.tenantLeases}.tool.${tenantId}.0`],
      [orchestrator!, `$JS.API.CONSUMER.MSG.NEXT.${streams.llmRequests}.${consumers.llmWorker}`],
      [orchestrator!, `$JS.API.STREAM.DELETE.${streams.runInbox}`],
      // llm.request.* is the llm-worker's own: it defers a request of a tenant at capacity by republishing it (issue 8).
      [llmWorker!, subjects.toolRequest('echo')],
      [llmWorker!, `run.in.${runId}.tool_result`],
      [llmWorker!, `run.in.${runId}.start`],
      [llmWorker!, `$KV.${buckets.runControl}.${runId}`],
      [llmWorker!, `$O.${objectStores.payloads}.M.x`],
      [llmWorker!, `$JS.API.CONSUMER.MSG.NEXT.${streams.toolRequests}.${consumers.toolWorker}`],
      [toolWorker!, subjects.runEvents(runId)],
      [toolWorker!, `run.in.${runId}.llm_result`],
      [toolWorker!, `run.in.${runId}.cancel`],
      [toolWorker!, `$KV.${buckets.llmResults}.${runId}.0`],
      [toolWorker!, `$KV.${buckets.approvalLedger}.${runId}.s0c0`],
      [toolWorker!, `$JS.API.DIRECT.GET.KV_${buckets.approvalLedger}.$KV.${buckets.approvalLedger}.${runId}.s0c0`],
      [publisher!, `run.in.${runId}.cancel`],
      [publisher!, subjects.runEvents(runId)],
      [publisher!, `$KV.${buckets.approvalLedger}.${runId}.s0c0`],
      [publisher!, '$JS.API.INFO'],
    ];
    for (const [connection, subject] of refusedPublishes) {
      await expectRefused(() => connection.request(subject, '{}', { timeout: 5_000 }), subject);
    }

    // Reading someone else's messages is refused too (subscriptions outside _INBOX.>).
    for (const [connection, subject] of [
      [gateway!, 'run.events.>'],
      [llmWorker!, 'run.in.>'],
      [publisher!, 'approvals.>'],
    ] as const) {
      expect(await subscriptionError(connection, subject)).toMatch(violation(subject));
    }
  });

  it("gives each service its own reply inbox: no one subscribes to _INBOX.> or to another service's inbox (finding 12)", async () => {
    const users = ['gateway', 'orchestrator', 'llm-worker', 'tool-worker', 'approvals-publisher'] as const;
    for (const user of users) {
      const own = await connectAs(user);
      // Every service's everyday traffic (requests, PubAcks, pulls) works through its own prefix:
      // the run above went through; here a JetStream API request answers on it.
      if (user !== 'approvals-publisher') await expect(jetstreamManager(own).then((jsm) => jsm.getAccountInfo())).resolves.toBeDefined();
      expect(await subscriptionError(await connectAs(user), '_INBOX.>')).toMatch(violation('_INBOX.>'));
      for (const other of users.filter((candidate) => candidate !== user)) {
        const theirs = `${inboxPrefixes[other]}.>`;
        expect(await subscriptionError(await connectAs(user), theirs), `${user} reading ${other}'s inbox`).toMatch(violation(theirs));
      }
    }
    // A client of a service's credentials that keeps the default prefix gets no answers at all.
    const defaultPrefix = await nats.connectAs('orchestrator', { inboxPrefix: '_INBOX' });
    await expect(jetstreamManager(defaultPrefix, { timeout: 2_000 })).rejects.toThrow();
  });
});
