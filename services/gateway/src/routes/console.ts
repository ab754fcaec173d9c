import { ApiError, consoleAssetParamsSchema } from '@abide/shared';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { extname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance, FastifyReply } from 'fastify';
import type { ZodTypeProvider } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { emptyResponse, errorResponses, textResponse } from '../openapi.ts';
import type { RouteConfig } from './route-context.ts';

/** Where `npm run build -w console` writes the console (built, not committed: see docs/decisions.md). */
export const defaultConsoleDirectory = fileURLToPath(new URL('../../../../console/dist/', import.meta.url));

/**
 * No inline script or style, nothing from another origin: the page's own hashed assets, its API
 * calls and its WebSocket (`'self'` covers `ws:`/`wss:` to the same host in CSP 3).
 */
export const consoleContentSecurityPolicy = [
  "default-src 'none'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data:",
  "connect-src 'self'",
  "base-uri 'none'",
  "form-action 'none'",
  "frame-ancestors 'none'",
].join('; ');

const contentTypes: Record<string, string> = {
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.ico': 'image/x-icon',
};

const assetNamePattern = /^[A-Za-z0-9_.-]{1,128}$/;

type Asset = { body: Buffer; contentType: string };

/** Reads the built console into memory once (a few tens of KiB); null when it was never built. */
function loadConsole(directory: string): { index: Buffer; assets: Map<string, Asset> } | null {
  const indexPath = join(directory, 'index.html');
  if (!existsSync(indexPath)) return null;
  const assets = new Map<string, Asset>();
  const assetDirectory = join(directory, 'assets');
  for (const name of existsSync(assetDirectory) ? readdirSync(assetDirectory) : []) {
    const contentType = contentTypes[extname(name)];
    if (contentType && assetNamePattern.test(name)) assets.set(name, { body: readFileSync(join(assetDirectory, name)), contentType });
  }
  return { index: readFileSync(indexPath), assets };
}

function securityHeaders(reply: FastifyReply): FastifyReply {
  return reply.headers({
    'content-security-policy': consoleContentSecurityPolicy,
    'x-content-type-options': 'nosniff',
    'referrer-policy': 'no-referrer',
    'x-frame-options': 'DENY',
  });
}

/**
 * `GET /console` (DESIGN §7): the web console, a static page that uses only the public API.
 * `index.html` is `no-cache` (it names the current assets); assets carry a content hash in their
 * names and are cached for a year.
 */
export function registerConsoleRoutes(app: FastifyInstance, options: { directory?: string } = {}): void {
  const built = loadConsole(options.directory ?? defaultConsoleDirectory);
  const notBuilt = () => new ApiError('not_found', 'the console is not built (npm run build -w console)');

  // Public (static files; the page calls the API with the key the user types in).
  const config = { public: true } satisfies RouteConfig;
  const routes = app.withTypeProvider<ZodTypeProvider>();
  routes.get(
    '/console',
    { config, schema: { summary: 'The web console (HTML; no-cache)', response: { 200: textResponse('the console page', 'text/html'), ...errorResponses(404) } } },
    async (_request, reply) => {
      if (!built) throw notBuilt();
      return securityHeaders(reply).header('cache-control', 'no-cache').type('text/html; charset=utf-8').send(built.index);
    },
  );

  routes.get('/console/', { config, schema: { summary: 'Redirects to /console', response: { 301: emptyResponse('to /console') } } }, async (_request, reply) => reply.redirect('/console', 301));

  const assetSchema = {
    summary: "The console's content-hashed assets (cached for a year)",
    params: consoleAssetParamsSchema,
    response: {
      200: { description: 'a built asset (JavaScript, CSS, images)', content: Object.fromEntries(Object.values(contentTypes).map((type) => [type.split(';')[0]!, { schema: z.string() }])) },
      ...errorResponses(404),
    },
  };
  routes.get('/console/assets/:name', { config, schema: assetSchema }, async (request, reply) => {
    if (!built) throw notBuilt();
    const { name } = request.params;
    const asset = built.assets.get(name);
    if (!asset) throw new ApiError('not_found', `no console asset ${name.slice(0, 128)}`);
    return securityHeaders(reply).header('cache-control', 'public, max-age=31536000, immutable').type(asset.contentType).send(asset.body);
  });
}
