import { createClient, type Client, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import type { DescService } from "@bufbuild/protobuf";
import { createCatalogStore } from "../../services/catalog/store.js";
import { createMesh, type Mesh } from "../../services/mesh.js";
import { mintToken, type Role } from "../../services/platform/auth.js";
import { testConfig, type Config } from "../../services/platform/config.js";
import { openDb } from "../../services/platform/db.js";
import { createLogger } from "../../services/platform/logger.js";
import { openRedis } from "../../services/platform/redis.js";
import { redisUrl, requireReal, uniqueId } from "./backends.js";
import { fixtureRestaurant } from "./fixtures.js";
import { createGrpcJsTransport } from "./grpc-js-transport.js";
import { createRunDatabase } from "./run-database.js";

export type Backend = "embedded" | "real";
export type ClientKind = "grpc-js" | "connect-grpc" | "connect" | "grpc-web";
export const CLIENT_KINDS: ClientKind[] = ["grpc-js", "connect-grpc", "connect", "grpc-web"];

/** A running dabba process (all services, both listeners on ephemeral ports) for a test suite. */
export interface TestMesh {
  mesh: Mesh;
  config: Config;
  port: number;
  webPort: number;
  /** Id of a fixture restaurant (open, two dishes, an option group). */
  restaurantId: string;
  token(role: Role, sub: string, restaurantId?: string): Promise<string>;
  /** A raw transport of the given kind: grpc-js and connect-grpc reach the gRPC port, connect and grpc-web the web port. */
  transport(kind: ClientKind): Transport;
  /** A generated client of the given kind that sends the token of (role, sub). */
  client<T extends DescService>(desc: T, kind: ClientKind, role: Role, sub: string, restaurantId?: string): Promise<Client<T>>;
  close(): Promise<void>;
}

export async function startTestMesh(backend: Backend, overrides: Partial<Config> = {}): Promise<TestMesh> {
  if (backend === "real") {
    await requireReal("postgres");
    await requireReal("redis");
  }
  const run = await (backend === "real" ? createRunDatabase("mesh_test") : undefined);
  const config = testConfig({ databaseUrl: run?.url, redisUrl: backend === "real" ? redisUrl() : undefined, ...overrides });
  const logger = createLogger(config.logLevel);
  const db = await openDb({ databaseUrl: config.databaseUrl, dataDir: "memory://", logger });
  const redis = await openRedis({ redisUrl: config.redisUrl, keyPrefix: `test:${uniqueId()}:`, logger });
  const mesh = await createMesh(config, { logger, db, redis });
  const { port, webPort } = await mesh.start();
  const restaurantId = `r-${uniqueId()}`;
  await createCatalogStore(db).insertRestaurants([fixtureRestaurant(restaurantId)]);
  const closers: (() => void)[] = [];
  const transport = (kind: ClientKind): Transport => {
    switch (kind) {
      case "grpc-js": {
        const t = createGrpcJsTransport(`127.0.0.1:${port}`);
        closers.push(() => t.close());
        return t;
      }
      case "connect-grpc":
        return createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}` });
      case "connect":
        return createConnectTransport({ baseUrl: `http://127.0.0.1:${webPort}`, httpVersion: "1.1" });
      case "grpc-web":
        return createGrpcWebTransport({ baseUrl: `http://127.0.0.1:${webPort}`, httpVersion: "1.1" });
    }
  };
  const token = (role: Role, sub: string, restaurantId?: string) => mintToken(config.auth, { role, sub, restaurantId });
  return {
    mesh,
    config,
    port,
    webPort,
    restaurantId,
    token,
    transport,
    async client(desc, kind, role, sub, rid) {
      const t = transport(kind);
      const tok = await token(role, sub, rid);
      const withToken: Transport = {
        unary: (m, s, to, h, i, cv) => {
          const hh = new Headers(h);
          if (!hh.has("authorization")) hh.set("authorization", `Bearer ${tok}`);
          return t.unary(m, s, to, hh, i, cv);
        },
        stream: (m, s, to, h, i, cv) => {
          const hh = new Headers(h);
          if (!hh.has("authorization")) hh.set("authorization", `Bearer ${tok}`);
          return t.stream(m, s, to, hh, i, cv);
        },
      };
      return createClient(desc, withToken);
    },
    async close() {
      for (const c of closers) c();
      await mesh.stop();
      await redis.close();
      await db.close();
      await run?.drop();
    },
  };
}
