// `@abide/shared/testing`: fixtures for unit tests, never exported by the package's index.
export { testRunState } from './run-state.ts';
export { startCapturedTracing, type ExportedSpan } from './tracing.ts';
export { memoryCollection, type MemoryCollection } from './memory-collection.ts';
