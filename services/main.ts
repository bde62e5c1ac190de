import { ConfigError, loadConfig } from "./platform/config.js";
import { createLogger } from "./platform/logger.js";
import { createMesh } from "./mesh.js";

/** The one entry point: reads config, hosts the services named in SERVICES, drains on SIGTERM. */
async function main(): Promise<void> {
  let config;
  try {
    config = loadConfig(process.env);
  } catch (err) {
    if (err instanceof ConfigError) {
      console.error(`dabba: configuration error: ${err.message}`);
      process.exit(2);
    }
    throw err;
  }
  const logger = createLogger(config.logLevel);
  logger.info(
    {
      services: config.services,
      database: config.databaseUrl ? "postgres" : `pglite (${config.dataDir})`,
      redis: config.redisUrl ? "redis" : "in-process",
    },
    "starting dabba",
  );
  if (config.auth.devSecret) {
    logger.warn(
      { file: `${config.dataDir}/dev-jwt-secret` },
      "no JWT_SECRET or JWT_PUBLIC_KEY configured: using a generated development secret stored in the data folder; mint tokens with `npm run token`",
    );
  }
  const mesh = await createMesh(config, { logger });
  const { port, webPort } = await mesh.start();
  logger.info({ grpc: port, web: webPort, services: config.services }, `dabba listening: gRPC on :${port}, Connect/gRPC-web on :${webPort}`);

  let stopping = false;
  const shutdown = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, "draining calls and streams");
    try {
      await mesh.stop();
      logger.info("stopped");
      process.exit(0);
    } catch (err) {
      logger.error({ err }, "shutdown failed");
      process.exit(1);
    }
  };
  process.on("SIGTERM", () => void shutdown("SIGTERM"));
  process.on("SIGINT", () => void shutdown("SIGINT"));
}

main().catch((err) => {
  console.error("dabba: failed to start:", err instanceof Error ? err.message : err);
  process.exit(1);
});
