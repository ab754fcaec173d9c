/**
 * What can be checked offline about the deployment files (issue 5): every kustomize overlay of
 * k8s/ is rendered and checked against the services as the shared package declares them (their
 * environment, consumers and streams); the MongoDB and NATS manifests and the compose file are
 * checked for the names the services rely on.
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { consumerPolicies, consumers, parseDuration, serviceEnvironment, streams, type ServiceName } from '@abide/shared';
import { kubernetesTools, renderKustomization, repoRoot, yamlMappingToJson, type K8sObject } from './render.ts';

// ------------------------------------------------------------------------------------------ model

type Probe = { httpGet?: { path?: string; port?: string | number } };
type EnvVar = {
  name: string;
  value?: string;
  valueFrom?: {
    configMapKeyRef?: { name: string; key: string; optional?: boolean };
    secretKeyRef?: { name: string; key: string; optional?: boolean };
  };
};
type EnvFrom = { configMapRef?: { name: string; optional?: boolean }; secretRef?: { name: string; optional?: boolean }; prefix?: string };
type Container = {
  name: string;
  image: string;
  command?: string[];
  args?: string[];
  ports?: { name?: string; containerPort: number }[];
  env?: EnvVar[];
  envFrom?: EnvFrom[];
  readinessProbe?: Probe;
  livenessProbe?: Probe;
  startupProbe?: Probe;
  resources?: { requests?: Record<string, string>; limits?: Record<string, string> };
  lifecycle?: { preStop?: { exec?: { command?: string[] }; sleep?: { seconds: number } } };
  securityContext?: { allowPrivilegeEscalation?: boolean; readOnlyRootFilesystem?: boolean; runAsNonRoot?: boolean };
};
type PodSpec = {
  containers: Container[];
  terminationGracePeriodSeconds?: number;
  securityContext?: { runAsNonRoot?: boolean };
  topologySpreadConstraints?: { topologyKey: string; labelSelector?: { matchLabels?: Record<string, string> } }[];
};
type Deployment = K8sObject & {
  spec: { replicas?: number; selector: { matchLabels: Record<string, string> }; template: { metadata: { labels: Record<string, string> }; spec: PodSpec } };
};
type LabelSelector = { matchLabels?: Record<string, string>; matchExpressions?: { key: string; operator: string; values?: string[] }[] };
type ScaleTarget = { scaleTargetRef: { name: string; kind?: string; apiVersion?: string } };
type ScaledObject = K8sObject & { spec: ScaleTarget & { minReplicaCount?: number; maxReplicaCount?: number; triggers: { type: string; metadata: Record<string, string> }[] } };
type Hpa = K8sObject & { spec: ScaleTarget & { minReplicas?: number; maxReplicas: number } };

/** Where a variable's value comes from in a rendered container. */
type Source = { kind: 'configMap' | 'secret'; name: string; key: string; value?: string; rendered: boolean } | { kind: 'literal'; value: string };

const services = Object.keys(serviceEnvironment) as ServiceName[];

/** Variables that are alternatives to others (DESIGN §9): set one of each pair. */
const alternatives: Record<string, string> = {
  NATS_CREDS: 'NATS_USER / NATS_PASSWORD',
  ABIDE_API_KEYS_FILE: 'ABIDE_API_KEYS',
};

/** Variables a deployment must not set (test hooks). */
const testOnly = new Set(['ABIDE_CRASH_POINTS']);

/**
 * Secrets no overlay renders: created by the MongoDB operator (connection string) or, in
 * production, by the operator of the cluster (k8s/README.md). The keys they must hold.
 */
const externalSecrets: Record<string, { keys: string[]; overlays: 'all' | 'prod' }> = {
  'abide-mongodb-connection': { keys: ['connectionString.standard'], overlays: 'all' },
  'abide-nats-credentials': {
    keys: ['NATS_GATEWAY_PASSWORD', 'NATS_ORCHESTRATOR_PASSWORD', 'NATS_LLM_WORKER_PASSWORD', 'NATS_TOOL_WORKER_PASSWORD'],
    overlays: 'prod',
  },
  'abide-gateway-secrets': { keys: ['ABIDE_API_KEYS'], overlays: 'prod' },
};

