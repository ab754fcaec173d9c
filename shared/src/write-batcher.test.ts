import { describe, expect, it } from 'vitest';
import { MongoBulkWriteError, type AnyBulkWriteOperation, type Collection, type Document } from 'mongodb';
import { createWriteBatcher } from './write-batcher.ts';

type Stored = Document & { _id: string };

/**
 * A collection whose `bulkWrite` is held until the test releases it, with the semantics the
 * batcher relies on (per-write errors by index in a MongoBulkWriteError, the others applied).
 */
function heldCollection() {
  const documents = new Map<string, Document>();
  const calls: AnyBulkWriteOperation<Stored>[][] = [];
  const releases: (() => void)[] = [];
  let failWhole: Error | undefined;
  const collection = {
    async bulkWrite(operations: AnyBulkWriteOperation<Stored>[], options: { ordered: boolean }) {
      expect(options.ordered).toBe(false);
      calls.push(operations);
      await new Promise<void>((resolve) => releases.push(resolve));
      if (failWhole) {
        const error = failWhole;
        failWhole = undefined;
        throw error;
      }
      const writeErrors: { index: number; code: number; errmsg: string }[] = [];
      operations.forEach((operation, index) => {
        if ('insertOne' in operation) {
          const document = operation.insertOne.document as Stored;
          if (document.body === 'poison') writeErrors.push({ index, code: 2, errmsg: 'bad document' });
          else if (documents.has(document._id)) writeErrors.push({ index, code: 11000, errmsg: 'duplicate key' });
          else documents.set(document._id, document);
        } else if ('replaceOne' in operation) {
          documents.set(String(operation.replaceOne.filter._id), { ...operation.replaceOne.replacement, _id: operation.replaceOne.filter._id });
        } else if ('updateOne' in operation) {
          // The conditional upsert of conversation heads: `_id`, and `$lt` on one other field.
          const { _id, ...rest } = operation.updateOne.filter as Document;
          const existing = documents.get(String(_id));
          const matches = existing !== undefined && Object.entries(rest).every(([field, condition]) => (existing[field] as number) < (condition as { $lt: number }).$lt);
          const set = (operation.updateOne.update as { $set: Document }).$set;
          if (matches) documents.set(String(_id), { ...existing, ...set });
          else if (existing) writeErrors.push({ index, code: 11000, errmsg: 'duplicate key' });
          else if (operation.updateOne.upsert) documents.set(String(_id), { ...set, _id });
        } else if ('deleteOne' in operation) {
          documents.delete(String(operation.deleteOne.filter._id));
        }
      });
      if (writeErrors.length > 0) throw Object.assign(Object.create(MongoBulkWriteError.prototype) as MongoBulkWriteError, { writeErrors });
      return {};
    },
  };
  return {
    collection: collection as unknown as Collection<Stored>,
    documents,
    calls,
    async releaseNext() {
      while (releases.length === 0) await new Promise((resolve) => setImmediate(resolve));
      releases.shift()!();
    },
    /** The next batch to be released fails as a whole. */
    failNextWith(error: Error) {
      failWhole = error;
    },
  };
}

