import { describe, expect, it } from 'vitest';
import { createKeyedQueue } from './keyed-queue.ts';

describe('the keyed queue', () => {
  it('hands a failed task\'s error to its caller and still runs the next task of the key', async () => {
    const queue = createKeyedQueue();
    const order: string[] = [];
    const failing = queue.run('run_1', async () => {
      order.push('first');
      throw new Error('commit failed');
    });
    const next = queue.run('run_1', async () => {
      order.push('second');
      return 2;
    });
    await expect(failing).rejects.toThrow('commit failed');
    await expect(next).resolves.toBe(2);
    expect(order).toEqual(['first', 'second']);
  });

  it('runs tasks of one key one after another and forgets the key when idle', async () => {
    const queue = createKeyedQueue();
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const order: string[] = [];
    const first = queue.run('run_1', async () => {
      await gate;
      order.push('first');
    });
    const second = queue.run('run_1', async () => order.push('second'));
    const other = queue.run('run_2', async () => order.push('other'));
    await other;
    expect(order).toEqual(['other']);
    release();
    await Promise.all([first, second]);
    expect(order).toEqual(['other', 'first', 'second']);
    await expect.poll(() => queue.size).toBe(0);
  });
});
