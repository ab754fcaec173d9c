/**
 * Renders kustomizations and YAML files to JSON objects, offline, with the Kubernetes tools CI
 * installs (deploy/ensure-kubectl.sh):
 *   - kustomize v5: `kubectl kustomize` when kubectl embeds kustomize v5+, else a `kustomize`
 *     binary (ABIDE_KUSTOMIZE, .abide/bin/kustomize, or on PATH);
 *   - YAML → JSON: `kubectl annotate --local -o json` (any kubectl; no cluster is contacted).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { delimiter, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

const installHint = 'run `bash deploy/ensure-kubectl.sh` (installs kubectl from Debian and, if it lacks kustomize v5, kustomize v5 with Go into .abide/bin)';

/** A Kubernetes object as JSON. */
export type K8sObject = {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  [field: string]: unknown;
};

function onPath(command: string): string | undefined {
  for (const directory of (process.env.PATH ?? '').split(delimiter)) {
    if (!directory) continue;
    const candidate = join(directory, command);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // not here
    }
  }
  return undefined;
}

function executable(path: string | undefined): string | undefined {
  if (!path) return undefined;
  try {
    accessSync(path, constants.X_OK);
    return path;
  } catch {
    return undefined;
  }
}

let tools: { kubectl: string; render: (dir: string) => string[]; describe: string } | undefined;

/** The kubectl and kustomize to use; throws with an install hint when one is missing. */
export function kubernetesTools(): { kubectl: string; render: (dir: string) => string[]; describe: string } {
  if (tools) return tools;
  const kubectl = executable(process.env.ABIDE_KUBECTL) ?? onPath('kubectl');
  if (!kubectl) throw new Error(`kubectl not found: ${installHint}`);
  const version = spawnSync(kubectl, ['version', '--client'], { encoding: 'utf8' });
  const embedded = /Kustomize Version:\s*v(\d+)\./.exec(`${version.stdout}${version.stderr}`);
  if (!process.env.ABIDE_KUSTOMIZE && embedded && Number(embedded[1]) >= 5) {
    tools = { kubectl, render: (dir) => [kubectl, 'kustomize', dir], describe: `${kubectl} kustomize (kustomize v${embedded[1]})` };
    return tools;
  }
  const kustomize = executable(process.env.ABIDE_KUSTOMIZE) ?? executable(join(repoRoot, '.abide/bin/kustomize')) ?? onPath('kustomize');
  if (!kustomize) throw new Error(`no kustomize v5 (kubectl ${kubectl} embeds ${embedded ? `v${embedded[1]}` : 'an older one'}): ${installHint}`);
  tools = { kubectl, render: (dir) => [kustomize, 'build', dir], describe: `${kustomize} build` };
  return tools;
}

/** Parses kubectl's JSON output: one pretty-printed object after another. */
export function parseJsonStream(text: string): unknown[] {
  const values: unknown[] = [];
  let depth = 0;
  let start = -1;
  let inString = false;
  for (let index = 0; index < text.length; index += 1) {
    const char = text[index];
    if (inString) {
      if (char === '\\') index += 1;
      else if (char === '"') inString = false;
      continue;
    }
    if (char === '"') inString = true;
    else if (char === '{' || char === '[') {
      if (depth === 0) start = index;
      depth += 1;
    } else if (char === '}' || char === ']') {
      depth -= 1;
      if (depth === 0) values.push(JSON.parse(text.slice(start, index + 1)));
    }
  }
  if (depth !== 0) throw new Error('unterminated JSON in kubectl output');
  return values;
}

/** YAML documents (Kubernetes objects: apiVersion, kind, metadata.name) → JSON objects. */
export function yamlObjectsToJson(yaml: string): K8sObject[] {
  const { kubectl } = kubernetesTools();
  // Removing an annotation nobody has is a no-op that makes kubectl print the objects as JSON;
  // --local: no API server is contacted, unknown kinds (CRDs) are fine.
  const output = execFileSync(kubectl, ['annotate', '--local', '-f', '-', '-o', 'json', 'abide.test/render-'], {
    input: yaml,
    encoding: 'utf8',
    maxBuffer: 64 * 1024 * 1024,
    env: { ...process.env, KUBECONFIG: join(repoRoot, '.abide', 'no-kubeconfig') },
  });
  return parseJsonStream(output).flatMap((value) => {
    const object = value as K8sObject & { items?: K8sObject[] };
    return object.kind === 'List' && Array.isArray(object.items) ? object.items : [object];
  });
}

/** `kustomize build <dir>` as JSON objects. */
export function renderKustomization(dir: string): K8sObject[] {
  const [command, ...args] = kubernetesTools().render(dir);
  const yaml = execFileSync(command!, args, { encoding: 'utf8', maxBuffer: 64 * 1024 * 1024 });
  return yamlObjectsToJson(yaml);
}

/** Any YAML mapping (a Helm values file, a compose file) as JSON, by wrapping it in an object. */
export function yamlMappingToJson(yaml: string): Record<string, unknown> {
  const indented = yaml
    .split('\n')
    .map((line) => (line.length ? `  ${line}` : line))
    .join('\n');
  const wrapped = `apiVersion: abide.test/v1\nkind: YamlDocument\nmetadata:\n  name: document\nspec:\n${indented}\n`;
  const [object] = yamlObjectsToJson(wrapped);
  return (object?.spec ?? {}) as Record<string, unknown>;
}
