import { NoRespondersError, RequestError, TimeoutError } from '@nats-io/transport-node';
import { MongoNetworkError, MongoNetworkTimeoutError, MongoNotConnectedError } from 'mongodb';
import { describe, expect, it } from 'vitest';
import { isDependencyUnavailable } from './dependency-errors.ts';

describe('isDependencyUnavailable', () => {
  it('recognises the NATS and MongoDB errors of an unreachable dependency by their class', () => {
    for (const error of [
      new MongoNetworkError('connection reset'),
      new MongoNetworkTimeoutError('timed out'),
      new MongoNotConnectedError('not connected'),
      new NoRespondersError('abide.x'),
      new RequestError('request failed'),
      new TimeoutError(),
      AbortSignal.timeout(0).reason ?? new DOMException('timed out', 'TimeoutError'),
    ]) {
      expect(isDependencyUnavailable(error), String(error)).toBe(true);
    }
  });

  it('does not trust a name: an Error that only calls itself a Mongo or NATS error is not one', () => {
    for (const name of ['MongoServerSelectionError', 'MongoNetworkError', 'ConnectionError', 'TimeoutError', 'NoRespondersError']) {
      expect(isDependencyUnavailable(Object.assign(new Error('x'), { name })), name).toBe(false);
    }
    expect(isDependencyUnavailable(new DOMException('aborted', 'AbortError'))).toBe(false);
    expect(isDependencyUnavailable('MongoNetworkError')).toBe(false);
    expect(isDependencyUnavailable(null)).toBe(false);
  });
});
