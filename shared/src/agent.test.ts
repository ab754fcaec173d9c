import { describe, expect, it } from 'vitest';
import { agentDefinitionSchema, agentLimits } from './agent.ts';

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
