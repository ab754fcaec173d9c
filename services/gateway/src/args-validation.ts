import { ApiError } from '@abide/shared';
import { Worker } from 'node:worker_threads';
import type { ValidationJob, ValidationReply } from './args-validation-worker.ts';
import { createToolArgsValidator, ToolSchemaError, type ToolArgsValidatorOptions } from './tool-args-validator.ts';

export type ArgsValidationOptions = ToolArgsValidatorOptions & {
  /** Time one validation of edited args may take before its worker is terminated. @default 1000 */
  timeoutMs?: number;
  /** Validations waiting for the worker; beyond, `503 unavailable`. @default 256 */
  maxQueued?: number;
};

type Pending = { job: ValidationJob; resolve: (problems: string[]) => void; reject: (error: Error) => void };

/**
 * Tool schemas at the gateway (DESIGN §8: attacker input). `checkSchema` (at `PUT /v1/agents`)
 * compiles on the event loop: its cost is bounded by the schema limits. `validate` (edited
 * approval args) runs in a worker thread with a time limit: patterns are linear on RE2, but
 * other keywords can still cost more than linear time in the args (`uniqueItems` compares pairs;
 * `anyOf` over shared `$ref`s multiplies), so a validation that overruns `timeoutMs` has its
 * worker terminated and is answered `400 invalid_args`; the next one starts a fresh worker once
 * the terminated one has exited.
 * Jobs run one at a time, in order.
 */
export function createArgsValidation(options: ArgsValidationOptions = {}) {
  const timeoutMs = options.timeoutMs ?? 1_000;
  const maxQueued = options.maxQueued ?? 256;
  const schemas = createToolArgsValidator(options);
  const queue: Pending[] = [];
  let worker: Worker | undefined;
  /** Whether `worker` has loaded its modules (a job's time limit starts once it has). */
  let ready = false;
  let running: { pending: Pending; timer: NodeJS.Timeout } | undefined;
  /** The termination of an overrun worker, until it has exited: no other worker starts meanwhile. */
  let retiring: Promise<void> | undefined;
  let nextId = 1;
  let closed = false;

  function startWorker(): Worker {
    const started = new Worker(new URL('./args-validation-worker.ts', import.meta.url));
    started.unref();
    started.on('message', (reply: ValidationReply) => {
      if (worker !== started) return;
      if ('ready' in reply) {
        ready = true;
        pump();
      } else finish(reply);
    });
    started.on('error', (error) => fail(started, error));
    started.on('exit', (code) => fail(started, new Error(`the validation worker exited with code ${code}`)));
    return started;
  }

  /** The worker died (or was terminated): the running job fails, the next one gets a new worker. */
  function fail(which: Worker, error: Error): void {
    if (worker !== which) return;
    const booted = ready;
    worker = undefined;
    ready = false;
    // A worker that dies before it has loaded would die again: fail what waits instead of looping.
    if (!booted) for (const pending of queue.splice(0)) pending.reject(error);
    const current = running;
    running = undefined;
    if (current) {
      clearTimeout(current.timer);
      current.pending.reject(error);
    }
    pump();
  }

  function finish(reply: Exclude<ValidationReply, { ready: true }>): void {
    const current = running;
    if (!current || current.pending.job.id !== reply.id) return;
    clearTimeout(current.timer);
    running = undefined;
    if ('problems' in reply) current.pending.resolve(reply.problems);
    else if ('schemaError' in reply) current.pending.reject(new ToolSchemaError(reply.schemaError.path, reply.schemaError.message));
    else current.pending.reject(new Error(reply.failure));
    pump();
  }

  function pump(): void {
    if (running || closed || queue.length === 0) return;
    if (!worker) {
      // One worker thread at a time: a new one starts once the overrun one has exited. Node can
      // crash (SIGSEGV, in V8 creating the new isolate) when a worker starts while another is
      // being terminated (nodejs/node#56312, open); seen here 3 times in ~150 runs of the tests.
      if (retiring) return;
      worker = startWorker();
      ready = false;
    }
    if (!ready) return;
    const current = worker;
    const pending = queue.shift()!;
    const timer = setTimeout(() => {
      const overrun = running;
      if (overrun?.pending !== pending) return;
      running = undefined;
      worker = undefined;
      ready = false;
      pending.reject(new ApiError('invalid_args', `validating the arguments against the tool's input schema took longer than ${timeoutMs} ms`));
      // Terminating is the only way to stop a synchronous validation; its exit is ignored (no
      // longer `worker`). The next job waits for it to exit.
      const terminated: Promise<void> = current.terminate().then(
        () => undefined,
        () => undefined,
      );
      retiring = terminated;
      void terminated.then(() => {
        if (retiring === terminated) retiring = undefined;
        pump();
      });
    }, timeoutMs);
    running = { pending, timer };
    current.postMessage(pending.job);
  }

  return {
    /** A `ToolSchemaError` describing why `schema` cannot be used, or undefined when it can. */
    checkSchema: schemas.checkSchema,

    /** Problems with `args` under `schema` (empty when valid); rejects with a `ToolSchemaError`, or 400 `invalid_args` on overrun. */
    validate(tenantId: string, schema: Record<string, unknown>, args: unknown): Promise<string[]> {
      if (closed) return Promise.reject(new ApiError('unavailable', 'shutting down', { headers: { 'retry-after': '1' } }));
      if (queue.length >= maxQueued) return Promise.reject(new ApiError('unavailable', 'too many argument validations waiting; retry', { headers: { 'retry-after': '1' } }));
      return new Promise((resolve, reject) => {
        queue.push({ job: { id: nextId++, tenantId, schema, args }, resolve, reject });
        pump();
      });
    },

    async close(): Promise<void> {
      closed = true;
      const shuttingDown = () => new ApiError('unavailable', 'shutting down', { headers: { 'retry-after': '1' } });
      for (const pending of queue.splice(0)) pending.reject(shuttingDown());
      if (running) {
        clearTimeout(running.timer);
        running.pending.reject(shuttingDown());
        running = undefined;
      }
      const current = worker;
      worker = undefined;
      ready = false;
      await Promise.all([current?.terminate(), retiring]);
    },
  };
}
export type ArgsValidation = ReturnType<typeof createArgsValidation>;
