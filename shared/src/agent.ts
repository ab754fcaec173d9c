import { z } from 'zod';
import { toolNameSchema } from './envelope.ts';
import { definitionJsonMemberSchema, definitionJsonObjectSchema } from './stored-json.ts';

export const agentIdSchema = z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'must match [A-Za-z0-9_-]{1,64}');

/** Limits on an agent definition (a definition is copied into every run it starts). */
export const agentLimits = {
  maxTools: 64,
  maxScriptedSteps: 200,
  maxSystemChars: 100_000,
  maxStepsCeiling: 200,
  defaultMaxSteps: 20,
  /**
   * The whole definition, serialized as JSON. An agent travels in every model request (its tools
   * and model) and each tool request carries one tool, so their size is bounded by this, far
   * below the bus's 1 MiB `max_payload`; `1e20`-style numbers cost nothing once size is bounded.
   */
  maxDefinitionBytes: 256 * 1024,
  /** One tool's `inputSchema`, serialized as JSON. */
  maxInputSchemaBytes: 64 * 1024,
} as const;

/**
 * The name of a secret of the calling tenant (`TENANT_SECRETS_DIR/<tenantId>/<NAME>`), written
 * like an environment variable name; the value never lives in MongoDB or on the bus.
 */
const envNameSchema = z.string().regex(/^[A-Z_][A-Z0-9_]{0,127}$/, 'must be a secret name ([A-Z_][A-Z0-9_]*)');

/**
 * An outbound http(s) URL of a tenant (a model's `baseURL`, a tool's `url`): no userinfo (it
 * would be sent as credentials), no query and no fragment (a `#` would cut off the path the
 * worker appends, making the whole path the tenant's).
 */
const outboundUrlSchema = z.url({ protocol: /^https?$/ }).superRefine((text, context) => {
  // zod runs this refinement after a failed `z.url()` check too (found by schemathesis: `""` was a
  // 500): that check has reported the value already.
  if (!URL.canParse(text)) return;
  const url = new URL(text);
  if (url.username || url.password) context.addIssue({ code: 'custom', message: 'must not contain a user name or password' });
  if (url.search || text.includes('?')) context.addIssue({ code: 'custom', message: 'must not contain a query' });
  if (url.hash || text.includes('#')) context.addIssue({ code: 'custom', message: 'must not contain a fragment' });
});

/**
 * Bounds on what a model may produce in one step (the llm-worker enforces them while streaming;
 * over a bound the stream is aborted and the step fails with `model_output_too_large`). Chosen so
 * a step's result, its `message.completed` event and its `tool.call` events fit one NATS message.
 */
export const modelOutputLimits = {
  /** Text characters per step. */
  maxTextChars: 100_000,
  /** Tool calls per step. */
  maxToolCalls: 32,
  /** Bytes of all tool-call arguments of a step, as JSON. */
  maxToolArgsBytes: 256 * 1024,
} as const;

/** The UTF-8 size of `value` serialized as JSON. */
export function jsonByteLength(value: unknown): number {
  return Buffer.byteLength(JSON.stringify(value) ?? '', 'utf8');
}

export const openAICompatibleModelSchema = z.object({
  provider: z.literal('openai-compatible'),
  baseURL: outboundUrlSchema,
  model: z.string().min(1).max(256),
  apiKeyEnv: envNameSchema.optional(),
});

export const scriptedToolCallSchema = z.object({
  toolName: toolNameSchema,
  args: definitionJsonObjectSchema,
});
export const scriptedStepSchema = z.object({
  text: z.string().max(1_000_000).optional(),
  toolCalls: z.array(scriptedToolCallSchema).max(32).optional(),
});
export const scriptedModelSchema = z.object({
  provider: z.literal('scripted'),
  steps: z.array(scriptedStepSchema).min(1).max(agentLimits.maxScriptedSteps),
  /** Characters per streamed text chunk. @default 16 */
  chunkSize: z.int().min(1).max(100_000).optional(),
  /** Delay before each chunk, in ms. @default 0 */
  delayMs: z.int().min(0).max(60_000).optional(),
});

