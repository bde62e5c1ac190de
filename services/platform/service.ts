import type { DescService } from "@bufbuild/protobuf";
import type { ServiceImpl, Transport } from "@connectrpc/connect";
import type { Migration } from "kysely";
import type { Config } from "./config.js";
import type { Db } from "./db.js";
import type { RedisPorts } from "./redis.js";
import type { Logger } from "./logger.js";

/** The five services of the mesh; also the values accepted in SERVICES. */
export const SERVICE_NAMES = ["catalog", "order", "dispatch", "location", "tracking"] as const;
export type ServiceName = (typeof SERVICE_NAMES)[number];

/** What every service gets from the host. */
export interface ServiceDeps {
  config: Config;
  db: Db;
  redis: RedisPorts;
  logger: Logger;
  /** Transport to reach a peer service: in-process when co-hosted, gRPC otherwise. Carries a service token. */
  peer(name: ServiceName): Transport;
}

/** A service as the host sees it: one Connect implementation mounted on both listeners. */
export interface ServiceModule {
  name: ServiceName;
  desc: DescService;
  impl: Partial<ServiceImpl<DescService>>;
  /** Frozen, timestamp-named migrations of this service; run with its own migration table. */
  migrations: Record<string, Migration>;
  start(): Promise<void>;
  stop(): Promise<void>;
}
