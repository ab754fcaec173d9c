import { MongoBulkWriteError, type AnyBulkWriteOperation } from 'mongodb';

/**
 * An in-memory collection with what the stores use: by-`_id` reads (projections ignored),
 * inserts that refuse a duplicate `_id`, and the `bulkWrite` the write batcher sends (per-write
 * duplicate errors by index, the other writes applied; `$min` / `$set` updates by `_id`).
 * `reads` lists every `_id` read, in order.
 */
export function memoryCollection() {
  const documents = new Map<string, Record<string, unknown>>();
  const reads: string[] = [];
  return {
    documents,
    reads,
    async findOne(filter: { _id: string }) {
      reads.push(filter._id);
      const found = documents.get(filter._id);
      return found ? structuredClone(found) : null;
    },
    /** Documents whose fields equal every field of `filter` (what a scan finds). */
    find(filter: Record<string, unknown>) {
      const found = [...documents.values()].filter((document) => Object.entries(filter).every(([field, value]) => document[field] === value));
      return { toArray: async () => structuredClone(found) };
    },
    async insertOne(document: { _id: string }) {
      if (documents.has(document._id)) throw Object.assign(new Error('E11000 duplicate key'), { code: 11000 });
      documents.set(document._id, structuredClone(document));
      return { acknowledged: true };
    },
    async replaceOne(filter: { _id: string }, document: Record<string, unknown>) {
      if (!documents.has(filter._id)) return { matchedCount: 0 };
      documents.set(filter._id, structuredClone(document));
      return { matchedCount: 1 };
    },
    async bulkWrite(operations: AnyBulkWriteOperation<{ _id: string }>[]) {
      const writeErrors: { index: number; code: number; errmsg: string }[] = [];
      operations.forEach((operation, index) => {
        if ('insertOne' in operation) {
          const document = operation.insertOne.document as { _id: string };
          if (documents.has(document._id)) writeErrors.push({ index, code: 11000, errmsg: 'E11000 duplicate key' });
          else documents.set(document._id, structuredClone(document));
        } else if ('replaceOne' in operation) {
          const id = String(operation.replaceOne.filter._id);
          if (documents.has(id) || operation.replaceOne.upsert) documents.set(id, { ...structuredClone(operation.replaceOne.replacement), _id: id });
        } else if ('updateOne' in operation) {
          const id = String(operation.updateOne.filter._id);
          const update = operation.updateOne.update as { $min?: Record<string, string>; $set?: Record<string, unknown> };
          const stored = documents.get(id);
          if (!stored && !operation.updateOne.upsert) return;
          const next: Record<string, unknown> = { ...stored, _id: id, ...update.$set };
          for (const [field, value] of Object.entries(update.$min ?? {})) if (next[field] === undefined || value < String(next[field])) next[field] = value;
          documents.set(id, next);
        } else if ('deleteOne' in operation) {
          documents.delete(String(operation.deleteOne.filter._id));
        }
      });
      if (writeErrors.length > 0) throw Object.assign(Object.create(MongoBulkWriteError.prototype) as MongoBulkWriteError, { writeErrors });
      return {};
    },
  };
}
export type MemoryCollection = ReturnType<typeof memoryCollection>;