export const modelConfigSchema = z.discriminatedUnion('provider', [openAICompatibleModelSchema, scriptedModelSchema]);
export type ModelConfig = z.infer<typeof modelConfigSchema>;
export type ScriptedModelConfig = z.infer<typeof scriptedModelSchema>;

/**
 * A JSON Schema describing a tool's input; must describe an object. Stored with its keys escaped,
 * so any keyword may appear; its depth and arrays follow `stored-json.ts`.
 */
export const toolInputSchemaSchema = z
  .record(z.string(), definitionJsonMemberSchema)
  .refine((schema) => schema.type === 'object', { path: ['type'], message: 'must be "object"' })
  // The refinement, for the generated JSON Schema (zod cannot derive it from a refinement).
  .meta({ properties: { type: { const: 'object' } }, required: ['type'] });

const headerNameSchema = z.string().regex(/^[A-Za-z0-9-]{1,128}$/, 'must be an HTTP header name');

export const httpToolConfigSchema = z.object({
  url: outboundUrlSchema,
  method: z.enum(['POST', 'PUT', 'PATCH']).default('POST'),
  headers: z.record(headerNameSchema, z.string().max(4096)).optional(),
  /** Header name → name of a secret of the calling tenant holding its value (`TENANT_SECRETS_DIR`; secrets never go to MongoDB or the bus). */
  headersFromEnv: z.record(headerNameSchema, envNameSchema).optional(),
});
export type HttpToolConfig = z.infer<typeof httpToolConfigSchema>;

/**
 * A deadline an agent sets (tool and step timeouts), in ms. The gateway also bounds it by the
 * events' retention (`EVENTS_MAX_AGE` minus a day), a configured value its OpenAPI document
 * states as this schema's `maximum`.
 */
export const agentDeadlineSchema = z.int().min(1);

export const builtinToolNames = ['echo', 'sleep', 'current_time'] as const;

/** The id of an operator-configured stdio MCP server (`MCP_STDIO_SERVERS`); never a command. */
export const mcpStdioServerIdSchema = z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'must match [A-Za-z0-9_-]{1,64}');

/**
 * An MCP server (issue 13). `streamable-http`: the tenant's `url`, reached through the tool-worker's
 * egress policy (`TOOL_EGRESS_ALLOW`), with headers from the calling tenant's secrets
 * (`headersFromSecrets`, `headersFromEnv` an alias kept for symmetry with HTTP tools). `stdio`: a
 * server the operator configured by id in `MCP_STDIO_SERVERS`; a tenant never supplies a command.
 */
export const mcpServerSchema = z.discriminatedUnion('transport', [
  z.object({
    transport: z.literal('streamable-http'),
    url: outboundUrlSchema,
    headers: z.record(headerNameSchema, z.string().max(4096)).optional(),
    headersFromSecrets: z.record(headerNameSchema, envNameSchema).optional(),
    headersFromEnv: z.record(headerNameSchema, envNameSchema).optional(),
  }),
  z.object({ transport: z.literal('stdio'), serverId: mcpStdioServerIdSchema }),
]);
export type McpServer = z.infer<typeof mcpServerSchema>;

/** A tool name as an MCP server writes it (the MCP spec allows 1–128 characters). */
export const mcpToolNameSchema = z.string().min(1).max(128);

/** What an expanded MCP tool carries: its server and its name on that server. */
export const mcpToolConfigSchema = z.object({ server: mcpServerSchema, tool: mcpToolNameSchema });
export type McpToolConfig = z.infer<typeof mcpToolConfigSchema>;

/** Default execution timeout of an MCP tool (DESIGN §4): 30 min. */
export const defaultMcpToolTimeoutMs = 1_800_000;

/** Separator of an MCP tool's Abide name: `<server name>__<tool name on the server>`. */
export const mcpToolNameSeparator = '__';

