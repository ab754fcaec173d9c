/**
 * `@abide/shared/mongo`: the helpers that load the MongoDB driver (the client, the collections
 * with their write batchers, the indexes, and `isDependencyUnavailable`, which matches the
 * driver's error classes). Apart from the package's index so that a service that never talks to
 * MongoDB (the workers) does not load the driver: importing it costs each process ~10 MB (issue 9).
 */
export * from './dependency-errors.ts';
export * from './mongo.ts';
export * from './write-batcher.ts';
