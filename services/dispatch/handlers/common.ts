import { invalid } from "../../platform/errors.js";
import type { Config } from "../../platform/config.js";
import type { Logger } from "../../platform/logger.js";
import type { RedisPorts } from "../../platform/redis.js";
import type { Engine } from "../engine.js";
import type { DispatchStore } from "../store.js";

/** What every dispatch handler needs. */
export interface DispatchHandlerDeps {
  config: Config;
  engine: Engine;
  store: DispatchStore;
  redis: RedisPorts;
  logger: Logger;
}

/** Parses a fencing token field: 1 to 2^53-1. */
export function parseToken(field: string, v: bigint): bigint {
  if (v <= 0n || v > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw invalid(field, "must be the offer's fencing token (1 to 2^53-1)");
  }
  return v;
}
