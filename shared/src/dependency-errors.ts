import {
  ClosedConnectionError,
  ConnectionError,
  DrainingConnectionError,
  NoRespondersError,
  RequestError,
  TimeoutError as NatsTimeoutError,
} from '@nats-io/transport-node';
import {
  MongoNetworkError,
  MongoNotConnectedError,
  MongoServerSelectionError,
  MongoTopologyClosedError,
} from 'mongodb';

/**
 * The error classes of an unreachable dependency (NATS or MongoDB), matched by class, not by
 * `error.name` (a name is a string anything can carry). `MongoNetworkError` covers its
 * `MongoNetworkTimeoutError` subclass and the pool-cleared error (not exported by the driver).
 */
const unavailableErrorClasses: readonly (abstract new (...args: never[]) => Error)[] = [
  MongoServerSelectionError,
  MongoNetworkError,
  MongoNotConnectedError,
  MongoTopologyClosedError,
  ClosedConnectionError,
  DrainingConnectionError,
  ConnectionError,
  NatsTimeoutError,
  RequestError,
  NoRespondersError,
];

/**
 * True when `error` says NATS or MongoDB is unreachable (a retry later may succeed), or is the
 * platform's `AbortSignal.timeout` reason (a `DOMException` named `TimeoutError`).
 */
export function isDependencyUnavailable(error: unknown): boolean {
  if (error instanceof DOMException) return error.name === 'TimeoutError';
  return unavailableErrorClasses.some((errorClass) => error instanceof errorClass);
}
