import { execFileSync, spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { serviceEnvironment, type ServiceName } from './config.ts';
import { serviceNodeOptions, serviceProcessVariables } from './node-options.ts';

const repoRoot = new URL('../../', import.meta.url).pathname;
const services = Object.keys(serviceEnvironment) as ServiceName[];

/** The `ENV NODE_OPTIONS` of each `service-<name>` stage of deploy/Dockerfile. */
function dockerfileNodeOptions(): Map<string, string> {
  const found = new Map<string, string>();
  let stage: string | undefined;
  for (const line of readFileSync(join(repoRoot, 'deploy/Dockerfile'), 'utf8').split('\n')) {
    const from = /^FROM\s+\S+\s+AS\s+service-(\S+)/i.exec(line);
    if (from) stage = from[1];
    else if (/^FROM\s/i.test(line)) stage = undefined;
    const env = /^ENV\s+NODE_OPTIONS="([^"]*)"\s*$/.exec(line);
    if (env && stage) found.set(stage, env[1]!);
  }
  return found;
}

/** The variables the `ENV` instructions of the `app` stage of deploy/Dockerfile set (every service's stage builds on it). */
function dockerfileAppEnvironment(): Map<string, string> {
  const found = new Map<string, string>();
  let stage: string | undefined;
  // Continuation lines joined, so that one `ENV` instruction is one line.
  for (const line of readFileSync(join(repoRoot, 'deploy/Dockerfile'), 'utf8').replace(/\\\n\s*/g, ' ').split('\n')) {
    const from = /^FROM\s+\S+\s+AS\s+(\S+)/i.exec(line);
    if (from) stage = from[1];
    const env = /^ENV\s+(.*)$/.exec(line);
    if (!env || stage !== 'app') continue;
    for (const assignment of env[1]!.trim().split(/\s+/)) {
      const [name, ...value] = assignment.split('=');
      found.set(name!, value.join('=').replace(/^"(.*)"$/, '$1'));
    }
  }
  return found;
}

/** A Kubernetes quantity (`512Mi`, `1Gi`) in MiB. */
function mebibytes(quantity: string): number {
  const match = /^(\d+)(Mi|Gi)$/.exec(quantity);
  if (!match) throw new Error(`unexpected quantity ${quantity}`);
  return Number(match[1]) * (match[2] === 'Gi' ? 1024 : 1);
}

/** The value of `--flag=value` among `flags`, as a number. */
function flagValue(flags: readonly string[], flag: string): number {
  const entry = flags.find((candidate) => candidate.startsWith(`${flag}=`));
  if (!entry) throw new Error(`no ${flag}`);
  return Number(entry.slice(flag.length + 1));
}