/** The JetStream durables each service consumes (DESIGN §2). */
const ownConsumers: Record<ServiceName, string[]> = {
  gateway: [],
  orchestrator: [consumers.orchestrator, consumers.orchestratorApprovals, consumers.orchestratorAdvisories],
  'llm-worker': [consumers.llmWorker],
  'tool-worker': [consumers.toolWorker],
};

/** The port variable whose value the service listens on for its probes. */
const portVariable: Record<ServiceName, string> = {
  gateway: 'GATEWAY_PORT',
  orchestrator: 'HEALTH_PORT',
  'llm-worker': 'HEALTH_PORT',
  'tool-worker': 'HEALTH_PORT',
};

const overlaysDir = join(repoRoot, 'k8s/overlays');
const overlayNames = readdirSync(overlaysDir, { withFileTypes: true })
  .filter((entry) => entry.isDirectory() && existsSync(join(overlaysDir, entry.name, 'kustomization.yaml')))
  .map((entry) => entry.name)
  .sort();
const isProduction = (overlay: string) => overlay.startsWith('prod');

// ---------------------------------------------------------------------------------------- helpers

function byKind<T extends K8sObject>(objects: K8sObject[], kind: string): T[] {
  return objects.filter((object) => object.kind === kind) as T[];
}

function selects(selector: LabelSelector | undefined, labels: Record<string, string>): boolean {
  if (!selector) return false;
  const matchLabels = Object.entries(selector.matchLabels ?? {});
  const expressions = selector.matchExpressions ?? [];
  if (matchLabels.length === 0 && expressions.length === 0) return true;
  return (
    matchLabels.every(([key, value]) => labels[key] === value) &&
    expressions.every(({ key, operator, values = [] }) => {
      if (operator === 'In') return values.includes(labels[key] ?? '\u0000');
      if (operator === 'NotIn') return !values.includes(labels[key] ?? '\u0000');
      if (operator === 'Exists') return key in labels;
      if (operator === 'DoesNotExist') return !(key in labels);
      return false;
    })
  );
}

function decodeSecret(secret: K8sObject): Record<string, string> {
  const data = (secret.data ?? {}) as Record<string, string>;
  const stringData = (secret.stringData ?? {}) as Record<string, string>;
  return { ...Object.fromEntries(Object.entries(data).map(([key, value]) => [key, Buffer.from(value, 'base64').toString('utf8')])), ...stringData };
}

/** Resolves the environment of a container the way the kubelet does (later entries win). */
function environment(container: Container, objects: K8sObject[]): Map<string, Source> {
  const configMaps = new Map(byKind(objects, 'ConfigMap').map((object) => [object.metadata.name, (object.data ?? {}) as Record<string, string>]));
  const secrets = new Map(byKind(objects, 'Secret').map((object) => [object.metadata.name, decodeSecret(object)]));
  const result = new Map<string, Source>();
  for (const from of container.envFrom ?? []) {
    const prefix = from.prefix ?? '';
    if (from.configMapRef) {
      const data = configMaps.get(from.configMapRef.name);
      expect(data !== undefined || from.configMapRef.optional, `envFrom ConfigMap ${from.configMapRef.name} of ${container.name} is rendered`).toBe(true);
      for (const [key, value] of Object.entries(data ?? {})) result.set(prefix + key, { kind: 'configMap', name: from.configMapRef.name, key, value, rendered: true });
    }
    if (from.secretRef) {
      const data = secrets.get(from.secretRef.name);
      // An optional Secret of extra variables (provider keys, tool headers) may be absent.
      expect(data !== undefined || from.secretRef.optional, `envFrom Secret ${from.secretRef.name} of ${container.name} is rendered or optional`).toBe(true);
      for (const [key, value] of Object.entries(data ?? {})) result.set(prefix + key, { kind: 'secret', name: from.secretRef.name, key, value, rendered: true });
    }
  }
  for (const variable of container.env ?? []) {
    const { configMapKeyRef, secretKeyRef } = variable.valueFrom ?? {};
    if (configMapKeyRef) {
      const data = configMaps.get(configMapKeyRef.name);
      expect(data?.[configMapKeyRef.key], `${container.name}: ${variable.name} from ConfigMap ${configMapKeyRef.name}/${configMapKeyRef.key}`).toBeDefined();
      result.set(variable.name, { kind: 'configMap', name: configMapKeyRef.name, key: configMapKeyRef.key, value: data?.[configMapKeyRef.key], rendered: true });
    } else if (secretKeyRef) {
      const data = secrets.get(secretKeyRef.name);
      if (data) expect(data[secretKeyRef.key], `${container.name}: ${variable.name} from Secret ${secretKeyRef.name}/${secretKeyRef.key}`).toBeDefined();
      result.set(variable.name, { kind: 'secret', name: secretKeyRef.name, key: secretKeyRef.key, value: data?.[secretKeyRef.key], rendered: data !== undefined });
    } else if (variable.value !== undefined) {
      result.set(variable.name, { kind: 'literal', value: variable.value });
    }
  }
  return result;
}

