import { parentPort } from 'node:worker_threads';
import { createToolArgsValidator, ToolSchemaError } from './tool-args-validator.ts';

/**
 * The worker thread behind `createArgsValidation` (args-validation.ts): validates one job at a
 * time with its own validator cache. The main thread terminates it when a job overruns its time.
 */
export type ValidationJob = { id: number; tenantId: string; schema: Record<string, unknown>; args: unknown };
export type ValidationReply = { ready: true } | { id: number; problems: string[] } | { id: number; schemaError: { path: string; message: string } } | { id: number; failure: string };

const port = parentPort;
if (port) {
  const validator = createToolArgsValidator();
  port.on('message', (job: ValidationJob) => {
    let reply: ValidationReply;
    try {
      reply = { id: job.id, problems: validator.validate(job.tenantId, job.schema, job.args) };
    } catch (error) {
      // Converted into the reply: the main thread answers the request with it.
      reply =
        error instanceof ToolSchemaError
          ? { id: job.id, schemaError: { path: error.path, message: error.message } }
          : { id: job.id, failure: error instanceof Error ? error.message : String(error) };
    }
    port.postMessage(reply);
  });
  // Loading the modules takes a while: the main thread starts a job's clock only after this.
  port.postMessage({ ready: true } satisfies ValidationReply);
}
