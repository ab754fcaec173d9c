import { collections, createAgentVersionReader, encodeStoredKeys, foldStoredTransitions, readModelDocument, resolveTransitionAgent, unpackTransition, type TransitionDocument } from '@abide/shared';
import { BSON, type Db } from 'mongodb';

/** What one run wrote to MongoDB, in BSON bytes, and the same run as whole-state documents. */
export type RunBytes = {
  runId: string;
  steps: number;
  versions: number;
  /** `run_transitions` inserts, as stored. */
  transitionBytes: number;
  /** `runs` writes (read model), as the stores build them. */
  readModelBytes: number;
  readModelWrites: number;
  /** The same transitions and read-model writes with each holding the whole state (before issue 9, item 2). */
  wholeTransitionBytes: number;
  wholeReadModelBytes: number;
  /** Version 1 as stored (the base: the whole initial state, with the agent). */
  firstTransitionBytes: number;
};

const size = (document: object) => BSON.calculateObjectSize(document as BSON.Document);

/** A transition after which the run waits for nothing of its own: its read model is written before and after its publish. */
const writesOf = (transition: TransitionDocument) =>
  transition.version > 1 && !transition.outbox.some((entry) => entry.kind === 'llm_request' || entry.kind === 'tool_request' || entry.kind === 'inbox') ? 2 : 1;

/**
 * Bytes a finished run wrote to MongoDB: its `run_transitions` documents as stored (exact: a
 * transition is inserted once and never updated), and its read-model writes rebuilt with the
 * stores' own builder (`readModelDocument`), one per transition and two for a transition with no
 * next step (written before and after its publish, docs/decisions.md "one write per step").
 * Beside them, the same run encoded as before issue 9's item 2: every transition and every
 * read-model write holding the whole state. `steps` is the run's model and tool steps.
 */
export async function measureRunBytes(db: Db, runId: string, steps: number): Promise<RunBytes> {
  const stored = await db.collection('run_transitions').find({ runId }).sort({ version: 1 }).toArray();
  const readAgentVersion = createAgentVersionReader({ agentVersions: db.collection<{ _id: string }>(collections.agentVersions) });
  const folded = foldStoredTransitions(await Promise.all(stored.map((document) => resolveTransitionAgent(unpackTransition(document), readAgentVersion))));
  const bytes: RunBytes = { runId, steps, versions: stored.length, transitionBytes: 0, readModelBytes: 0, readModelWrites: 0, wholeTransitionBytes: 0, wholeReadModelBytes: 0, firstTransitionBytes: 0 };
  for (const [index, document] of stored.entries()) {
    const transition = folded[index]!;
    const writes = writesOf(transition);
    const storedBytes = size(document);
    bytes.transitionBytes += storedBytes;
    if (transition.version === 1) bytes.firstTransitionBytes = storedBytes;
    bytes.wholeTransitionBytes += size(encodeStoredKeys(transition));
    bytes.readModelWrites += writes;
    bytes.readModelBytes += writes * size(encodeStoredKeys(readModelDocument(transition, 1)));
    bytes.wholeReadModelBytes += writes * size(encodeStoredKeys({ ...transition.state, _id: runId, version: transition.version, lastSeq: 1, publishedVersion: transition.version }));
  }
  return bytes;
}

/** One line per run: bytes per step as stored, and as whole-state documents. */
export function describeRunBytes(runs: readonly RunBytes[]): string {
  const perStep = (total: number, steps: number) => `${Math.round(total / steps)} B`;
  return runs
    .map(
      (run) =>
        `${run.steps}-step run (${run.versions} transitions, ${run.readModelWrites} read-model writes): per step, transitions ${perStep(run.transitionBytes, run.steps)} ` +
        `(version 1 ${run.firstTransitionBytes} B, the others ${Math.round((run.transitionBytes - run.firstTransitionBytes) / Math.max(1, run.versions - 1))} B on average), read model ${perStep(run.readModelBytes, run.steps)}; ` +
        `as whole-state documents (before): transitions ${perStep(run.wholeTransitionBytes, run.steps)}, read model ${perStep(run.wholeReadModelBytes, run.steps)}`,
    )
    .join('; ');
}
