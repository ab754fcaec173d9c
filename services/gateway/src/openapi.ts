import {
  acceptedResponseSchema,
  agentDeadlineSchema,
  agentDefinitionSchema,
  agentIdParamsSchema,
  agentSchema,
  approvalDecisionBodySchema,
  approvalParamsSchema,
  batchApprovalBodySchema,
  batchApprovalResponseSchema,
  cancelRunBodySchema,
  createRunBodySchema,
  createRunResponseSchema,
  createWsTicketBodySchema,
  cursorSchema,
  errorBodySchema,
  eventsQuerySchema,
  httpStatusByCode,
  idempotencyKeySchema,
  listRunsQuerySchema,
  listRunsResponseSchema,
  pendingApprovalsQuerySchema,
  pendingApprovalsResponseSchema,
  runHistoryQuerySchema,
  runHistoryResponseSchema,
  runIdParamsSchema,
  runViewSchema,
  wsClientFrameSchema,
  wsTicketResponseSchema,
} from '@abide/shared';
import { z } from 'zod';
import { chatOperations } from './chat-openapi.ts';

type Method = 'get' | 'put' | 'post';

/** One operation of the public API, described by the same zod schemas that validate it. */
export type Operation = {
  method: Method;
  /** The fastify path (`:param`). */
  path: string;
  summary: string;
  authenticated: boolean;
  params?: z.ZodObject;
  query?: z.ZodObject;
  headers?: Record<string, { schema: z.ZodType; description: string }>;
  body?: z.ZodType;
  bodyRequired?: boolean;
  responses: Record<string, { description: string; schema?: z.ZodType; contentType?: string }>;
};

const errors = (...statuses: number[]) =>
  Object.fromEntries(
    statuses.map((status) => {
      const codes = Object.entries(httpStatusByCode).filter(([, value]) => value === status).map(([code]) => code);
      return [String(status), { description: `error: ${codes.join(', ')}`, schema: errorBodySchema }];
    }),
  );

