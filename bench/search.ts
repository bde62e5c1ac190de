/**
 * SearchRestaurants under load: 50,000 restaurants in one city on real Postgres, a mix of
 * geo-only, text (with typos), filtered and paged searches through the real CatalogService
 * handlers and gRPC host, in three closed-loop phases: 1 client (~10 s: latency of one search
 * alone), 4 clients and 16 clients (~15 s each). The headline qps/p50/p99 are the 16-client
 * phase; on a 2-core machine shared with Postgres that mostly measures queueing, so the 4-client
 * and single-client figures are reported beside it, with the load average. Prints one JSON line last.
 *
 *   DATABASE_URL=postgres://... npm run bench -- search
 *
 * The city is seeded once (seed 7) and reused: the marker is restaurant rst-7-49999 plus an
 * exact count; anything else in the catalog tables is deleted before seeding.
 */
import { create } from "@bufbuild/protobuf";
import { createClient, createRouterTransport, type Client, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import cliProgress from "cli-progress";
import { sql } from "kysely";
import { readFile } from "node:fs/promises";
import pg from "pg";
import { CatalogService, SearchRestaurantsRequestSchema } from "../gen/dabba/catalog/v1/catalog_service_pb.js";
import { LatLngSchema } from "../gen/dabba/common/v1/common_pb.js";
import { createCatalogService } from "../services/catalog/index.js";
import { DEMO_CITY, mulberry32, seedCity, spreadFor } from "../services/catalog/seed.js";
import { createCatalogStore } from "../services/catalog/store.js";
import { authInterceptor, bearer, createVerifier, mintToken } from "../services/platform/auth.js";
import { testConfig } from "../services/platform/config.js";
import { openDb } from "../services/platform/db.js";
import { createLogger } from "../services/platform/logger.js";
import type { RedisPorts } from "../services/platform/redis.js";

const RESTAURANTS = 50_000;
const SEED = 7;
const CLIENTS = 16;
const DURATION_MS = Number(process.env.BENCH_SECONDS ?? 15) * 1000;
const SINGLE_DURATION_MS = Math.min(DURATION_MS, 10_000);

const QUERIES = ["biriyani", "piza", "burger", "sushi", "thai curry", "paneer", "tacos", "noodles", "cofee", "dosa", "brownie", "ramen"];
const CUISINES = ["indian", "pizza", "burgers", "chinese", "desserts", "vegan", "thai", "mexican"];

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}
const r2 = (x: number) => Math.round(x * 100) / 100;

