import { httpStatusByCode } from '@abide/shared';
import { describe, expect, it } from 'vitest';
import { errorCodeGuide, exitCodes, fromApiError } from './errors.ts';

describe('CLI errors', () => {
  it('has a message and an exit code for every public API error code', () => {
    expect(Object.keys(errorCodeGuide).sort()).toEqual(Object.keys(httpStatusByCode).sort());
  });

  it('maps API errors to the documented exit codes', () => {
    expect(fromApiError(401, 'unauthorized', 'missing or unknown API key')).toMatchObject({ exitCode: exitCodes.unauthorized, message: expect.stringContaining('ABIDE_API_KEY') });
    expect(fromApiError(404, 'run_not_found', 'run x not found').exitCode).toBe(exitCodes.notFound);
    expect(fromApiError(409, 'conversation_busy', 'busy').exitCode).toBe(exitCodes.conflict);
    expect(fromApiError(503, 'unavailable', 'draining').exitCode).toBe(exitCodes.unavailable);
    expect(fromApiError(502, undefined, 'Bad Gateway').exitCode).toBe(exitCodes.unavailable);
  });
});
