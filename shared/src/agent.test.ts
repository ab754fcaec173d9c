import { describe, expect, it } from 'vitest';
import { agentDefinitionSchema, agentLimits, outcomeUnknownAskRefusal, toolDefinitionSchema } from './agent.ts';

const model = { provider: 'scripted', steps: [{ text: 'hi' }] };

describe('agent size limits (finding 5)', () => {
  it("refuses a tool whose inputSchema is over the per-tool size, however it is made (1e20s included)", () => {
    const properties = Object.fromEntries(Array.from({ length: 4_000 }, (_, index) => [`p${index}`, { type: 'number', maximum: 1e20 }]));
    const result = agentDefinitionSchema.safeParse({ model, tools: [{ name: 'echo', kind: 'builtin', inputSchema: { type: 'object', properties } }] });
    expect(result.success).toBe(false);
    expect(result.error?.issues).toContainEqual(expect.objectContaining({ path: ['tools', 0, 'inputSchema'], message: expect.stringContaining(`${agentLimits.maxInputSchemaBytes} bytes`) }));
  });

  it('refuses a definition over the total size', () => {
    const result = agentDefinitionSchema.safeParse({ model: { provider: 'scripted', steps: [{ text: 'x'.repeat(agentLimits.maxDefinitionBytes) }] } });
    expect(result.success).toBe(false);
    expect(result.error?.issues).toContainEqual(expect.objectContaining({ message: expect.stringContaining(`${agentLimits.maxDefinitionBytes} bytes`) }));
  });

  it('accepts an ordinary agent', () => {
    expect(agentDefinitionSchema.safeParse({ model, tools: [{ name: 'echo', kind: 'builtin', inputSchema: { type: 'object' } }] }).success).toBe(true);
  });
});

describe('onOutcomeUnknown "ask" (issue 10 finding 4)', () => {
  const tool = (onOutcomeUnknown: string) => ({ name: 'charge', kind: 'http', inputSchema: { type: 'object' }, http: { url: 'https://api.example/charge' }, onOutcomeUnknown });

  it('is refused on PUT, naming the field and saying what to use instead', () => {
    const result = agentDefinitionSchema.safeParse({ model, tools: [{ name: 'echo', kind: 'builtin', inputSchema: { type: 'object' } }, tool('ask')] });
    expect(result.success).toBe(false);
    expect(result.error?.issues).toContainEqual(expect.objectContaining({ path: ['tools', 1, 'onOutcomeUnknown'], message: outcomeUnknownAskRefusal }));
    const entry = agentDefinitionSchema.safeParse({ model, tools: [{ kind: 'mcp', name: 'crm', server: { transport: 'stdio', serverId: 'crm' }, onOutcomeUnknown: 'ask' }] });
    expect(entry.error?.issues).toContainEqual(expect.objectContaining({ path: ['tools', 0, 'onOutcomeUnknown'], message: outcomeUnknownAskRefusal }));
  });

  it('accepts retry and fail', () => {
    for (const policy of ['retry', 'fail']) expect(agentDefinitionSchema.safeParse({ model, tools: [tool(policy)] }).error?.issues).toBeUndefined();
  });

  it('still parses in a stored tool definition (an agent stored before the refusal keeps working)', () => {
    expect(toolDefinitionSchema.parse(tool('ask')).onOutcomeUnknown).toBe('ask');
  });
});