describe('write batcher (group commit)', () => {
  it('sends a lone write at once, and the writes issued meanwhile together in the next batch', async () => {
    const held = heldCollection();
    const batcher = createWriteBatcher(held.collection);
    const first = batcher.insert({ _id: 'a', body: 1 });
    await held.releaseNext();
    expect(await first).toBe('ok');
    expect(held.calls.map((call) => call.length)).toEqual([1]);

    const second = batcher.insert({ _id: 'b', body: 1 });
    await new Promise((resolve) => setImmediate(resolve)); // lets `b` go out (nothing is in flight)
    const queued = [batcher.insert({ _id: 'c', body: 1 }), batcher.replace({ _id: 'a', body: 2 }, { upsert: true }), batcher.delete('x')];
    expect(held.calls.map((call) => call.length)).toEqual([1, 1]);
    await held.releaseNext();
    await held.releaseNext();
    expect(await Promise.all([second, ...queued])).toEqual(['ok', 'ok', 'ok', 'ok']);
    expect(held.calls.map((call) => call.length)).toEqual([1, 1, 3]);
    expect(held.documents.get('a')).toEqual({ _id: 'a', body: 2 });
  });

  it('sends the writes issued in one synchronous turn together, and at once', async () => {
    const held = heldCollection();
    const batcher = createWriteBatcher(held.collection);
    const writes = [batcher.insert({ _id: 'lock', body: 1 }), batcher.insert({ _id: 'slot', body: 1 })];
    await held.releaseNext();
    expect(await Promise.all(writes)).toEqual(['ok', 'ok']);
    expect(held.calls.map((call) => call.length)).toEqual([2]);
  });

  it('gives each write its own outcome: a duplicate decides only its race, a bad write fails only itself', async () => {
    const held = heldCollection();
    const batcher = createWriteBatcher(held.collection);
    held.documents.set('taken', { _id: 'taken' });
    const blocker = batcher.insert({ _id: 'first', body: 1 });
    await new Promise((resolve) => setImmediate(resolve)); // `first` goes out alone (nothing is in flight)
    const results = [batcher.insert({ _id: 'taken', body: 1 }), batcher.insert({ _id: 'free', body: 1 }), batcher.insert({ _id: 'bad', body: 'poison' })].map((promise) =>
      promise.then(
        (value) => value,
        (error: Error & { code?: number }) => `rejected: ${error.message} (${error.code})`,
      ),
    );
    await held.releaseNext();
    await held.releaseNext();
    await blocker;
    expect(await Promise.all(results)).toEqual(['duplicate', 'ok', 'rejected: bad document (2)']);
    expect(held.documents.has('free')).toBe(true);
  });

  it('never puts two writes to one _id in the same batch (an unordered batch may apply them in any order)', async () => {
    const held = heldCollection();
    const batcher = createWriteBatcher(held.collection);
    const blocker = batcher.insert({ _id: 'other', body: 0 });
    await new Promise((resolve) => setImmediate(resolve)); // `other` goes out alone (nothing is in flight)
    const writes = [batcher.replace({ _id: 'deadline:r', dueAt: 1 }, { upsert: true }), batcher.delete('deadline:r'), batcher.replace({ _id: 'deadline:r', dueAt: 2 }, { upsert: true })];
    for (let index = 0; index < 4; index += 1) await held.releaseNext();
    await Promise.all([blocker, ...writes]);
    expect(held.calls.map((call) => call.length)).toEqual([1, 1, 1, 1]);
    expect(held.documents.get('deadline:r')).toEqual({ _id: 'deadline:r', dueAt: 2 });
  });

  it('fails every write of a batch whose command failed, and goes on with the next batch', async () => {
    const held = heldCollection();
    const batcher = createWriteBatcher(held.collection);
    const blocker = batcher.insert({ _id: 'first', body: 1 });
    await new Promise((resolve) => setImmediate(resolve)); // `first` goes out alone (nothing is in flight)
    const failed = [batcher.insert({ _id: 'a', body: 1 }), batcher.insert({ _id: 'b', body: 1 })].map((promise) => promise.catch((error: Error) => error.message));
    await held.releaseNext();
    expect(await blocker).toBe('ok');
    held.failNextWith(new Error('connection reset'));
    await held.releaseNext();
    expect(await Promise.all(failed)).toEqual(['connection reset', 'connection reset']);
    const after = batcher.insert({ _id: 'c', body: 1 });
    await held.releaseNext();
    expect(await after).toBe('ok');
    expect(held.calls.map((call) => call.length)).toEqual([1, 2, 1]);
  });

  it('sends conditional upserts of several documents in one batch, each with its own outcome (a document that does not match stands)', async () => {
    const held = heldCollection();
    const batcher = createWriteBatcher(held.collection);
    const blocker = batcher.insert({ _id: 'first', body: 1 });
    await new Promise((resolve) => setImmediate(resolve));
    const upsert = (id: string, at: number) => batcher.update(id, { $set: { at } }, { upsert: true, filter: { at: { $lt: at } } });
    const outcomes = [upsert('new', 5), upsert('older', 7), upsert('newer', 3)];
    held.documents.set('older', { _id: 'older', at: 6 });
    held.documents.set('newer', { _id: 'newer', at: 4 });
    await held.releaseNext();
    await blocker;
    await held.releaseNext();
    expect(await Promise.all(outcomes)).toEqual(['ok', 'ok', 'duplicate']);
    expect(held.calls[1]!.map((operation) => ('updateOne' in operation ? operation.updateOne.filter : null))).toEqual([
      { at: { $lt: 5 }, _id: 'new' },
      { at: { $lt: 7 }, _id: 'older' },
      { at: { $lt: 3 }, _id: 'newer' },
    ]);
    expect([...held.documents.values()].filter((document) => document._id !== 'first')).toEqual([
      { _id: 'older', at: 7 },
      { _id: 'newer', at: 4 },
      { at: 5, _id: 'new' },
    ]);
  });
});