function imageName(image: string): string {
  const withoutDigest = image.split('@')[0]!;
  const lastSegment = withoutDigest.split('/').pop()!;
  return lastSegment.split(':')[0]!;
}

function containerPort(container: Container, port: string | number | undefined): number | undefined {
  if (typeof port === 'number') return port;
  return container.ports?.find((candidate) => candidate.name === port)?.containerPort;
}

function preStopSeconds(container: Container): number {
  const preStop = container.lifecycle?.preStop;
  if (preStop?.sleep) return preStop.sleep.seconds;
  const command = preStop?.exec?.command ?? [];
  return command[0] === 'sleep' ? Number(command[1] ?? 0) : 0;
}

// ------------------------------------------------------------------------------------------ tests

describe('kubectl / kustomize', () => {
  it('is installed (deploy/ensure-kubectl.sh)', () => {
    expect(kubernetesTools().describe).toBeTruthy();
  });
});

describe.each(overlayNames)('k8s/overlays/%s', (overlay) => {
  let objects: K8sObject[];
  let deployments: Map<string, Deployment>;

  beforeAll(() => {
    objects = renderKustomization(join(overlaysDir, overlay));
    deployments = new Map(byKind<Deployment>(objects, 'Deployment').map((deployment) => [deployment.metadata.name, deployment]));
  });

  it('puts every namespaced object in one namespace', () => {
    const namespaces = new Set(objects.filter((object) => object.kind !== 'Namespace').map((object) => object.metadata.namespace));
    expect([...namespaces]).toHaveLength(1);
    expect([...namespaces][0]).toBeTruthy();
    expect(byKind(objects, 'Namespace').map((namespace) => namespace.metadata.name)).toEqual([...namespaces]);
  });

  describe.each(services)('%s', (service) => {
    let deployment: Deployment;
    let container: Container;
    let env: Map<string, Source>;

    beforeAll(() => {
      deployment = deployments.get(service)!;
      expect(deployment, `Deployment ${service}`).toBeDefined();
      container = deployment.spec.template.spec.containers.find((candidate) => candidate.name === service)!;
      expect(container, `container ${service} in Deployment ${service}`).toBeDefined();
      env = environment(container, objects);
    });

    it('runs the service image and command as a non-root user', () => {
      expect(deployment.spec.template.spec.containers).toHaveLength(1);
      expect(imageName(container.image)).toBe(`abide-${service}`);
      expect([...(container.command ?? []), ...(container.args ?? [])]).toEqual(['node', `services/${service}/src/main.ts`]);
      expect(deployment.spec.template.spec.securityContext?.runAsNonRoot).toBe(true);
      expect(container.securityContext?.allowPrivilegeEscalation).toBe(false);
      expect(container.securityContext?.readOnlyRootFilesystem).toBe(true);
      expect(selects(deployment.spec.selector, deployment.spec.template.metadata.labels)).toBe(true);
    });

    it('has readiness /readyz and liveness /healthz probes on the port the service listens on', () => {
      expect(container.readinessProbe?.httpGet?.path).toBe('/readyz');
      expect(container.livenessProbe?.httpGet?.path).toBe('/healthz');
      const listening = env.get(portVariable[service]);
      expect(listening?.kind, `${portVariable[service]} comes from a ConfigMap`).toBe('configMap');
      const port = Number((listening as { value?: string }).value);
      for (const probe of [container.readinessProbe, container.livenessProbe, container.startupProbe]) {
        if (probe) expect(containerPort(container, probe.httpGet?.port)).toBe(port);
      }
    });

    it('has resource requests and limits', () => {
      for (const resource of ['cpu', 'memory']) {
        expect(container.resources?.requests?.[resource], `requests.${resource}`).toBeTruthy();
        expect(container.resources?.limits?.[resource], `limits.${resource}`).toBeTruthy();
      }
    });

    it('gives the pod longer to stop than SHUTDOWN_GRACE', () => {
      const grace = env.get('SHUTDOWN_GRACE');
      expect(grace?.kind).toBe('configMap');
      const graceSeconds = parseDuration((grace as { value: string }).value) / 1000;
      const terminationGrace = deployment.spec.template.spec.terminationGracePeriodSeconds ?? 30;
      expect(terminationGrace).toBeGreaterThan(graceSeconds + preStopSeconds(container));
    });

    it('spreads its pods over nodes and zones', () => {
      const constraints = deployment.spec.template.spec.topologySpreadConstraints ?? [];
      expect(constraints.map((constraint) => constraint.topologyKey).sort()).toEqual(['kubernetes.io/hostname', 'topology.kubernetes.io/zone']);
      for (const constraint of constraints) expect(selects(constraint.labelSelector, deployment.spec.template.metadata.labels)).toBe(true);
    });

    it('is covered by a PodDisruptionBudget', () => {
      const budgets = byKind<K8sObject & { spec: { selector: LabelSelector; minAvailable?: unknown; maxUnavailable?: unknown } }>(objects, 'PodDisruptionBudget').filter(
        (budget) => selects(budget.spec.selector, deployment.spec.template.metadata.labels),
      );
      expect(budgets, `PDB selecting ${service}`).toHaveLength(1);
      expect(budgets[0]!.spec.minAvailable ?? budgets[0]!.spec.maxUnavailable).toBeDefined();
    });

    it('sets every variable of its configuration from a ConfigMap or a Secret', () => {
      const { variables, required } = serviceEnvironment[service];
      for (const name of variables) {
        if (name in alternatives) continue;
        if (testOnly.has(name)) {
          expect(env.has(name), `${service}: test-only ${name} is not set`).toBe(false);
          continue;
        }
        const source = env.get(name);
        expect(source, `${service}: ${name} is set`).toBeDefined();
        expect(source!.kind, `${service}: ${name} comes from a ConfigMap or a Secret`).not.toBe('literal');
      }
      for (const group of required) {
        expect(
          group.some((name) => env.has(name)),
          `${service}: one of ${group.join(', ')} is set`,
        ).toBe(true);
      }
      for (const source of env.values()) {
        if (source.kind !== 'secret' || source.rendered) continue;
        const external = externalSecrets[source.name];
        expect(external, `${service}: Secret ${source.name} is rendered or a documented external Secret`).toBeDefined();
        expect(external!.keys).toContain(source.key);
        if (external!.overlays === 'prod') expect(isProduction(overlay), `${source.name} must be rendered in ${overlay}`).toBe(true);
      }
      // Secrets (passwords, keys, connection strings with credentials) never sit in a ConfigMap.
      for (const name of ['NATS_PASSWORD', 'MONGO_URL', 'ABIDE_API_KEYS']) {
        if (env.has(name)) expect(env.get(name)!.kind, `${service}: ${name} comes from a Secret`).toBe('secret');
      }
      expect(env.get('NATS_USER')?.kind).toBe('configMap');
    });

    it(`uses the NATS user ${service} of deploy/nats/auth.conf`, () => {
      const user = (env.get('NATS_USER') as { value?: string }).value!;
      expect(user).toBe(service);
      const password = env.get('NATS_PASSWORD') as { key: string };
      expect(password.key).toBe(`NATS_${service.toUpperCase().replace(/-/g, '_')}_PASSWORD`);
      const authConfig = readFileSync(join(repoRoot, 'deploy/nats/auth.conf'), 'utf8');
      expect(authConfig).toMatch(new RegExp(`user: ${user}\\s+password: \\$${password.key}\\b`));
    });

    it('is autoscaled by exactly one autoscaler', () => {
      const targeting = [...byKind<ScaledObject>(objects, 'ScaledObject'), ...byKind<Hpa>(objects, 'HorizontalPodAutoscaler')].filter(
        (autoscaler) => autoscaler.spec.scaleTargetRef.name === service,
      );
      expect(targeting.map((autoscaler) => `${autoscaler.kind}/${autoscaler.metadata.name}`)).toHaveLength(1);
      // The autoscaler owns the replica count.
      expect(deployment.spec.replicas).toBeUndefined();
    });

    if (isProduction(overlay)) {
      it('uses JetStream replicas 3 and at least 2 pods', () => {
        expect((env.get('JS_REPLICAS') as { value?: string }).value).toBe('3');
        const autoscaler = [...byKind<ScaledObject>(objects, 'ScaledObject'), ...byKind<Hpa>(objects, 'HorizontalPodAutoscaler')].find(
          (candidate) => candidate.spec.scaleTargetRef.name === service,
        )!;
        const minimum = autoscaler.kind === 'ScaledObject' ? (autoscaler as ScaledObject).spec.minReplicaCount : (autoscaler as Hpa).spec.minReplicas;
        expect(minimum).toBeGreaterThanOrEqual(2);
      });
    }
  });

  it('scales each ScaledObject on a consumer and stream the shared package declares', () => {
    for (const scaledObject of byKind<ScaledObject>(objects, 'ScaledObject')) {
      const target = scaledObject.spec.scaleTargetRef;
      expect(target.kind ?? 'Deployment').toBe('Deployment');
      expect(deployments.has(target.name), `ScaledObject ${scaledObject.metadata.name} targets an existing Deployment`).toBe(true);
      expect(scaledObject.spec.triggers.length).toBeGreaterThan(0);
      for (const trigger of scaledObject.spec.triggers) {
        expect(trigger.type).toBe('nats-jetstream');
        const { stream, consumer, account, natsServerMonitoringEndpoint, lagThreshold } = trigger.metadata;
        expect(Object.values(consumers)).toContain(consumer);
        expect(Object.values(streams)).toContain(stream);
        expect(consumerPolicies[consumer as keyof typeof consumerPolicies].stream, `${consumer} reads ${stream}`).toBe(stream);
        expect(ownConsumers[target.name as ServiceName], `${target.name} consumes ${consumer}`).toContain(consumer);
        expect(account).toBeTruthy();
        expect(natsServerMonitoringEndpoint).toMatch(/^[a-z0-9.-]+:\d+$/);
        expect(Number(lagThreshold)).toBeGreaterThan(0);
      }
    }
  });

  it('targets an existing Deployment with every HorizontalPodAutoscaler', () => {
    for (const hpa of byKind<Hpa>(objects, 'HorizontalPodAutoscaler')) {
      expect(hpa.spec.scaleTargetRef.kind).toBe('Deployment');
      expect(deployments.has(hpa.spec.scaleTargetRef.name), `HPA ${hpa.metadata.name} targets an existing Deployment`).toBe(true);
      expect(hpa.spec.maxReplicas).toBeGreaterThanOrEqual(hpa.spec.minReplicas ?? 1);
    }
  });

  it('exposes the gateway, and only the gateway, through a Service and an Ingress with WebSocket timeouts', () => {
    const gatewayLabels = deployments.get('gateway')!.spec.template.metadata.labels;
    const servicesByName = new Map(
      byKind<K8sObject & { spec: { selector?: Record<string, string>; ports: { name?: string; port: number; targetPort?: string | number }[] } }>(objects, 'Service').map(
        (service) => [service.metadata.name, service],
      ),
    );
    const ingresses = byKind<K8sObject & { spec: { rules: { http: { paths: { backend: { service: { name: string; port: { name?: string; number?: number } } } }[] } }[] } }>(
      objects,
      'Ingress',
    );
    expect(ingresses).toHaveLength(1);
    const ingress = ingresses[0]!;
    const annotations = ingress.metadata.annotations ?? {};
    expect(Number(annotations['nginx.ingress.kubernetes.io/proxy-read-timeout'])).toBeGreaterThanOrEqual(3600);
    expect(Number(annotations['nginx.ingress.kubernetes.io/proxy-send-timeout'])).toBeGreaterThanOrEqual(3600);
    for (const rule of ingress.spec.rules) {
      for (const path of rule.http.paths) {
        const backend = servicesByName.get(path.backend.service.name);
        expect(backend, `Service ${path.backend.service.name}`).toBeDefined();
        expect(selects({ matchLabels: backend!.spec.selector }, gatewayLabels)).toBe(true);
        const port = backend!.spec.ports.find((candidate) => candidate.name === path.backend.service.port.name || candidate.port === path.backend.service.port.number);
        expect(port).toBeDefined();
        const gateway = deployments.get('gateway')!.spec.template.spec.containers[0]!;
        expect(containerPort(gateway, port!.targetPort)).toBeDefined();
      }
    }
  });

  it('denies all traffic by default and lets in from outside only to the gateway', () => {
    type Peer = { namespaceSelector?: LabelSelector; podSelector?: LabelSelector; ipBlock?: { cidr: string } };
    const policies = byKind<K8sObject & { spec: { podSelector: LabelSelector; policyTypes: string[]; ingress?: { from?: Peer[] }[] } }>(objects, 'NetworkPolicy');
    const denyAll = policies.find(
      (policy) => Object.keys(policy.spec.podSelector).length === 0 && policy.spec.policyTypes.includes('Ingress') && policy.spec.policyTypes.includes('Egress') && !policy.spec.ingress,
    );
    expect(denyAll, 'a default-deny NetworkPolicy').toBeDefined();
    for (const policy of policies) {
      for (const rule of policy.spec.ingress ?? []) {
        const peers = rule.from ?? [{}]; // no `from`: everyone
        const admitsOthers = peers.some((peer) => peer.ipBlock || peer.namespaceSelector?.matchLabels?.['kubernetes.io/metadata.name'] !== 'monitoring');
        if (!admitsOthers) continue; // Prometheus scraping from the monitoring namespace
        for (const [name, deployment] of deployments) {
          if (selects(policy.spec.podSelector, deployment.spec.template.metadata.labels)) {
            expect(name, `NetworkPolicy ${policy.metadata.name} admits outside traffic to ${name}`).toBe('gateway');
          }
        }
      }
    }
  });

  if (isProduction(overlay)) {
    it('renders no Secret (they are created out of band)', () => {
      expect(byKind(objects, 'Secret')).toEqual([]);
    });
  }
});

