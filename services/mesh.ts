import type { Interceptor, Transport } from "@connectrpc/connect";
import { authInterceptor, createVerifier, mintToken } from "./platform/auth.js";
import type { Config } from "./platform/config.js";
import { openDb, type Db } from "./platform/db.js";
import { createHost } from "./platform/host.js";
import { createLogger, type Logger } from "./platform/logger.js";
import { cachedToken, createPeers } from "./platform/peers.js";
import { openRedis, type RedisPorts } from "./platform/redis.js";
import { loggingInterceptor } from "./platform/request-log.js";
import type { ServiceModule, ServiceName } from "./platform/service.js";
import { serviceFactories } from "./registry.js";

/** The services of one process, their storage and (optionally) their two listeners. */
export interface Mesh {
  config: Config;
  logger: Logger;
  db: Db;
  redis: RedisPorts;
  modules: ReadonlyMap<ServiceName, ServiceModule>;
  /** The server-side interceptor chain (request log, auth) used by both listeners and in-process peers. */
  interceptors: Interceptor[];
  /** Transport to a service, exactly as the hosted services reach each other. */
  peer(name: ServiceName): Transport;
  /** Migrates, starts the services and, unless listen is false, the gRPC and web listeners. */
  start(opts?: { listen?: boolean }): Promise<{ port: number; webPort: number }>;
  /** Drains listeners, then stops services and closes storage. */
  stop(): Promise<void>;
}

const SERVICE_TOKEN_TTL_S = 3600;

/** Builds the services named in config.services with their dependencies. */
export async function createMesh(config: Config, opts: { logger?: Logger; db?: Db; redis?: RedisPorts } = {}): Promise<Mesh> {
  const logger = opts.logger ?? createLogger(config.logLevel);
  const db = opts.db ?? (await openDb({ databaseUrl: config.databaseUrl, dataDir: config.dataDir, poolSize: config.databasePoolSize, logger }));
  const redis = opts.redis ?? (await openRedis({ redisUrl: config.redisUrl, logger }));
  const verifier = await createVerifier(config.auth);
  const interceptors = [loggingInterceptor(logger), authInterceptor(verifier)];
  const serviceToken = config.auth.serviceToken
    ? async () => config.auth.serviceToken as string
    : cachedToken(() => mintToken(config.auth, { role: "service", sub: `dabba-${config.services.join("-")}` }, SERVICE_TOKEN_TTL_S), SERVICE_TOKEN_TTL_S);
  const modules = new Map<ServiceName, ServiceModule>();
  const peer = createPeers({
    hosted: () => modules,
    addrs: config.peerAddrs,
    serverInterceptors: interceptors,
    serviceToken,
    maxMessageBytes: config.maxMessageBytes,
  });
  for (const name of config.services) {
    modules.set(name, serviceFactories[name]({ config, db, redis, logger: logger.child({ service: name }), peer }));
  }
  const host = createHost({ config, logger, modules: [...modules.values()], interceptors });
  let listening = false;
  const started: ServiceModule[] = [];

  return {
    config,
    logger,
    db,
    redis,
    modules,
    interceptors,
    peer,
    async start({ listen = true } = {}) {
      for (const m of modules.values()) if (Object.keys(m.migrations).length > 0) await db.migrate(m.name, m.migrations);
      for (const m of modules.values()) {
        await m.start();
        started.push(m);
      }
      if (!listen) return { port: 0, webPort: 0 };
      const ports = await host.start();
      listening = true;
      return ports;
    },
    async stop() {
      if (listening) await host.stop();
      // Together: each stop ends background loops (consumers wait out a blocking read of up to a
      // second), and none needs another service's loops; in-process calls still work meanwhile.
      await Promise.all(
        started.splice(0).map((m) =>
          m.stop().catch((err) => logger.error({ err, service: m.name }, "service stop failed")),
        ),
      );
      if (!opts.redis) await redis.close();
      if (!opts.db) await db.close();
    },
  };
}