const toolPolicyFields = {
  needsApproval: z.boolean().default(false),
  /** Time a single execution may take. @default 600000 (10 min; 1800000 for MCP tools) */
  timeoutMs: agentDeadlineSchema.optional(),
  /** Time a pending approval may wait. @default 1800000 (30 min) */
  approvalTimeoutMs: agentDeadlineSchema.optional(),
  onApprovalTimeout: z.enum(['deny', 'fail']).default('deny'),
  /**
   * What an interrupted call (outcome unknown) does. `ask` is refused on `PUT /v1/agents`
   * (`declaredOutcomeUnknownSchema`) until it is built; readers still accept it, so a definition stored
   * before keeps parsing (the tool-worker fails such a call with `outcome_unknown`).
   * @default "retry"
   */
  onOutcomeUnknown: z.enum(['retry', 'ask', 'fail']).default('retry'),
};

/** Why `onOutcomeUnknown: "ask"` is refused (docs/decisions.md). */
export const outcomeUnknownAskRefusal =
  '"ask" (a human decides whether to run an interrupted call again) is not supported yet; use "retry" for a tool that is safe to run twice with the same idempotency key, or "fail"';

/**
 * `onOutcomeUnknown` as a tenant may write it on `PUT /v1/agents`: without `ask` until it is
 * built, so the OpenAPI document generated from this schema promises what the server accepts.
 */
const declaredOutcomeUnknownSchema = z
  .enum(['retry', 'fail'], { error: (issue) => (issue.input === 'ask' ? outcomeUnknownAskRefusal : undefined) })
  .default('retry');

const toolDefinitionObject = z.object({
  name: toolNameSchema,
  description: z.string().max(10_000).default(''),
  inputSchema: toolInputSchemaSchema,
  kind: z.enum(['builtin', 'http', 'mcp']),
  http: httpToolConfigSchema.optional(),
  /** Set by the gateway when it expands an MCP server entry (never written by a tenant). */
  mcp: mcpToolConfigSchema.optional(),
  ...toolPolicyFields,
});

function checkToolDefinition(tool: z.infer<typeof toolDefinitionObject>, context: z.RefinementCtx): void {
  const schemaBytes = jsonByteLength(tool.inputSchema);
  if (schemaBytes > agentLimits.maxInputSchemaBytes) {
    context.addIssue({ code: 'custom', path: ['inputSchema'], message: `must be at most ${agentLimits.maxInputSchemaBytes} bytes as JSON (is ${schemaBytes})` });
  }
  if (tool.kind === 'http' && !tool.http) context.addIssue({ code: 'custom', path: ['http'], message: 'an http tool needs `http`' });
  if (tool.kind === 'mcp' && !tool.mcp) context.addIssue({ code: 'custom', path: ['mcp'], message: 'an mcp tool needs `mcp`' });
  if (tool.kind === 'builtin' && !(builtinToolNames as readonly string[]).includes(tool.name)) {
    context.addIssue({ code: 'custom', path: ['name'], message: `unknown built-in tool; built-ins are ${builtinToolNames.join(', ')}` });
  }
}

/** A tool as stored with an agent version and carried by `tool.request` (MCP tools already expanded). */
export const toolDefinitionSchema = toolDefinitionObject.superRefine(checkToolDefinition);
export type ToolDefinition = z.infer<typeof toolDefinitionSchema>;

/** A tool a tenant declares one by one in `PUT /v1/agents/:agentId` (MCP tools come from a server entry). */
export const declaredToolDefinitionSchema = toolDefinitionObject
  .extend({ kind: z.enum(['builtin', 'http']), onOutcomeUnknown: declaredOutcomeUnknownSchema })
  .superRefine(checkToolDefinition)
  // The refinement, for the generated JSON Schema (zod cannot derive it from a refinement).
  .meta({
    anyOf: [
      { properties: { kind: { const: 'builtin' }, name: { enum: [...builtinToolNames] } } },
      { properties: { kind: { const: 'http' } }, required: ['http'] },
    ],
  });