describe('service node options', () => {
  it('are the ones each service image sets (one set of flags, wherever a service is started)', () => {
    const inImages = dockerfileNodeOptions();
    for (const service of services) expect(inImages.get(service), service).toBe(serviceNodeOptions[service].join(' '));
    expect([...inImages.keys()].sort()).toEqual([...services].sort());
  });

  it('come with the same Node and glibc variables in the images as under npm start and the tests', () => {
    const inImage = dockerfileAppEnvironment();
    const cacheDir = inImage.get('NODE_COMPILE_CACHE');
    expect(serviceProcessVariables(cacheDir ?? '')).toEqual(Object.fromEntries([...inImage].filter(([name]) => name in serviceProcessVariables(''))));
    // The image's root file system is read-only: the cache must sit on the /tmp every manifest mounts writable.
    expect(cacheDir).toMatch(/^\/tmp\//);
    for (const service of services) {
      const documents = parseAllDocuments(readFileSync(join(repoRoot, 'k8s/base', `${service}.yaml`), 'utf8')).map((document) => document.toJSON());
      const deployment = documents.find((document) => document?.kind === 'Deployment');
      const spec = deployment.spec.template.spec;
      const mount = spec.containers[0].volumeMounts.find((candidate: { mountPath: string }) => candidate.mountPath === '/tmp');
      expect(mount, service).toBeDefined();
      expect(mount.readOnly, service).not.toBe(true);
      expect(spec.volumes.find((volume: { name: string }) => volume.name === mount.name)?.emptyDir, service).toBeDefined();
      // Nothing in a manifest replaces them.
      const names = (spec.containers[0].env ?? []).map((variable: { name: string }) => variable.name);
      for (const name of Object.keys(serviceProcessVariables(''))) expect(names, service).not.toContain(name);
    }
  });

  it('let a second start of the same TypeScript module skip the type stripper (the compile cache)', () => {
    const dir = mkdtempSync(join(tmpdir(), 'abide-compile-cache-'));
    try {
      const module = join(dir, 'module.ts');
      writeFileSync(module, "const loaded: string[] = process.moduleLoadList.filter((name) => name.includes('amaro'));\nprocess.stdout.write(JSON.stringify(loaded));\n");
      const start = () => JSON.parse(execFileSync(process.execPath, [module], { encoding: 'utf8', env: { PATH: process.env.PATH, ...serviceProcessVariables(join(dir, 'cache')) } })) as string[];
      // The first start strips the types (Node's WASM stripper, amaro) and writes the cache at exit; the second reads it.
      expect(start()).toEqual([expect.stringContaining('amaro')]);
      expect(start()).toEqual([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('are written once a service has started (persistCompileCache), so a start after a kill skips the type stripper too', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'abide-compile-cache-'));
    try {
      const module = join(dir, 'service.ts');
      const lifecycle = new URL('./lifecycle.ts', import.meta.url).pathname;
      writeFileSync(
        module,
        `import { persistCompileCache } from ${JSON.stringify(lifecycle)};\nconst loaded: string[] = process.moduleLoadList.filter((name) => name.includes('amaro'));\npersistCompileCache();\nprocess.stdout.write(JSON.stringify(loaded) + '\\n');\nsetInterval(() => {}, 1_000);\n`,
      );
      // Started, then killed from outside once it has said so: no clean exit, so only persistCompileCache can have written the cache.
      const startAndKill = async () => {
        const child = spawn(process.execPath, [module], { stdio: ['ignore', 'pipe', 'inherit'], env: { PATH: process.env.PATH, ...serviceProcessVariables(join(dir, 'cache')) } });
        const exited = once(child, 'exit');
        const [line] = (await once(createInterface({ input: child.stdout! }), 'line')) as [string];
        child.kill('SIGKILL');
        expect(await exited).toEqual([null, 'SIGKILL']);
        return JSON.parse(line) as string[];
      };
      expect(await startAndKill()).toEqual([expect.stringContaining('amaro')]);
      expect(await startAndKill()).toEqual([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('leave each service’s old space well below its Kubernetes memory limit', () => {
    for (const service of services) {
      const documents = parseAllDocuments(readFileSync(join(repoRoot, 'k8s/base', `${service}.yaml`), 'utf8')).map((document) => document.toJSON());
      const deployment = documents.find((document) => document?.kind === 'Deployment');
      const limit = mebibytes(deployment.spec.template.spec.containers[0].resources.limits.memory);
      // What is not old space (young generation, code, buffers, the binary's pages) needs ~100 MB.
      expect(flagValue(serviceNodeOptions[service], '--max-old-space-size'), service).toBeLessThanOrEqual(limit - 128);
    }
  });

  it('are accepted by this Node, on the command line and in NODE_OPTIONS, and set the heap limit', () => {
    const probe = "process.stdout.write(String(require('node:v8').getHeapStatistics().heap_size_limit))";
    for (const service of services) {
      const flags = serviceNodeOptions[service];
      const onCommandLine = Number(execFileSync(process.execPath, [...flags, '-e', probe], { encoding: 'utf8' }));
      const inEnvironment = Number(execFileSync(process.execPath, ['-e', probe], { encoding: 'utf8', env: { PATH: process.env.PATH, NODE_OPTIONS: flags.join(' ') } }));
      expect(inEnvironment).toBe(onCommandLine);
      // The limit is old space plus the young generation (3 semi-spaces).
      const oldSpace = flagValue(flags, '--max-old-space-size') * 1024 * 1024;
      expect(onCommandLine).toBeGreaterThanOrEqual(oldSpace);
      expect(onCommandLine).toBeLessThanOrEqual(oldSpace + 3 * flagValue(flags, '--max-semi-space-size') * 1024 * 1024);
    }
  });
});