describe('k8s/mongodb', () => {
  it('is a 3-member replica set whose connection string Secret is the one the services read', () => {
    const objects = renderKustomization(join(repoRoot, 'k8s/mongodb'));
    const [replicaSet, ...others] = objects.filter((object) => object.kind === 'MongoDBCommunity') as (K8sObject & {
      spec: { members: number; type: string; users: { connectionStringSecretName?: string; connectionStringSecretNamespace?: string }[] };
    })[];
    expect(others).toHaveLength(0);
    expect(replicaSet!.spec.type).toBe('ReplicaSet');
    expect(replicaSet!.spec.members).toBe(3);
    const appNamespace = renderKustomization(join(overlaysDir, 'prod')).find((object) => object.kind === 'Namespace')!.metadata.name;
    expect(replicaSet!.spec.users).toContainEqual(
      expect.objectContaining({ connectionStringSecretName: 'abide-mongodb-connection', connectionStringSecretNamespace: appNamespace }),
    );
    expect(objects.some((object) => object.kind === 'PodDisruptionBudget')).toBe(true);
  });
});

describe('k8s/nats/values.yaml', () => {
  it('runs a 3-node JetStream cluster with file storage, sync_interval always and the Abide users', () => {
    const values = yamlMappingToJson(readFileSync(join(repoRoot, 'k8s/nats/values.yaml'), 'utf8')) as {
      config: {
        cluster: { enabled: boolean; replicas: number };
        jetstream: { enabled: boolean; fileStore: { enabled: boolean; pvc: { enabled: boolean } }; merge: Record<string, unknown> };
        monitor: { enabled: boolean; port: number };
        merge: Record<string, unknown>;
      };
      container: { merge: { envFrom: { secretRef: { name: string } }[] } };
    };
    expect(values.config.cluster).toMatchObject({ enabled: true, replicas: 3 });
    expect(values.config.jetstream).toMatchObject({ enabled: true, fileStore: { enabled: true, pvc: { enabled: true } } });
    expect(values.config.jetstream.merge.sync_interval).toBe('always');
    expect(values.config.monitor).toMatchObject({ enabled: true, port: 8222 });
    expect(values.config.merge.$include).toBe('../nats-abide/auth.conf');
    expect(values.container.merge.envFrom).toContainEqual({ secretRef: { name: 'abide-nats-credentials' } });
  });
});