/** Limits on what an MCP server's `tools/list` may bring into an agent. */
export const mcpLimits = {
  /** Longest server name (the prefix of its tools' names). */
  maxServerNameChars: 30,
  /** Tools named in one entry's `tools` list. */
  maxNamedTools: agentLimits.maxTools,
  /** Tools a `tools/list` may answer (all pages). */
  maxListedTools: 512,
  /** Size of one tool's `inputSchema`, as JSON. */
  maxInputSchemaBytes: agentLimits.maxInputSchemaBytes,
} as const;

/**
 * An MCP server entry of `PUT /v1/agents/:agentId` (issue 13): the gateway lists the server's
 * tools and stores each one it may use as a tool named `<name>__<tool>`, with this entry's policy.
 */
export const mcpServerEntrySchema = z.object({
  kind: z.literal('mcp'),
  /** Prefix of the tools' names. */
  name: z.string().regex(new RegExp(`^[A-Za-z0-9-]{1,${mcpLimits.maxServerNameChars}}$`), `must match [A-Za-z0-9-]{1,${mcpLimits.maxServerNameChars}}`),
  server: mcpServerSchema,
  /** `all`, or the names (as the server writes them) of the tools the agent may use. @default "all" */
  tools: z.union([z.literal('all'), z.array(mcpToolNameSchema).min(1).max(mcpLimits.maxNamedTools)]).default('all'),
  ...toolPolicyFields,
  onOutcomeUnknown: declaredOutcomeUnknownSchema,
});
export type McpServerEntry = z.infer<typeof mcpServerEntrySchema>;

/** One element of an agent definition's `tools`. */
export const agentToolEntrySchema = z.discriminatedUnion('kind', [declaredToolDefinitionSchema, mcpServerEntrySchema]);
export type AgentToolEntry = z.infer<typeof agentToolEntrySchema>;

export const agentLimitsSchema = z.object({
  /** Model step timeout. @default 3600000 (60 min) */
  llmStepTimeoutMs: agentDeadlineSchema.optional(),
});

/** The body of `PUT /v1/agents/:agentId`. */
export const agentDefinitionSchema = z
  .object({
    system: z.string().max(agentLimits.maxSystemChars).optional(),
    model: modelConfigSchema,
    tools: z.array(agentToolEntrySchema).max(agentLimits.maxTools).default([]),
    maxSteps: z.int().min(1).max(agentLimits.maxStepsCeiling).default(agentLimits.defaultMaxSteps),
    limits: agentLimitsSchema.default({}),
  })
  .strict()
  .superRefine((agent, context) => {
    const definitionBytes = jsonByteLength(agent);
    if (definitionBytes > agentLimits.maxDefinitionBytes) {
      context.addIssue({ code: 'custom', path: [], message: `the agent definition must be at most ${agentLimits.maxDefinitionBytes} bytes as JSON (is ${definitionBytes})` });
    }
    const seen = new Set<string>();
    agent.tools.forEach((tool, index) => {
      if (seen.has(tool.name)) context.addIssue({ code: 'custom', path: ['tools', index, 'name'], message: `duplicate tool name "${tool.name}"` });
      seen.add(tool.name);
    });
  });
export type AgentDefinition = z.infer<typeof agentDefinitionSchema>;
export type AgentDefinitionInput = z.input<typeof agentDefinitionSchema>;

/** An agent as stored (`agents`) and as pinned into a run (`agentSnapshot`). */
export const agentSchema = z.looseObject({
  tenantId: z.string(),
  agentId: agentIdSchema,
  version: z.int().min(1),
  system: z.string().optional(),
  model: modelConfigSchema,
  tools: z.array(toolDefinitionSchema),
  maxSteps: z.int().min(1),
  limits: agentLimitsSchema,
  createdAt: z.string(),
  updatedAt: z.string(),
}).meta({ id: 'Agent' });
export type Agent = z.infer<typeof agentSchema>;
