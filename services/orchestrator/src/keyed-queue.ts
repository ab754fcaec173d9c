/**
 * Serializes work per key inside one process (per-run serial processing): tasks with the same
 * key run one after another, tasks with different keys run concurrently.
 */
export function createKeyedQueue() {
  const tails = new Map<string, Promise<unknown>>();
  return {
    run<T>(key: string, task: () => Promise<T>): Promise<T> {
      const previous = tails.get(key) ?? Promise.resolve();
      const next = previous.then(task, task);
      // The tail only orders the next task of this key: the task's rejection reaches its caller
      // through `next` (returned below), so swallowing it here loses nothing, and a failed task
      // does not stop the ones queued after it.
      const tail = next.catch(() => undefined);
      tails.set(key, tail);
      void tail.then(() => {
        if (tails.get(key) === tail) tails.delete(key);
      });
      return next;
    },
    get size() {
      return tails.size;
    },
  };
}
export type KeyedQueue = ReturnType<typeof createKeyedQueue>;
