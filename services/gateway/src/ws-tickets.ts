import { ApiError, kvKeys, type WsTicketResponse } from '@abide/shared';
import { createHash, randomBytes } from 'node:crypto';
import type { Caller } from './auth.ts';
import type { WsTicketStore } from './ports.ts';

const ticketPattern = /^wst_[A-Za-z0-9_-]{43}$/;

/** The KV key of a ticket: its SHA-256 (a reader of the bucket learns no usable ticket). */
const ticketKey = (ticket: string) => kvKeys.wsTicket(createHash('sha256').update(ticket).digest('hex'));

/**
 * Single-use WebSocket tickets (docs/api.md, "WebSocket tickets"): a browser gets one with its
 * key in a header, then opens `GET /v1/ws?ticket=<t>` on any replica, so the key itself never
 * lands in a URL (and an ingress access log). A ticket holds the tenant and the key's short id,
 * never the key; it works once, within `ttlMs`.
 */
export function createWsTicketService(deps: { tickets: WsTicketStore; ttlMs: number; now?: () => Date }) {
  const now = deps.now ?? (() => new Date());
  const refused = () => new ApiError('unauthorized', 'unknown, used or expired WebSocket ticket (get a new one with POST /v1/ws/tickets)');

  return {
    async issue(caller: Caller): Promise<WsTicketResponse> {
      const ticket = `wst_${randomBytes(32).toString('base64url')}`;
      const expiresAt = new Date(now().getTime() + deps.ttlMs).toISOString();
      // A crash after this write leaves an unused ticket that expires by itself (and the bucket's max age removes it).
      await deps.tickets.create(ticketKey(ticket), { tenantId: caller.tenantId, keyId: caller.keyId, expiresAt });
      return { ticket, expiresAt };
    },

    /** The caller a ticket was issued to; consumes it. Anything else (unknown, used, expired) is 401. */
    async redeem(ticket: string): Promise<Caller> {
      if (!ticketPattern.test(ticket)) throw refused();
      // Consumed before it is checked: an expired ticket is gone too. A crash after the delete and
      // before the upgrade loses the ticket; the client asks for another.
      const entry = await deps.tickets.consume(ticketKey(ticket));
      if (!entry || Date.parse(entry.expiresAt) <= now().getTime()) throw refused();
      return { tenantId: entry.tenantId, keyId: entry.keyId };
    },
  };
}
export type WsTicketService = ReturnType<typeof createWsTicketService>;
