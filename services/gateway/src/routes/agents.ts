import { agentIdParamsSchema } from '@abide/shared';
import type { FastifyInstance } from 'fastify';
import { parseOr400 } from '../validation.ts';
import type { RouteContext } from './route-context.ts';

/** `PUT /v1/agents/:agentId`, `GET /v1/agents/:agentId`. */
export function registerAgentRoutes(app: FastifyInstance, context: RouteContext): void {
  app.put('/v1/agents/:agentId', async (request) => {
    const { agentId } = parseOr400(agentIdParamsSchema, request.params, 'params');
    return context.services().agents.putAgent(context.caller(request).tenantId, agentId, request.body);
  });

  app.get('/v1/agents/:agentId', async (request) => {
    const { agentId } = parseOr400(agentIdParamsSchema, request.params, 'params');
    return context.services().agents.getAgent(context.caller(request).tenantId, agentId);
  });
}
