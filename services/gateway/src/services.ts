import type { Logger } from '@abide/shared';
import { createAgentService } from './agents.ts';
import { createApprovalService } from './approvals.ts';
import { createEventRelay } from './event-relay.ts';
import type { Backend } from './ports.ts';
import type { RateLimiter } from './rate-limiter.ts';
import { createRunCanceller } from './run-access.ts';
import { createRunCreator } from './run-creation.ts';
import { createRunEventsOpener } from './run-events.ts';
import type { ArgsValidation } from './args-validation.ts';
import { createTenantCapacity } from './tenant-capacity.ts';
import { createWsTicketService } from './ws-tickets.ts';

/** The gateway's use cases, built once the backend (NATS, MongoDB) is connected. */
export function createServices(
  backend: Backend,
  deps: {
    logger: Logger;
    toolArgs: ArgsValidation;
    rateLimiter: RateLimiter;
    eventsMaxAgeMs: number;
    wsTicketTtlMs: number;
    /** `TENANT_MAX_ACTIVE_RUNS`; undefined = no limit. */
    maxActiveRuns?: number | undefined;
    /** How long a live event stream tries to resume its reader (`event-relay.ts`). @default 20000 */
    eventsResumeWithinMs?: number;
    /** How long a created run's reader may read nothing before the run is checked (`run-events.ts`). @default 2500 */
    createdRunCheckMs?: number;
    now?: () => Date;
  },
) {
  const { store, bus, events } = backend;
  const now = deps.now ?? (() => new Date());
  const relay = createEventRelay({ source: events, logger: deps.logger, ...(deps.eventsResumeWithinMs === undefined ? {} : { resumeWithinMs: deps.eventsResumeWithinMs }) });
  return {
    store,
    agents: createAgentService({ store, toolArgs: deps.toolArgs, eventsMaxAgeMs: deps.eventsMaxAgeMs, listMcpTools: bus.listMcpTools?.bind(bus), now }),
    createRun: createRunCreator({ store, bus, logger: deps.logger, rateLimiter: deps.rateLimiter, maxActiveRuns: deps.maxActiveRuns, now }),
    capacity: createTenantCapacity(backend.capacity),
    cancelRun: createRunCanceller({ store, bus }),
    approvals: createApprovalService({ store, bus, toolArgs: deps.toolArgs, logger: deps.logger, now }),
    wsTickets: createWsTicketService({ tickets: bus.tickets, ttlMs: deps.wsTicketTtlMs, now }),
    /** The stream sequence of a run's last stored event (null: none yet). */
    lastEventSeq: (runId: string) => events.lastSequenceOf(runId),
    openRunEvents: createRunEventsOpener({
      store,
      events,
      relay,
      eventsMaxAgeMs: deps.eventsMaxAgeMs,
      now: () => now().getTime(),
      ...(deps.createdRunCheckMs === undefined ? {} : { createdRunCheckMs: deps.createdRunCheckMs }),
    }),
  };
}
export type Services = ReturnType<typeof createServices>;
