import { describe, expect, it } from 'vitest';
import { createCrashPoints } from './crash-points.ts';

describe('crash points', () => {
  it('fires on the Nth hit of an armed point only, once', () => {
    const fired: string[] = [];
    const points = createCrashPoints('a.one@2, b.two', (name) => fired.push(name));
    points.hit('a.one');
    points.hit('c.other');
    expect(fired).toEqual([]);
    points.hit('a.one');
    points.hit('b.two');
    points.hit('a.one');
    expect(fired).toEqual(['a.one', 'b.two']);
  });

  it('is a no-op when nothing is armed, and refuses a bad spec', () => {
    expect(createCrashPoints(undefined).armed).toEqual([]);
    expect(() => createCrashPoints('x@0')).toThrow(/ABIDE_CRASH_POINTS/);
  });
});
