import { mkdirSync, mkdtempSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { createTenantSecrets, SecretNotFoundError } from './tenant-secrets.ts';

function secretsDir() {
  const dir = mkdtempSync(join(tmpdir(), 'abide-secrets-'));
  mkdirSync(join(dir, 'tenant-a'));
  mkdirSync(join(dir, 'tenant-b'));
  writeFileSync(join(dir, 'tenant-a', 'CRM_TOKEN'), 'crm-a\n');
  writeFileSync(join(dir, 'tenant-b', 'OTHER'), 'b');
  writeFileSync(join(dir, 'outside'), 'not a tenant secret');
  symlinkSync(join(dir, 'tenant-a', 'CRM_TOKEN'), join(dir, 'tenant-b', 'STOLEN'));
  symlinkSync(join(dir, 'outside'), join(dir, 'tenant-b', 'ESCAPE'));
  return dir;
}

async function failureOf(promise: Promise<unknown>) {
  const error = await promise.catch((caught: unknown) => caught);
  expect(error).toBeInstanceOf(SecretNotFoundError);
  return { code: (error as SecretNotFoundError).code, message: (error as SecretNotFoundError).message, retryable: (error as SecretNotFoundError).retryable };
}

describe('tenant secrets', () => {
  it('reads <dir>/<tenant>/<NAME>, trimming the trailing newline', async () => {
    const secrets = createTenantSecrets({ dir: secretsDir() });
    expect(await secrets.read('tenant-a', 'CRM_TOKEN')).toBe('crm-a');
  });

  it('answers every unusable name with the same error naming only the name', async () => {
    const dir = secretsDir();
    const secrets = createTenantSecrets({ dir });
    const expected = { code: 'secret_not_found', message: 'secret "CRM_TOKEN" not found for this tenant', retryable: false };
    expect(await failureOf(secrets.read('tenant-b', 'CRM_TOKEN'))).toEqual(expected); // another tenant's
    expect(await failureOf(secrets.read('tenant-c', 'CRM_TOKEN'))).toEqual(expected); // no tenant directory
    expect(await failureOf(createTenantSecrets({ dir: undefined }).read('tenant-a', 'CRM_TOKEN'))).toEqual(expected); // no TENANT_SECRETS_DIR
    expect(await failureOf(secrets.read('../tenant-a', 'CRM_TOKEN'))).toEqual(expected); // a path in the tenant id
    expect((await failureOf(secrets.read('tenant-b', 'STOLEN'))).code).toBe('secret_not_found'); // symlink to another tenant
    expect((await failureOf(secrets.read('tenant-b', 'ESCAPE'))).code).toBe('secret_not_found'); // symlink out of the directory
    expect((await failureOf(secrets.read('tenant-a', '../outside'))).code).toBe('secret_not_found');
  });

  it('reads a rotated value once the cache entry expires', async () => {
    const dir = secretsDir();
    let clock = 0;
    const secrets = createTenantSecrets({ dir, ttlMs: 1_000, now: () => clock });
    expect(await secrets.read('tenant-a', 'CRM_TOKEN')).toBe('crm-a');
    writeFileSync(join(dir, 'tenant-a', 'CRM_TOKEN'), 'crm-a-rotated');
    expect(await secrets.read('tenant-a', 'CRM_TOKEN')).toBe('crm-a');
    clock = 1_001;
    expect(await secrets.read('tenant-a', 'CRM_TOKEN')).toBe('crm-a-rotated');
  });
});