/** Every route the gateway serves (a unit test checks this list against fastify's routes). */
export const operations: Operation[] = [
  { method: 'get', path: '/healthz', summary: 'Liveness: 200 while the process runs', authenticated: false, responses: { '200': { description: 'alive' } } },
  {
    method: 'get',
    path: '/readyz',
    summary: 'Readiness: NATS and MongoDB reachable and not draining',
    authenticated: false,
    responses: { '200': { description: 'ready' }, ...errors(503) },
  },
  { method: 'get', path: '/metrics', summary: 'Prometheus metrics', authenticated: false, responses: { '200': { description: 'text format 0.0.4', contentType: 'text/plain' } } },
  { method: 'get', path: '/openapi.json', summary: 'This document', authenticated: false, responses: { '200': { description: 'OpenAPI 3.1' } } },
  {
    method: 'put',
    path: '/v1/agents/:agentId',
    summary: 'Create or replace an agent; each PUT makes a new version',
    authenticated: true,
    params: agentIdParamsSchema,
    body: agentDefinitionSchema,
    bodyRequired: true,
    responses: { '200': { description: 'the agent, with its version', schema: agentSchema }, ...errors(400, 401, 413, 415, 422, 503) },
  },
  {
    method: 'get',
    path: '/v1/agents/:agentId',
    summary: 'The agent in force',
    authenticated: true,
    params: agentIdParamsSchema,
    responses: { '200': { description: 'the agent', schema: agentSchema }, ...errors(400, 401, 404, 503) },
  },
  {
    method: 'post',
    path: '/v1/runs',
    summary: 'Start a run',
    authenticated: true,
    headers: { 'Idempotency-Key': { schema: idempotencyKeySchema, description: 'a repeat with the same key and body answers the same run' } },
    body: createRunBodySchema,
    bodyRequired: true,
    responses: {
      '201': { description: 'created', schema: createRunResponseSchema },
      '200': { description: 'the run an earlier request with this Idempotency-Key created', schema: createRunResponseSchema },
      ...errors(400, 401, 404, 409, 413, 415, 422, 429, 503),
    },
  },
  {
    method: 'get',
    path: '/v1/runs',
    summary: "The caller's runs, newest first",
    authenticated: true,
    query: listRunsQuerySchema,
    responses: { '200': { description: 'a page of runs', schema: listRunsResponseSchema }, ...errors(400, 401, 503) },
  },
  {
    method: 'get',
    path: '/v1/runs/:runId',
    summary: 'A run, as of now',
    authenticated: true,
    params: runIdParamsSchema,
    responses: { '200': { description: 'the run', schema: runViewSchema }, ...errors(400, 401, 404, 503) },
  },
  {
    method: 'get',
    path: '/v1/runs/:runId/events',
    summary: "The run's events as Server-Sent Events (Last-Event-ID wins over after); ends after the terminal event",
    authenticated: true,
    params: runIdParamsSchema,
    query: eventsQuerySchema,
    headers: { 'Last-Event-ID': { schema: cursorSchema, description: 'the seq of the last event held (wins over `after`)' } },
    responses: {
      '200': { description: 'text/event-stream: `id:` seq, `event:` type, `data:` the event JSON', contentType: 'text/event-stream' },
      '204': { description: 'the run has ended and the client holds its last event' },
      '410': { description: 'cursor_expired, with the run attached as `run`', schema: errorBodySchema.extend({ run: runViewSchema }) },
      ...errors(400, 401, 404, 429, 503),
    },
  },
  {
    method: 'post',
    path: '/v1/runs/:runId/cancel',
    summary: 'Cancel a run',
    authenticated: true,
    params: runIdParamsSchema,
    body: cancelRunBodySchema,
    responses: { '202': { description: 'accepted', schema: acceptedResponseSchema }, ...errors(400, 401, 404, 409, 503) },
  },
  {
    method: 'post',
    path: '/v1/runs/:runId/approvals/:toolCallId',
    summary: 'Approve or deny a pending tool call',
    authenticated: true,
    params: approvalParamsSchema,
    body: approvalDecisionBodySchema,
    bodyRequired: true,
    responses: {
      '202': { description: 'accepted', schema: acceptedResponseSchema },
      '200': { description: 'already_decided: the same decision was recorded before', schema: acceptedResponseSchema },
      ...errors(400, 401, 404, 409, 413, 503),
    },
  },
  {
    method: 'post',
    path: '/v1/runs/:runId/approvals',
    summary: 'Decide several pending tool calls of a run; one result per decision',
    authenticated: true,
    params: runIdParamsSchema,
    body: batchApprovalBodySchema,
    bodyRequired: true,
    responses: { '200': { description: 'per-decision results', schema: batchApprovalResponseSchema }, ...errors(400, 401, 413, 503) },
  },
  {
    method: 'get',
    path: '/v1/approvals',
    summary: "The caller's pending approvals across runs",
    authenticated: true,
    query: pendingApprovalsQuerySchema,
    responses: { '200': { description: 'pending approvals', schema: pendingApprovalsResponseSchema }, ...errors(400, 401, 503) },
  },
  {
    method: 'post',
    path: '/v1/ws/tickets',
    summary: 'A single-use, short-lived ticket for GET /v1/ws?ticket= (keeps the API key out of URLs)',
    authenticated: true,
    body: createWsTicketBodySchema,
    responses: { '201': { description: 'the ticket and when it stops being accepted', schema: wsTicketResponseSchema }, ...errors(400, 401, 503) },
  },
  {
    method: 'get',
    path: '/v1/ws',
    summary: 'WebSocket (JSON text frames; see docs/api.md). Client frames are described by x-client-frames',
    authenticated: true,
    responses: { '101': { description: 'switching protocols' }, ...errors(401, 403, 426, 429, 503) },
  },
  {
    method: 'get',
    path: '/v1/runs/:runId/history',
    summary: "The run's transitions (version, cause, status, step, awaiting, at), oldest first, paginated by version",
    authenticated: true,
    params: runIdParamsSchema,
    query: runHistoryQuerySchema,
    responses: { '200': { description: 'a page of transitions', schema: runHistoryResponseSchema }, ...errors(400, 401, 404, 503) },
  },
  { method: 'get', path: '/console', summary: 'The web console (HTML; no-cache)', authenticated: false, responses: { '200': { description: 'text/html', contentType: 'text/html' }, ...errors(404) } },
  { method: 'get', path: '/console/', summary: 'Redirects to /console', authenticated: false, responses: { '301': { description: 'to /console' } } },
  {
    method: 'get',
    path: '/console/assets/:name',
    summary: "The console's content-hashed assets (cached for a year)",
    authenticated: false,
    params: z.object({ name: z.string().min(1) }),
    responses: { '200': { description: 'JavaScript or CSS' }, ...errors(404) },
  },
  ...chatOperations,
];

