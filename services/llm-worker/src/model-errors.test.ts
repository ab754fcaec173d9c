import { APICallError, InvalidResponseDataError } from 'ai';
import { describe, expect, it } from 'vitest';
import { AbideError } from '@abide/shared';
import { classifyModelError, retryAfterFrom } from './model-errors.ts';

const options = { maxRetryAfterMs: 60_000 };

function apiError(statusCode: number | undefined, headers?: Record<string, string>) {
  return new APICallError({
    message: 'failed',
    url: 'http://model/v1/chat/completions',
    requestBodyValues: {},
    ...(statusCode === undefined ? {} : { statusCode }),
    ...(headers ? { responseHeaders: headers } : {}),
  });
}

describe('classifyModelError', () => {
  it.each([429, 408, 500, 502, 503, 529])('HTTP %i is transient', (status) => {
    expect(classifyModelError(apiError(status), options).retryable).toBe(true);
  });

  it.each([400, 401, 403, 404, 422])('HTTP %i is final', (status) => {
    const failure = classifyModelError(apiError(status), options);
    expect(failure.retryable).toBe(false);
    expect(failure.message).toBe(`HTTP ${status} from http://model:80`);
  });

  it('uses Retry-After (seconds), capped', () => {
    expect(classifyModelError(apiError(429, { 'retry-after': '3' }), options).retryAfterMs).toBe(3_000);
    expect(classifyModelError(apiError(429, { 'Retry-After': '3600' }), options).retryAfterMs).toBe(60_000);
    expect(classifyModelError(apiError(503, { 'retry-after-ms': '250' }), options).retryAfterMs).toBe(250);
    expect(classifyModelError(apiError(503), options).retryAfterMs).toBeUndefined();
  });

  it('reads an HTTP-date Retry-After', () => {
    const inTenSeconds = new Date(Date.now() + 10_000).toUTCString();
    const ms = retryAfterFrom({ 'retry-after': inTenSeconds }, 60_000)!;
    expect(ms).toBeGreaterThan(8_000);
    expect(ms).toBeLessThanOrEqual(10_000);
  });

  it('treats network errors as transient', () => {
    const refused = Object.assign(new Error('connect ECONNREFUSED'), { code: 'ECONNREFUSED' });
    const origin = { ...options, origin: 'http://10.0.0.5:6379' };
    expect(classifyModelError(new TypeError('fetch failed', { cause: refused }), origin)).toMatchObject({ retryable: true, message: 'could not reach http://10.0.0.5:6379' });
    expect(classifyModelError(new TypeError('terminated'), origin)).toMatchObject({ retryable: true, message: 'could not reach http://10.0.0.5:6379' });
  });

  it('gives every connection failure the same message, with no errno or body', () => {
    const unreachable = (cause: Error) => new APICallError({ message: `Cannot connect to API: ${cause.message}`, url: 'http://10.0.0.5:6379/chat/completions', requestBodyValues: {}, cause, isRetryable: true });
    const refused = classifyModelError(unreachable(Object.assign(new Error('connect ECONNREFUSED 10.0.0.5:6379'), { code: 'ECONNREFUSED' })), options);
    const notHttp = classifyModelError(unreachable(new Error('Response does not match the HTTP/1.1 protocol (Expected HTTP/)')), options);
    expect(refused).toMatchObject({ retryable: true, message: 'could not reach http://10.0.0.5:6379' });
    expect(notHttp.message).toBe(refused.message);
    const withBody = new APICallError({ message: 'Unauthorized', url: 'http://model/v1', requestBodyValues: {}, statusCode: 401, responseBody: 'internal secret page' });
    const failure = classifyModelError(withBody, options);
    expect(failure.message).toBe('HTTP 401 from http://model:80');
    expect(failure.message).not.toContain('internal secret page');
    expect(failure.detail).toContain('internal secret page');
  });

  it('treats a stream cut off before its finish as transient, other bad data as final', () => {
    expect(classifyModelError(new InvalidResponseDataError({ data: undefined, message: 'Response stream ended without a finish reason.' }), options).retryable).toBe(true);
    expect(classifyModelError(new InvalidResponseDataError({ data: {}, message: 'Expected function.name' }), options).retryable).toBe(false);
  });

  it('reads provider error objects sent inside the stream', () => {
    expect(classifyModelError({ message: 'Overloaded', type: 'overloaded_error' }, options).retryable).toBe(true);
    expect(classifyModelError({ message: 'bad tool schema', type: 'invalid_request_error' }, options)).toEqual({
      retryable: false,
      code: 'model_error',
      message: 'the model server reported an error: invalid_request_error',
      detail: 'invalid_request_error bad tool schema',
    });
  });

  it('keeps an AbideError as it is', () => {
    expect(classifyModelError(new AbideError('model_error', 'no key', { retryable: false }), options)).toEqual({ retryable: false, code: 'model_error', message: 'no key' });
    expect(classifyModelError(new AbideError('secret_not_found', 'secret "K" not found for this tenant'), options)).toMatchObject({ retryable: false, code: 'secret_not_found' });
  });

  it('treats unknown errors as final', () => {
    expect(classifyModelError(new Error('the model called unknown tool "x"'), options).retryable).toBe(false);
  });
});
