import {
  ApiError,
  approvalLedgerEntrySchema,
  createOrRead,
  mcpListReplySchema,
  subjects,
  wsTicketEntrySchema,
  decodeJson,
  encodeJson,
  publishJson,
  publishOutbox,
  type JetStreamClient,
  type KV,
  type NatsConnection,
} from '@abide/shared';
import type { Logger } from '@abide/shared';
import type { GatewayBus } from './ports.ts';

const mcpListTimeoutMs = 65_000;

/** The gateway's publishes and its side of the approval ledger, over NATS JetStream. */
export function createNatsBus(options: { connection: NatsConnection; js: JetStreamClient; approvalLedger: KV; wsTickets: KV; logger: Logger }): GatewayBus {
  const { connection, js, approvalLedger, wsTickets, logger } = options;
  return {
    async publish(subject, message, msgId) {
      await publishJson(js, subject, message, msgId);
    },

    async publishOutbox(transition) {
      await publishOutbox({ js }, transition);
    },

    async listMcpTools(request) {
      let reply;
      try {
        // Longer than the worker's own bounds (30 s to connect, 30 s to list), so its answer wins.
        reply = await connection.request(subjects.mcpToolsList, encodeJson(request), { timeout: mcpListTimeoutMs });
      } catch (error) {
        logger.warn({ err: error, tenantId: request.tenantId }, 'no tool-worker answered an MCP tool listing');
        throw new ApiError('unavailable', 'no tool-worker answered the MCP tool listing; retry', { cause: error, headers: { 'retry-after': '5' } });
      }
      const parsed = mcpListReplySchema.safeParse(decodeJson(reply.data));
      if (!parsed.success) throw new Error(`the tool-worker's MCP list reply does not parse: ${parsed.error.message.slice(0, 200)}`);
      return parsed.data;
    },

    ledger: {
      async get(key) {
        const entry = await approvalLedger.get(key);
        if (!entry || entry.operation !== 'PUT') return null;
        const parsed = approvalLedgerEntrySchema.safeParse(decodeJson(entry.value));
        if (!parsed.success) {
          // A foreign value under a ledger key: refuse to decide on it rather than guess.
          logger.error({ key, issues: parsed.error.issues }, 'approval ledger entry does not parse');
          throw new Error(`approval ledger entry ${key} does not parse`);
        }
        return parsed.data;
      },
      async create(key, entry) {
        // First decision wins: false when the key holds one already (whatever it holds).
        return (await createOrRead(approvalLedger, key, entry, approvalLedgerEntrySchema)).created;
      },
    },

    tickets: {
      async create(key, entry) {
        await wsTickets.create(key, encodeJson(entry));
      },
      async consume(key) {
        const entry = await wsTickets.get(key);
        if (!entry || entry.operation !== 'PUT') return null;
        try {
          // Compare-and-delete on the revision read: of two replicas redeeming one ticket, one delete wins.
          await wsTickets.delete(key, { previousSeq: entry.revision });
        } catch (error) {
          // The other consumer's delete came first (wrong last sequence): this one did not get the ticket.
          logger.debug({ err: error }, 'ticket consumed concurrently');
          return null;
        }
        const parsed = wsTicketEntrySchema.safeParse(decodeJson(entry.value));
        if (!parsed.success) throw new Error('a WS_TICKETS entry does not parse');
        return parsed.data;
      },
    },
  };
}