/**
 * Generates the JSON Schemas of one document. Subschemas zod shares (`reused: 'ref'`) go to
 * `components.schemas` (a `#/$defs/…` inside an operation would resolve against the document's
 * root); agent deadlines get the configured maximum the gateway enforces beyond the zod schema.
 */
function createSchemaWriter(options: { maxDeadlineMs: number }) {
  const components: Record<string, unknown> = {};
  let generated = 0;
  function write(schema: z.ZodType, io: 'input' | 'output'): Record<string, unknown> {
    const prefix = `s${(generated += 1)}_`;
    const { $schema: _dialect, $defs, ...root } = z.toJSONSchema(schema, {
      io,
      unrepresentable: 'any',
      target: 'draft-2020-12',
      reused: 'ref',
      override: (context) => {
        if (context.zodSchema === agentDeadlineSchema) context.jsonSchema.maximum = options.maxDeadlineMs;
      },
    }) as Record<string, unknown> & { $defs?: Record<string, unknown> };
    const relocate = (value: unknown): unknown => {
      if (Array.isArray(value)) return value.map(relocate);
      if (value === null || typeof value !== 'object') return value;
      return Object.fromEntries(
        Object.entries(value).map(([key, inner]) => [
          key,
          key === '$ref' && typeof inner === 'string' && inner.startsWith('#/$defs/') ? `#/components/schemas/${prefix}${inner.slice('#/$defs/'.length)}` : relocate(inner),
        ]),
      );
    };
    for (const [name, definition] of Object.entries($defs ?? {})) components[`${prefix}${name}`] = relocate(definition);
    return relocate(root) as Record<string, unknown>;
  }
  return { write, components };
}

const openApiPath = (path: string) => path.replace(/:([A-Za-z]+)/g, '{$1}');

function parameters(operation: Operation, jsonSchema: (schema: z.ZodType, io: 'input' | 'output') => unknown): unknown[] {
  const list: unknown[] = [];
  for (const [location, schema] of [['path', operation.params], ['query', operation.query]] as const) {
    if (!schema) continue;
    for (const [name, field] of Object.entries(schema.shape as Record<string, z.ZodType>)) {
      list.push({ name, in: location, required: location === 'path' || !field.safeParse(undefined).success, schema: jsonSchema(field, 'input') });
    }
  }
  if (operation.authenticated && (operation.path === '/v1/ws' || operation.path.endsWith('/events'))) {
    list.push({ name: 'access_token', in: 'query', required: false, description: 'the API key, for clients that cannot set headers', schema: { type: 'string' } });
  }
  for (const [name, header] of Object.entries(operation.headers ?? {})) {
    list.push({ name, in: 'header', required: false, description: header.description, schema: jsonSchema(header.schema, 'input') });
  }
  return list;
}

/**
 * The OpenAPI 3.1 document of the public API, generated from the zod schemas the routes validate
 * with, plus the configured bounds (`maxDeadlineMs`).
 */
export function buildOpenApiDocument(options: { maxDeadlineMs: number }): Record<string, unknown> {
  const paths: Record<string, Record<string, unknown>> = {};
  const { write: jsonSchema, components } = createSchemaWriter(options);
  for (const operation of operations) {
    const entry: Record<string, unknown> = {
      summary: operation.summary,
      security: operation.authenticated ? [{ apiKey: [] }] : [],
      parameters: parameters(operation, jsonSchema),
      responses: Object.fromEntries(
        Object.entries(operation.responses).map(([status, response]) => [
          status,
          {
            description: response.description,
            ...(response.schema ? { content: { [response.contentType ?? 'application/json']: { schema: jsonSchema(response.schema, 'output') } } } : {}),
          },
        ]),
      ),
    };
    if (operation.body) {
      entry.requestBody = { required: operation.bodyRequired ?? false, content: { 'application/json': { schema: jsonSchema(operation.body, 'input') } } };
    }
    if (operation.path === '/v1/ws') entry['x-client-frames'] = jsonSchema(wsClientFrameSchema, 'input');
    (paths[openApiPath(operation.path)] ??= {})[operation.method] = entry;
  }
  return {
    openapi: '3.1.0',
    info: { title: 'Abide', version: '1', description: 'Durable AI agent runs. See docs/api.md.' },
    components: { schemas: components, securitySchemes: { apiKey: { type: 'http', scheme: 'bearer', description: 'Authorization: Bearer <api key>' } } },
    paths,
  };
}
