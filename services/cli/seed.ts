/**
 * Loads a deterministic demo city into the catalog.
 *
 *   npm run seed -- --seed 42 --restaurants 5000 [--reset]
 *
 * Uses DATABASE_URL when set, else the embedded PGlite in DABBA_DATA_DIR (default ./.dabba/data).
 * Runs the catalog migrations first. --reset deletes every catalog row before loading.
 */
import { parseArgs } from "node:util";
import cliProgress from "cli-progress";
import { catalogMigrations } from "../catalog/db/migrations.js";
import { seedCity } from "../catalog/seed.js";
import { createCatalogStore } from "../catalog/store.js";
import { openDb } from "../platform/db.js";

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      seed: { type: "string", default: "42" },
      restaurants: { type: "string", default: "5000" },
      reset: { type: "boolean", default: false },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log("usage: npm run seed -- [--seed N] [--restaurants N] [--reset]");
    return;
  }
  const seed = Number(values.seed);
  const restaurants = Number(values.restaurants);
  if (!Number.isInteger(seed) || seed < 0 || seed > 2 ** 31) throw new Error("--seed must be a non-negative integer");
  if (!Number.isInteger(restaurants) || restaurants < 1 || restaurants > 1_000_000) throw new Error("--restaurants must be 1 to 1000000");

  const databaseUrl = process.env.DATABASE_URL || undefined;
  const db = await openDb({ databaseUrl, dataDir: process.env.DABBA_DATA_DIR ?? "./.dabba/data" });
  try {
    await db.migrate("catalog", catalogMigrations);
    const store = createCatalogStore(db);
    if (values.reset) {
      await store.deleteAll();
      console.log("catalog emptied");
    } else if (await store.getRestaurant(`rst-${seed}-0`)) {
      throw new Error(`seed ${seed} is already loaded; pass --reset to reload`);
    }
    console.log(`loading ${restaurants} restaurants (seed ${seed}) into ${db.kind === "postgres" ? "Postgres" : "embedded PGlite"}`);
    const bar = new cliProgress.SingleBar(
      { format: "seeding [{bar}] {percentage}% | {value}/{total} restaurants | {duration}s", hideCursor: true },
      cliProgress.Presets.shades_classic,
    );
    bar.start(restaurants, 0);
    const summary = await seedCity(db, { seed, restaurants, store, onProgress: (done) => bar.update(done) });
    bar.stop();
    console.log(
      `seeded ${summary.restaurants} restaurants, ${summary.items} items, ${summary.options} options (${summary.categories} categories, ${summary.groups} groups) in ${summary.seconds}s`,
    );
  } finally {
    await db.close();
  }
}

main().catch((err) => {
  console.error(`seed failed: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
