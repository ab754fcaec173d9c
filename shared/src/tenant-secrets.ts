/**
 * Tenant secrets (DESIGN §8, issue 8): the values an agent names in `apiKeyEnv` and
 * `headersFromEnv`. A name resolves only inside the calling tenant's namespace, never to a
 * service's own configuration:
 *
 *   TENANT_SECRETS_DIR/<tenantId>/<NAME>     one file per secret, a trailing newline trimmed
 *
 * the shape of one Kubernetes Secret per tenant mounted as a volume at `<dir>/<tenantId>`. Values
 * are read at call time (a short cache), so a rotated secret is used without a restart. An
 * invalid name, a missing file, a missing tenant directory, a file whose real path leaves the
 * tenant's directory (a symlink) and an unset `TENANT_SECRETS_DIR` all give the same final
 * `secret_not_found`, whose message names only the name the tenant wrote.
 */
import { open, realpath } from 'node:fs/promises';
import { join, sep } from 'node:path';
import { AbideError } from './errors.ts';

const tenantIdPattern = /^[A-Za-z0-9_-]{1,64}$/;
const secretNamePattern = /^[A-Z_][A-Z0-9_]{0,127}$/;
/** Largest secret read; a bigger file is not a secret of this scheme. */
const maxSecretBytes = 65_536;

/** The one error for every secret that cannot be used. */
export class SecretNotFoundError extends AbideError {
  override readonly name = 'SecretNotFoundError';
  constructor(secretName: string) {
    super('secret_not_found', `secret ${JSON.stringify(secretName.slice(0, 128))} not found for this tenant`, { retryable: false });
  }
}

export type TenantSecretsOptions = {
  /** `TENANT_SECRETS_DIR`; undefined means no tenant has any secret. */
  dir: string | undefined;
  /** How long a value read is reused. @default 10000 */
  ttlMs?: number;
  /** Values kept at most (the oldest go first). @default 1000 */
  maxCached?: number;
  now?: () => number;
};

export type TenantSecrets = {
  /** The value of `tenantId`'s secret `name`; throws `SecretNotFoundError` when it has none. */
  read(tenantId: string, name: string): Promise<string>;
};

export function createTenantSecrets(options: TenantSecretsOptions): TenantSecrets {
  const ttlMs = options.ttlMs ?? 10_000;
  const maxCached = options.maxCached ?? 1_000;
  const now = options.now ?? Date.now;
  const cache = new Map<string, { value: string; expiresAt: number }>();

  async function load(tenantId: string, name: string): Promise<string | undefined> {
    if (!options.dir || !tenantIdPattern.test(tenantId) || !secretNamePattern.test(name)) return undefined;
    let tenantDir: string;
    let file: string;
    try {
      tenantDir = await realpath(join(options.dir, tenantId));
      file = await realpath(join(tenantDir, name));
    } catch {
      // No such tenant directory or file (or unreadable): the same answer as an unknown name.
      return undefined;
    }
    if (!file.startsWith(`${tenantDir}${sep}`)) return undefined;
    let handle: Awaited<ReturnType<typeof open>> | undefined;
    try {
      handle = await open(file, 'r');
      const stats = await handle.stat();
      if (!stats.isFile() || stats.size > maxSecretBytes) return undefined;
      const value = (await handle.readFile('utf8')).replace(/\r?\n$/, '');
      return value === '' ? undefined : value;
    } catch {
      // Removed or unreadable between realpath and read: treated as missing, like any other.
      return undefined;
    } finally {
      await handle?.close();
    }
  }

  return {
    async read(tenantId, name) {
      const key = `${tenantId}/${name}`;
      const cached = cache.get(key);
      if (cached && cached.expiresAt > now()) return cached.value;
      cache.delete(key);
      const value = await load(tenantId, name);
      if (value === undefined) throw new SecretNotFoundError(name);
      if (cache.size >= maxCached) cache.delete(cache.keys().next().value!);
      cache.set(key, { value, expiresAt: now() + ttlMs });
      return value;
    },
  };
}