export async function run(): Promise<void> {
  const databaseUrl = process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test";
  const log = (msg: string) => console.error(`[bench search] ${msg}`);
  const db = await openDb({ databaseUrl, dataDir: "memory://", poolSize: CLIENTS });
  const config = testConfig({ databaseUrl });
  const logger = createLogger("silent");
  const module = createCatalogService({ config, db, redis: {} as RedisPorts, logger, peer: () => { throw new Error("no peers in the bench"); } });
  await db.migrate("catalog", module.migrations);

  // Seed once.
  const store = createCatalogStore(db);
  const marker = await store.getRestaurant(`rst-${SEED}-${RESTAURANTS - 1}`);
  if (!marker || (await store.countRestaurants()) !== RESTAURANTS) {
    log(`seeding ${RESTAURANTS} restaurants (seed ${SEED}) into ${databaseUrl.replace(/:[^:@/]*@/, ":***@")}; this takes a few minutes once`);
    await store.deleteAll();
    const bar = new cliProgress.SingleBar({ format: "seeding [{bar}] {value}/{total} | {duration}s", stream: process.stderr }, cliProgress.Presets.shades_classic);
    bar.start(RESTAURANTS, 0);
    const s = await seedCity(db, { seed: SEED, restaurants: RESTAURANTS, store, batch: 500, onProgress: (d) => bar.update(d) });
    bar.stop();
    log(`seeded ${s.restaurants} restaurants, ${s.items} items, ${s.options} options in ${s.seconds}s`);
  } else {
    log(`reusing the seeded city (seed ${SEED}, ${RESTAURANTS} restaurants)`);
    await store.analyze();
  }

  // Transport: the real host over gRPC when it is there and starts; else in-memory.
  const verifier = await createVerifier(config.auth);
  let transport: Transport;
  let mode: string;
  let stopHost: (() => Promise<void>) | undefined;
  try {
    const { createHost } = await import("../services/platform/host.js");
    const host = createHost({ config, logger, modules: [module], interceptors: [authInterceptor(verifier)] });
    const { port } = await host.start();
    stopHost = () => host.stop();
    transport = createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}` });
    mode = "grpc (grpc-js host, connect-node gRPC client)";
  } catch (err) {
    log(`host unavailable (${(err as Error).message}); using createRouterTransport`);
    transport = createRouterTransport(({ service }) => service(CatalogService, module.impl as any), {
      router: { interceptors: [authInterceptor(verifier)] },
    });
    mode = "in-memory (createRouterTransport)";
  }
  log(`transport: ${mode}`);
  const token = await mintToken(config.auth, { role: "customer", sub: "bench" }, 3600);
  const client: Client<typeof CatalogService> = createClient(CatalogService, transport);
  const callOpts = { headers: { authorization: `Bearer ${token}` } };
  void bearer;

  // Baseline: a raw single-row indexed query on the same database.
  const raw = new pg.Client({ connectionString: databaseUrl });
  await raw.connect();
  const base: number[] = [];
  for (let i = 0; i < 2000; i++) {
    const t = performance.now();
    await raw.query("SELECT 1 FROM catalog_restaurants WHERE id = $1", [`rst-${SEED}-${(i * 7919) % RESTAURANTS}`]);
    base.push(performance.now() - t);
  }
  await raw.end();
  base.sort((a, b) => a - b);

  // Warm-up.
  for (let i = 0; i < 50; i++) {
    await client.searchRestaurants(create(SearchRestaurantsRequestSchema, { location: create(LatLngSchema, { lat: DEMO_CITY.lat, lng: DEMO_CITY.lng }), query: QUERIES[i % QUERIES.length] }), callOpts);
  }

  const spread = spreadFor(RESTAURANTS) * 0.8;
  const counts = { geo: 0, text: 0, filtered: 0, paged: 0, errors: 0, results: 0 };

  /** One closed-loop run: `clients` callers, each sending its next search when the last answered. */
  async function phase(clients: number, durationMs: number): Promise<{ calls: number; qps: number; p50: number; p90: number; p99: number }> {
    const lat: number[] = [];
    const started = performance.now();
    const deadline = started + durationMs;
    const bar = new cliProgress.SingleBar({ format: `${String(clients).padStart(2)} clients [{bar}] {percentage}% | {calls} calls | {qps} qps`, stream: process.stderr }, cliProgress.Presets.shades_classic);
    bar.start(100, 0, { calls: 0, qps: 0 });
    const ticker = setInterval(() => {
      const el = performance.now() - started;
      bar.update(Math.min(100, Math.round((el / durationMs) * 100)), { calls: lat.length, qps: Math.round(lat.length / (el / 1000)) });
    }, 250);
    async function worker(id: number): Promise<void> {
      // The same query sequence per worker id in every phase and every run.
      const rng = mulberry32(1000 + id);
      while (performance.now() < deadline) {
        const bearing = rng() * 2 * Math.PI;
        const d = spread * Math.sqrt(rng());
        const location = create(LatLngSchema, {
          lat: DEMO_CITY.lat + (d / 111.32) * Math.cos(bearing),
          lng: DEMO_CITY.lng + (d / (111.32 * Math.cos((DEMO_CITY.lat * Math.PI) / 180))) * Math.sin(bearing),
        });
        const kind = rng();
        const req = create(SearchRestaurantsRequestSchema, { location });
        let pages = 1;
        if (kind < 0.4) counts.geo++;
        else if (kind < 0.65) {
          req.query = QUERIES[Math.floor(rng() * QUERIES.length)];
          counts.text++;
        } else if (kind < 0.85) {
          req.cuisines = [CUISINES[Math.floor(rng() * CUISINES.length)]];
          req.minRating = 3.5;
          req.openNow = rng() < 0.5;
          counts.filtered++;
        } else {
          pages = 3;
          counts.paged++;
        }
        for (let p = 0; p < pages; p++) {
          const t = performance.now();
          try {
            const res = await client.searchRestaurants(req, callOpts);
            lat.push(performance.now() - t);
            counts.results += res.results.length;
            if (!res.nextPageToken) break;
            req.pageToken = res.nextPageToken;
          } catch (err) {
            counts.errors++;
            if (counts.errors < 5) log(`error: ${(err as Error).message}`);
            break;
          }
        }
      }
    }
    await Promise.all(Array.from({ length: clients }, (_, i) => worker(i)));
    clearInterval(ticker);
    bar.update(100, { calls: lat.length });
    bar.stop();
    const seconds = (performance.now() - started) / 1000;
    lat.sort((x, y) => x - y);
    const out = { calls: lat.length, qps: Math.round(lat.length / seconds), p50: r2(percentile(lat, 50)), p90: r2(percentile(lat, 90)), p99: r2(percentile(lat, 99)) };
    log(`${clients} client(s): ${JSON.stringify(out)}`);
    return out;
  }

  // Single client: the latency of one search with nothing queued in front of it. Then 4
  // clients (about what 2 cores serve without queueing much) and the 16-client closed loop,
  // whose latency on a 2-core machine is mostly waiting behind the other 15.
  const loadBefore = (await readFile("/proc/loadavg", "utf8").catch(() => "")).split(" ").slice(0, 3).join(" ");
  const single = await phase(1, SINGLE_DURATION_MS);
  const four = await phase(4, DURATION_MS);
  const main = await phase(CLIENTS, DURATION_MS);
  const loadAfter = (await readFile("/proc/loadavg", "utf8").catch(() => "")).split(" ").slice(0, 3).join(" ");
  const explain = await sql<{ "QUERY PLAN": string }>`EXPLAIN SELECT 1 FROM catalog_restaurants r WHERE earth_box(ll_to_earth(${DEMO_CITY.lat}::float8, ${DEMO_CITY.lng}::float8), 8000) @> r.geo`.execute(db.kysely);
  log(`plan of the geo prefilter: ${explain.rows.map((r) => r["QUERY PLAN"]).join(" / ").slice(0, 160)}`);
  log(`mix (all phases): ${JSON.stringify(counts)}; transport ${mode}`);
  await stopHost?.();
  await db.close();
  console.log(
    JSON.stringify({
      bench: "search",
      restaurants: RESTAURANTS,
      transport: mode.startsWith("grpc") ? "grpc" : "in-memory",
      clients: CLIENTS,
      calls: main.calls,
      errors: counts.errors,
      qps: main.qps,
      p50_ms: main.p50,
      p90_ms: main.p90,
      p99_ms: main.p99,
      clients4_qps: four.qps,
      clients4_p50_ms: four.p50,
      clients4_p99_ms: four.p99,
      single_qps: single.qps,
      single_p50_ms: single.p50,
      single_p99_ms: single.p99,
      baseline_pg_query_ms_p50: r2(percentile(base, 50)),
      loadavg_before: loadBefore,
      loadavg_after: loadAfter,
    }),
  );
}
