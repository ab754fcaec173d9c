import { z } from 'zod';
import { errorBodySchema } from './api.ts';

/** The gateway's operational answers (DESIGN §7): probes, the OpenAPI document, the console's files. */

/** `GET /healthz`: the process runs. */
export const healthResponseSchema = z.object({ status: z.literal('ok') });

/** `GET /readyz` when ready: each dependency's check. */
export const readinessResponseSchema = z.object({ status: z.literal('ready'), checks: z.record(z.string(), z.boolean()) });

/** `GET /readyz` when not ready (503 `unavailable`): the error, each check, and whether the process is draining. */
export const notReadyBodySchema = errorBodySchema.extend({ checks: z.record(z.string(), z.boolean()), draining: z.boolean() });

/** `GET /openapi.json`: an OpenAPI 3.1 document (its own standard defines the rest). */
export const openApiDocumentSchema = z.looseObject({ openapi: z.string(), info: z.looseObject({}), paths: z.record(z.string(), z.unknown()) });

/** `GET /console/assets/:name`: a content-hashed file name of the built console. */
export const consoleAssetParamsSchema = z.object({ name: z.string().min(1) }).strict();
