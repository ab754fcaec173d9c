import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MongoClient, type Db } from 'mongodb';
import { serviceEnvironment } from '@abide/shared';
import { freePort, startServersFromEnv, type LocalStore, type StartedServers } from '../../../scripts/lib/servers.ts';
import { ServiceProcess, type ServiceName } from './service-process.ts';
import { TestSocket } from './test-socket.ts';

/** The default stack's API keys (the gateway refuses keys shorter than 16 characters). */
export const testKeys = { a: 'key-a-0123456789abcdef', b: 'key-b-0123456789abcdef' } as const;

export type StackOptions = {
  /** Replicas per service. @default 1 each */
  replicas?: Partial<Record<ServiceName, number>>;
  /** `key:tenant,…` @default `${testKeys.a}:tenant-a,${testKeys.b}:tenant-b` */
  apiKeys?: string;
  /** Extra environment for every service (each gets only the variables its configuration names). */
  env?: Record<string, string>;
  /** Environment for one service only, given as is (e.g. a canary variable a test expects never to leak). */
  serviceEnv?: Partial<Record<ServiceName, Record<string, string>>>;
  /**
   * A NATS cluster of this many nodes instead of one server (issue 14): the services get every
   * node's URL and `JS_REPLICAS` = the node count. Ignored when `NATS_URL` names servers.
   */
  natsCluster?: number;
  /** The local store to start (ignored when `MONGO_URL` names a server). @default `ABIDE_LOCAL_STORE`, else `sqlite` */
  localStore?: LocalStore;
};

export type ApiResponse<Body = any> = { status: number; body: Body; headers: Headers };

/**
 * The whole of Abide for a test file: real NATS and MongoDB(-compatible) servers (started here
 * unless NATS_URL / MONGO_URL name them) and every service as a separate OS process. Each stack
 * gets fresh server data (or its own database), so tests never see each other's leftovers.
 */
export class Stack {
  readonly dir: string;
  readonly servers: StartedServers;
  readonly mongoUrl: string;
  readonly services: ServiceProcess[];
  readonly gatewayUrl: string;
  readonly mongo: MongoClient;
  readonly db: Db;

  private constructor(fields: { dir: string; servers: StartedServers; mongoUrl: string; services: ServiceProcess[]; gatewayUrl: string; mongo: MongoClient }) {
    this.dir = fields.dir;
    this.servers = fields.servers;
    this.mongoUrl = fields.mongoUrl;
    this.services = fields.services;
    this.gatewayUrl = fields.gatewayUrl;
    this.mongo = fields.mongo;
    this.db = fields.mongo.db();
  }

  static async start(options: StackOptions = {}): Promise<Stack> {
    const dir = mkdtempSync(join(tmpdir(), 'abide-it-'));
    const servers = await startServersFromEnv(process.env, { dataRoot: dir, log: () => {}, natsCluster: options.natsCluster, localStore: options.localStore });
    const services: ServiceProcess[] = [];
    try {
      const database = `abide_${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
      const mongoUrl = servers.mongoUrl.replace(/\/[^/?]*(\?|$)/, `/${database}$1`);
      const common: Record<string, string> = {
        NATS_URL: servers.natsUrl,
        MONGO_URL: mongoUrl,
        ABIDE_API_KEYS: options.apiKeys ?? `${testKeys.a}:tenant-a,${testKeys.b}:tenant-b`,
        LOG_LEVEL: 'info',
        SHUTDOWN_GRACE: '5s',
        TOOL_EGRESS_ALLOW: '127.0.0.1:*,localhost:*',
        ...(servers.natsCluster ? { JS_REPLICAS: String(servers.natsCluster.nodes.length) } : {}),
        ...options.env,
      };
      const order: ServiceName[] = ['orchestrator', 'tool-worker', 'llm-worker', 'gateway'];
      let gatewayUrl = '';
      for (const name of order) {
        const count = options.replicas?.[name] ?? 1;
        for (let replica = 0; replica < count; replica += 1) {
          const port = await freePort();
          // Only what the service's configuration names (as `npm start` does), then its own extras.
          const own = new Set(serviceEnvironment[name].variables);
          const env = {
            ...Object.fromEntries(Object.entries(common).filter(([variable]) => own.has(variable))),
            ...(name === 'gateway' ? { GATEWAY_PORT: String(port) } : { HEALTH_PORT: String(port) }),
            ...options.serviceEnv?.[name],
          };
          const url = `http://127.0.0.1:${port}`;
          if (name === 'gateway' && !gatewayUrl) gatewayUrl = url;
          services.push(new ServiceProcess({ name, replica, logDir: dir, env, healthUrl: url }));
        }
      }
      for (const service of services) service.start();
      await Promise.all(services.map((service) => service.waitReady()));
      const mongo = new MongoClient(mongoUrl, { serverSelectionTimeoutMS: 5_000 });
      await mongo.connect();
      return new Stack({ dir, servers, mongoUrl, services, gatewayUrl, mongo });
    } catch (error) {
      await Promise.all(services.map((service) => service.stop('SIGKILL')));
      await servers.stop();
      throw error;
    }
  }

  service(name: ServiceName, replica = 0): ServiceProcess {
    const found = this.services.find((service) => service.name === name && service.replica === replica);
    if (!found) throw new Error(`no ${name}#${replica}`);
    return found;
  }

  /** A call to the public API with `key`. */
  async api<Body = any>(key: string | undefined, method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<ApiResponse<Body>> {
    const response = await fetch(`${this.gatewayUrl}${path}`, {
      method,
      headers: {
        ...(key ? { authorization: `Bearer ${key}` } : {}),
        ...(body === undefined ? {} : { 'content-type': 'application/json' }),
        ...headers,
      },
      ...(body === undefined ? {} : { body: typeof body === 'string' ? body : JSON.stringify(body) }),
    });
    const text = await response.text();
    let parsed: unknown = text;
    try {
      parsed = text ? JSON.parse(text) : undefined;
    } catch {
      // Not JSON (SSE, metrics): keep the text.
    }
    return { status: response.status, body: parsed as Body, headers: response.headers };
  }

  /** A real WebSocket client on `/v1/ws`. */
  async socket(key: string): Promise<TestSocket> {
    return TestSocket.open(`${this.gatewayUrl.replace('http', 'ws')}/v1/ws`, { authorization: `Bearer ${key}` });
  }

  /** The last lines of every service log (printed when a test fails). */
  logs(lines = 40): string {
    return this.services.map((service) => service.logTail(lines)).join('\n');
  }

  async stop(): Promise<void> {
    await Promise.all(this.services.map((service) => service.stop('SIGTERM')));
    await this.mongo.close();
    await this.servers.stop();
  }
}
