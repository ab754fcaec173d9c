import type { Random } from './random.ts';

/**
 * The chaos workload: a few scripted agents mixing plain built-in tools (`echo`, `sleep` for a
 * few ms), HTTP tools served by the test (each call counted by its Idempotency-Key) and an HTTP
 * tool that needs approval, and a seeded plan of runs over them.
 */

/** HTTP tools of the workload: `record` runs at once, `transfer` needs approval. */
export const httpToolNames = ['record', 'transfer'] as const;

const objectSchema = { type: 'object' };

export type AgentDefinition = { agentId: string; body: Record<string, unknown> };

type ScriptedStep = { text?: string; toolCalls?: { toolName: string; args: Record<string, unknown> }[] };

function sentence(random: Random, words: number): string {
  const vocabulary = ['durable', 'runs', 'survive', 'crashes', 'every', 'event', 'once', 'in', 'order', 'tools', 'retry', 'with', 'the', 'same', 'key'];
  return Array.from({ length: words }, () => random.pick(vocabulary)).join(' ') + '.';
}

/** The agents, varied by the seed (stream speed, sleep lengths, arguments). */
export function chaosAgents(random: Random, toolUrl: string): AgentDefinition[] {
  const tools = [
    { name: 'echo', kind: 'builtin', description: 'Echo', inputSchema: objectSchema },
    { name: 'sleep', kind: 'builtin', description: 'Sleep', inputSchema: objectSchema },
    { name: 'record', kind: 'http', description: 'Record a fact', inputSchema: objectSchema, http: { url: `${toolUrl}/record` } },
    { name: 'transfer', kind: 'http', description: 'Move money', needsApproval: true, inputSchema: objectSchema, http: { url: `${toolUrl}/transfer` } },
  ];
  const model = (steps: ScriptedStep[]) => ({ provider: 'scripted', chunkSize: random.int(3, 12), delayMs: random.int(2, 10), steps });
  const sleep = () => ({ toolName: 'sleep', args: { ms: random.int(2, 40) } });
  const agents: Record<string, ScriptedStep[]> = {
    'chaos-plain': [
      { text: sentence(random, 12), toolCalls: [{ toolName: 'echo', args: { n: random.int(1, 99) } }, sleep()] },
      { text: sentence(random, 8), toolCalls: [{ toolName: 'echo', args: { again: true } }] },
      { text: sentence(random, 10) },
    ],
    'chaos-http': [
      { text: sentence(random, 10), toolCalls: [{ toolName: 'record', args: { fact: 'first', n: random.int(1, 99) } }, { toolName: 'echo', args: { with: 'record' } }] },
      { text: sentence(random, 6), toolCalls: [{ toolName: 'record', args: { fact: 'second' } }, sleep()] },
      { text: sentence(random, 10) },
    ],
    'chaos-approval': [
      { text: sentence(random, 8), toolCalls: [{ toolName: 'transfer', args: { cents: random.int(100, 9_999) } }, { toolName: 'echo', args: { note: 'no approval' } }] },
      { text: sentence(random, 10) },
    ],
    'chaos-mixed': [
      { toolCalls: [sleep(), { toolName: 'record', args: { fact: 'mixed' } }] },
      { text: sentence(random, 6), toolCalls: [{ toolName: 'transfer', args: { cents: random.int(1, 99) } }, { toolName: 'transfer', args: { cents: random.int(100, 999) } }, { toolName: 'record', args: { fact: 'beside approvals' } }] },
      { text: sentence(random, 12) },
    ],
  };
  return Object.entries(agents).map(([agentId, steps]) => ({ agentId, body: { system: 'A chaos test agent.', model: model(steps), tools, maxSteps: 10 } }));
}

export type RunPlan = {
  index: number;
  agentId: string;
  input: string;
  /** The Idempotency-Key of its creation: a retry after a gateway died creates nothing new. */
  idempotencyKey: string;
  /** Milliseconds after the previous run's creation. */
  gapMs: number;
  /** Whether the approval of `toolCallId` is granted (about four in five are). */
  approves(toolCallId: string): boolean;
  /** How long the test waits before deciding an approval (a suspended run may meet a kill). */
  decisionDelayMs(toolCallId: string): number;
};

/** `count` runs over the agents, created about `ratePerSecond` per second. */
export function planRuns(random: Random, agents: readonly AgentDefinition[], count: number, ratePerSecond: number, seed: number): RunPlan[] {
  const meanGapMs = 1_000 / ratePerSecond;
  return Array.from({ length: count }, (_unused, index) => {
    const decisions = random.fork(`decisions-${index}`);
    const cache = new Map<string, { approved: boolean; delayMs: number }>();
    const decision = (toolCallId: string) => {
      let found = cache.get(toolCallId);
      if (!found) {
        const own = decisions.fork(toolCallId);
        found = { approved: own.chance(0.8), delayMs: own.int(0, 1_500) };
        cache.set(toolCallId, found);
      }
      return found;
    };
    return {
      index,
      agentId: random.pick(agents).agentId,
      input: `chaos run ${index}`,
      idempotencyKey: `chaos-${seed}-${index}`,
      gapMs: Math.round(random.next() * 2 * meanGapMs),
      approves: (toolCallId) => decision(toolCallId).approved,
      decisionDelayMs: (toolCallId) => decision(toolCallId).delayMs,
    };
  });
}
