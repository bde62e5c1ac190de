import { loadConfig } from "../platform/config.js";
import { openDb } from "../platform/db.js";
import { createLogger } from "../platform/logger.js";
import { createMesh } from "../mesh.js";

/** Runs the migrations of the services named in SERVICES (default all) and exits. */
const config = loadConfig({ ...process.env, SERVICES: process.env.SERVICES ?? "all", DEMO_SEED: "false" });
const logger = createLogger(config.logLevel);
const db = await openDb({ databaseUrl: config.databaseUrl, dataDir: config.dataDir, logger });
const mesh = await createMesh(config, { logger, db });
for (const m of mesh.modules.values()) {
  const n = Object.keys(m.migrations).length;
  if (n > 0) await db.migrate(m.name, m.migrations);
  console.log(`migrated ${m.name}: ${n} migration(s) known`);
}
await mesh.redis.close();
await db.close();
console.log(`done (${config.databaseUrl ? "postgres" : `pglite at ${config.dataDir}`})`);
