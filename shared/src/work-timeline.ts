import type { Collections } from './mongo.ts';
import type { WorkItem } from './run-store.ts';

/** The kinds of work that fall due at a time (outbox items are due at once and live in `run_work`). */
export type TimelineKind = Exclude<WorkItem['kind'], 'outbox'>;

/** An entry of `work_timeline`: "the `kind` item of `runId` may be due in this slot" (the item itself decides). */
export type TimelineEntry = { _id: string; kind: TimelineKind; runId: string; tenantId: string; dueAt: string };

/** The width of a slot: items due within one slot are read together. */
export const timelineSlotMs = 2_000;
/**
 * A slot is read only this long after it ends, so that every write aimed at it has landed: a
 * writer whose insert completes more than `timelineLateMs` after the slot's end writes the entry
 * again into the current slot, and the difference covers the clocks of two replicas disagreeing.
 */
export const timelineGraceMs = 3_000;
export const timelineLateMs = 1_000;
/** Entries inserted per command. */
const maxInsertBatch = 256;
/** Entries read at once when a slot has some (each by exact `_id`). */
const readChunk = 8;

/** The slot a time (ms) falls in. */
export const timelineSlotOf = (ms: number) => Math.floor(ms / timelineSlotMs);
/** The first millisecond of `slot`. */
export const timelineSlotStart = (slot: number) => slot * timelineSlotMs;
const entryId = (kind: TimelineKind, slot: number, index: number) => `${kind}/${slot}/${index}`;
const cursorId = (kind: TimelineKind) => `${kind}/cursor`;

type Waiting = { item: WorkItem & { kind: TimelineKind }; resolve(): void; reject(error: unknown): void };
type SlotWriter = { slot: number; kind: TimelineKind; next: number; queue: Waiting[]; draining: boolean };

/**
 * When deadline and retention items fall due, found by exact `_id` only (issue 9, item 5:
 * FerretDB scans for any other filter, and the item lists grow with the live runs). Time is cut
 * into `timelineSlotMs` slots; an item due at `t` gets an entry `<kind>/<slot of t>/<n>` (an item
 * already due, the current slot), `n` counting up from 0 within the slot. A sweeper reads a slot
 * once it is over (plus `timelineGraceMs`): `<kind>/<slot>/0`, `1`, … until one is missing, so an
 * idle slot costs one `findOne`, and the work of a sweep follows the items falling due, never
 * the items waiting.
 *
 * The entry is only a pointer: the item (`run_deadlines`, `run_retention`) stays the truth, and
 * the sweeper acts only if it is still due when the entry is read. So an item moved later or
 * deleted leaves a stale entry that is skipped, and every write of an item with a new due time
 * writes an entry first (a crash between the two leaves a stale entry, never an item without one).
 *
 * Why a reader may stop at the first missing `n`: the numbers of a slot stay contiguous. A
 * process writes a slot's entries in batches, one batch at a time, the next batch starting after
 * the numbers the previous one found taken or took; an insert that found its number taken
 * (another replica's) is retried after them. When an insert fails, the entries above it in its
 * batch are reported failed too (their callers write again; an entry that landed there anyway is
 * a stale pointer) and the next batch starts at the failed number, so an entry reported written
 * always has every lower number of its slot before it. Readers delete a slot's entries, after
 * acting on all of them, highest first, so a reader racing a delete (or a crash during one) sees
 * a contiguous prefix whose items were already handled.
 */