describe('deploy/docker-compose.yml', () => {
  type ComposeService = {
    image?: string;
    build?: { context: string; dockerfile: string; args?: Record<string, string> };
    command?: string[];
    environment?: Record<string, string>;
    healthcheck?: { test: string[] };
    restart?: string;
    depends_on?: Record<string, { condition: string }>;
    ports?: string[];
    volumes?: string[];
  };
  let compose: { services: Record<string, ComposeService> };

  beforeAll(() => {
    compose = yamlMappingToJson(readFileSync(join(repoRoot, 'deploy/docker-compose.yml'), 'utf8')) as typeof compose;
  });

  it.each(services)('runs %s from deploy/Dockerfile with its whole configuration and a health check', (service) => {
    const definition = compose.services[service]!;
    expect(definition.build).toMatchObject({ context: '..', dockerfile: 'deploy/Dockerfile', args: { SERVICE: service } });
    expect(definition.command).toEqual(['node', `services/${service}/src/main.ts`]);
    expect(definition.restart).toBe('unless-stopped');
    expect(definition.depends_on?.nats?.condition).toBe('service_healthy');
    const environment = definition.environment ?? {};
    for (const name of serviceEnvironment[service].variables) {
      if (name in alternatives) continue;
      if (testOnly.has(name)) expect(environment, `${service}: test-only ${name}`).not.toHaveProperty(name);
      else expect(environment, `${service}: ${name}`).toHaveProperty(name);
    }
    expect(environment.NATS_USER).toBe(service);
    const port = environment[portVariable[service]];
    expect(definition.healthcheck?.test.join(' ')).toContain(`http://127.0.0.1:${port}/readyz`);
  });

  it('runs NATS with the deploy/nats configuration and MongoDB as a replica set', () => {
    expect(compose.services.nats!.command).toEqual(['nats-server', '--config', '/etc/nats/abide/nats-server.conf']);
    expect(compose.services.nats!.volumes).toContain('./nats:/etc/nats/abide:ro');
    expect(compose.services.mongodb!.command).toContain('--replSet');
    expect(compose.services.gateway!.ports).toEqual(['${ABIDE_GATEWAY_HOST_PORT:-8080}:8080']);
    const natsConfig = readFileSync(join(repoRoot, 'deploy/nats/nats-server.conf'), 'utf8');
    expect(natsConfig).toMatch(/sync_interval:\s*always/);
    expect(natsConfig).toMatch(/include \.\/auth\.conf/);
  });
});
