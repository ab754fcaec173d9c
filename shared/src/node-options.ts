import type { ServiceName } from './config.ts';

/**
 * The V8 heap flags each service runs with, wherever it is started (issue 9, docs/decisions.md
 * "Memory"): `npm start` and the test harness put them before the service's `main.ts`; the
 * images set them as `NODE_OPTIONS` in each service's stage of `deploy/Dockerfile`, which the
 * Compose file and the Kubernetes manifests run (`node-options.test.ts` checks the two agree).
 *
 * Left alone, V8 sizes its heap from the machine's memory, not from what a service needs: on a
 * 24 GiB host each busy service grew a ~110 MB young generation (64 MB semi-spaces) and let
 * garbage pile up in old space to ~4× its live heap before a full collection (the growth it
 * allows shrinks with the old-space limit), ~290 MB each at 50 runs in flight for a live heap
 * of ~45 MB.
 * - `--max-semi-space-size=4`: a young generation of at most 3 × 4 MB. At 2 MB the services
 *   spent ~10–20% more CPU per run (scavenging ten times as often); at 4 MB as much as with
 *   V8's default, within the noise of the measurement.
 * - `--max-old-space-size`: what a service may hold, and below its Kubernetes memory limit
 *   (512 MiB; the llm-worker 1 GiB, since it holds up to `LLM_CONCURRENCY` model requests of up
 *   to `LLM_REQUEST_MAX_BYTES`). ~8× the live heap measured at 50 runs in flight, so far from an
 *   out-of-memory crash, and low enough that V8 collects old space at ~1.3–1.5× live instead of 4×.
 */
export const serviceNodeOptions: Readonly<Record<ServiceName, readonly string[]>> = {
  gateway: ['--max-semi-space-size=4', '--max-old-space-size=384'],
  orchestrator: ['--max-semi-space-size=4', '--max-old-space-size=384'],
  'llm-worker': ['--max-semi-space-size=4', '--max-old-space-size=768'],
  'tool-worker': ['--max-semi-space-size=4', '--max-old-space-size=384'],
};

/**
 * The environment variables Node and glibc read in each service process, wherever it is started
 * (issue 9, docs/decisions.md "Memory"): `npm start` and the test harness add them to the
 * service's environment with `compileCacheDir` = `.abide/compile-cache`; the images set them in
 * the `app` stage of `deploy/Dockerfile` with a directory under `/tmp`, the one writable mount
 * (`node-options.test.ts` checks the two agree). Abide's own code reads neither.
 * - `NODE_COMPILE_CACHE`: Node keeps each module's type-stripped source and V8 code cache in this
 *   directory (written at a clean exit and once a service has started, `persistCompileCache`;
 *   keyed by the file and checked against its contents).
 *   A service started with a warm cache never loads Node's type stripper (a WASM module) and
 *   compiles less: ~25 MB less resident per service, and a faster start. A module that changed
 *   since is stripped again, as without the cache.
 * - `MALLOC_ARENA_MAX=2`: glibc gives each thread that allocates its own malloc arena, up to 8
 *   per core, and keeps freed memory in each; two hold less (measured: ~8 MB less per stack on
 *   2 cores, and no more CPU; docs/decisions.md "Memory").
 */
export function serviceProcessVariables(compileCacheDir: string): Readonly<Record<string, string>> {
  return { NODE_COMPILE_CACHE: compileCacheDir, MALLOC_ARENA_MAX: '2' };
}