export function createWorkTimeline(collections: Pick<Collections, 'workTimeline' | 'writes'>, options: { now?: () => number } = {}) {
  const now = options.now ?? Date.now;
  const writers = new Map<string, SlotWriter>();

  async function drain(writer: SlotWriter): Promise<void> {
    writer.draining = true;
    try {
      while (writer.queue.length > 0) {
        const batch = writer.queue.splice(0, maxInsertBatch);
        const start = writer.next;
        const outcomes = await Promise.allSettled(
          batch.map(({ item }, index) => collections.writes.workTimeline.insert({ _id: entryId(writer.kind, writer.slot, start + index), kind: item.kind, runId: item.runId, tenantId: item.tenantId, dueAt: item.dueAt })),
        );
        const firstFailure = outcomes.findIndex((outcome) => outcome.status === 'rejected');
        const kept = firstFailure === -1 ? batch.length : firstFailure;
        writer.next = start + kept;
        const taken: Waiting[] = [];
        const late = now() >= timelineSlotStart(writer.slot + 1) + timelineLateMs;
        batch.forEach((waiting, index) => {
          const outcome = outcomes[index]!;
          if (index >= kept) {
            waiting.reject(outcome.status === 'rejected' ? outcome.reason : new Error(`a lower timeline entry of slot ${writer.slot} failed`));
          } else if (outcome.status === 'fulfilled' && outcome.value === 'duplicate') {
            taken.push(waiting);
          } else if (late) {
            // Landed after a reader may have read the slot: written again, into the current slot.
            schedule(waiting.item).then(waiting.resolve, waiting.reject);
          } else {
            waiting.resolve();
          }
        });
        writer.queue.unshift(...taken);
      }
    } finally {
      writer.draining = false;
      forgetOldWriters();
    }
  }

  /**
   * Slots long over keep no writer, nor any idle one past 10,000 writers (their next number is
   * only a cache: a new writer finds it again by duplicates).
   */
  function forgetOldWriters() {
    if (writers.size < 64) return;
    const oldest = writers.size > 10_000 ? Number.POSITIVE_INFINITY : timelineSlotOf(now()) - 60;
    for (const [key, writer] of writers) if (!writer.draining && writer.queue.length === 0 && writer.slot < oldest) writers.delete(key);
  }

  /** Writes the entry of `item` (resolves once it landed; call before writing the item itself). */
  function schedule(item: WorkItem & { kind: TimelineKind }): Promise<void> {
    const slot = timelineSlotOf(Math.max(Date.parse(item.dueAt), now()));
    const key = `${item.kind}/${slot}`;
    let writer = writers.get(key);
    if (!writer) {
      writer = { slot, kind: item.kind, next: 0, queue: [], draining: false };
      writers.set(key, writer);
    }
    const current = writer;
    return new Promise<void>((resolve, reject) => {
      current.queue.push({ item, resolve, reject });
      if (!current.draining) void drain(current);
    });
  }

  return {
    schedule,

    /** The entries of `slot`, in order (one `findOne` when it has none). */
    async read(kind: TimelineKind, slot: number): Promise<TimelineEntry[]> {
      const first = await collections.workTimeline.findOne({ _id: entryId(kind, slot, 0) });
      if (!first) return [];
      const found = [first as unknown as TimelineEntry];
      for (;;) {
        const chunk = await Promise.all(Array.from({ length: readChunk }, (_, index) => collections.workTimeline.findOne({ _id: entryId(kind, slot, found.length + index) })));
        for (const entry of chunk) {
          if (!entry) return found;
          found.push(entry as unknown as TimelineEntry);
        }
      }
    },

    /** Deletes the first `count` entries of `slot`, highest first, in one ordered command. */
    async clear(kind: TimelineKind, slot: number, count: number): Promise<void> {
      if (count === 0) return;
      const ids = Array.from({ length: count }, (_, index) => entryId(kind, slot, count - 1 - index));
      await collections.workTimeline.bulkWrite(ids.map((_id) => ({ deleteOne: { filter: { _id } } })), { ordered: true });
    },

    /** The first slot not yet known to be handled (written by sweepers), or null before any sweep. */
    async readCursor(kind: TimelineKind): Promise<number | null> {
      const cursor = await collections.workTimeline.findOne({ _id: cursorId(kind) });
      return cursor && typeof cursor.slot === 'number' ? cursor.slot : null;
    },

    /** Records that every slot before `slot` was handled (by `_id`; a race may move it back, which only re-reads slots). */
    async writeCursor(kind: TimelineKind, slot: number): Promise<void> {
      await collections.writes.workTimeline.replace({ _id: cursorId(kind), kind, slot }, { upsert: true });
    },
  };
}
export type WorkTimeline = ReturnType<typeof createWorkTimeline>;
