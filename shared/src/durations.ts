import { z } from 'zod';

const units: Record<string, number> = { ms: 1, s: 1_000, m: 60_000, h: 3_600_000, d: 86_400_000 };

/** Parses a duration such as `500ms`, `10s`, `10m`, `2h`, `7d` (or a bare number of milliseconds) into milliseconds. */
export function parseDuration(text: string): number {
  const match = /^(\d+(?:\.\d+)?)(ms|s|m|h|d)?$/.exec(text.trim());
  if (!match) throw new Error(`not a duration: "${text}" (expected e.g. 500ms, 10s, 10m, 2h, 7d)`);
  const value = Number(match[1]) * units[match[2] ?? 'ms']!;
  if (!Number.isFinite(value)) throw new Error(`duration out of range: "${text}"`);
  return Math.round(value);
}

/** A zod schema for an environment variable holding a duration; outputs milliseconds. */
export const durationSchema = z.string().transform((text, context) => {
  try {
    return parseDuration(text);
  } catch (error) {
    context.addIssue({ code: 'custom', message: (error as Error).message });
    return z.NEVER;
  }
});
