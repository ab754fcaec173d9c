import { agentDefinitionSchema, agentIdParamsSchema, agentSchema } from '@abide/shared';
import type { FastifyInstance } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { errorResponses, jsonResponse } from '../openapi.ts';
import type { RouteContext } from './route-context.ts';

/** `PUT /v1/agents/:agentId`, `GET /v1/agents/:agentId`. */
export function registerAgentRoutes(app: FastifyInstance, context: RouteContext): void {
  const routes = app.withTypeProvider<ZodTypeProvider>();
  routes.put(
    '/v1/agents/:agentId',
    {
      schema: {
        summary: 'Create or replace an agent; each PUT makes a new version',
        params: agentIdParamsSchema,
        body: agentDefinitionSchema,
        response: { 200: jsonResponse('the agent, with its version', agentSchema), ...errorResponses(400, 401, 413, 415, 422, 503) },
      },
    },
    async (request) => context.services().agents.putAgent(context.caller(request).tenantId, request.params.agentId, request.body),
  );

  routes.get(
    '/v1/agents/:agentId',
    { schema: { summary: 'The agent in force', params: agentIdParamsSchema, response: { 200: jsonResponse('the agent', agentSchema), ...errorResponses(400, 401, 404, 503) } } },
    async (request) => context.services().agents.getAgent(context.caller(request).tenantId, request.params.agentId),
  );
}
