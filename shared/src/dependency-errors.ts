import {
  ClosedConnectionError,
  ConnectionError,
  DrainingConnectionError,
  NoRespondersError,
  RequestError,
  TimeoutError as NatsTimeoutError,
} from '@nats-io/transport-node';
import { JetStreamApiError } from '@nats-io/jetstream';
// The library's error classes; `JetStreamNotEnabled` is exported only from its internal entry point.
import { jserrors } from '@nats-io/jetstream/internal';
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
  // nats.js's "no responders" on a JetStream API subject: no stream or meta leader yet (an election).
  jserrors.JetStreamNotEnabled,
];

/**
 * True when `error` says NATS (JetStream included) or MongoDB is unreachable (a retry later may succeed), or is the
 * platform's `AbortSignal.timeout` reason (a `DOMException` named `TimeoutError`).
 */
export function isDependencyUnavailable(error: unknown): boolean {
  if (error instanceof DOMException) return error.name === 'TimeoutError';
  // JetStream answering 503 ("JetStream system temporarily unavailable" while a cluster elects a leader).
  if (error instanceof JetStreamApiError && error.status === 503) return true;
  return unavailableErrorClasses.some((errorClass) => error instanceof errorClass);
}
