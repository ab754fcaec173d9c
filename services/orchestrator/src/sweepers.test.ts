import { describe, expect, it } from 'vitest';
import { maxSweepIntervalMs, nextSweepDelay, sweepDutyFactor } from './sweepers.ts';

describe('sweep pacing', () => {
  it('sweeps every interval while sweeps are fast', () => {
    expect(nextSweepDelay(2_000, 0)).toBe(2_000);
    expect(nextSweepDelay(2_000, 50)).toBe(2_000);
  });

  it('stretches the pause after a slow sweep (a collection scan on FerretDB), up to a cap', () => {
    expect(nextSweepDelay(2_000, 500)).toBe(500 * sweepDutyFactor);
    expect(nextSweepDelay(1_000, 30_000)).toBe(maxSweepIntervalMs);
  });

  it('never sweeps less often than a configured interval longer than the cap', () => {
    expect(nextSweepDelay(120_000, 10_000)).toBe(120_000);
  });
});
