/**
 * PlaceOrder under load on real Postgres and Redis: the whole dabba mesh (all services, both
 * listeners on port 0) runs in this process; the load generator runs in a child process (this
 * same file, forked) and calls PlaceOrder on the grpc-js port with connect-node's gRPC transport
 * (DESIGN.md 7), one idempotency-key per call, 1-3 line carts with options, spread over many
 * customers whose tokens are minted up front. Prints one JSON line last.
 *
 *   DATABASE_URL=postgres://... REDIS_URL=redis://... npm run bench -- orders
 *
 * Warm-up: 50 sequential placements, then BENCH_WARM_SECONDS (default 8 s) at 32 callers.
 * Phase 1: open loop at a fixed rate (BENCH_RATE, default 300/s) for BENCH_SECONDS (default
 * 20 s); every call is sent at its planned time whatever the completions, and its latency is
 * measured from that planned time, so a stall shows up as latency (no coordinated omission).
 * Phase 2: closed loop at 16, 32, 64, 128 concurrent callers for BENCH_STEP_SECONDS (default 5 s)
 * each; the best error-free step is the highest sustained rate.
 * Baselines, measured in the same run so the order figures can be read on any machine:
 *  - pg_cas_per_s: raw single-row compare-and-set UPDATEs through a pg Pool from 8 loops for ~5 s;
 *  - grpc_echo_per_s: a bare unary RPC in the same arrangement as the orders (grpc-js server in
 *    this process, connect-node gRPC transport in the forked child, 32 concurrent callers,
 *    BENCH_ECHO_SECONDS, default 5 s, after a 1 s warm-up). The handler decodes the request (a
 *    PlaceOrderRequest, as the load generator sends) and answers it back, encoded again: what one
 *    RPC costs here with nothing behind it. max_orders_per_s / grpc_echo_per_s is then the share
 *    of a bare RPC's rate that an order (one RPC plus its work) reaches.
 *
 * The per-customer placement rate limit is raised in config (it would otherwise throttle the
 * load at 30/min per customer); the limiter still runs on every placement. A fresh database is
 * created for the run and dropped after; Redis keys live under a run prefix and are removed.
 * After the run every order is checked: orders == successful placements, one PLACED history
 * row and one outbox row per order.
 */
import { fork, type ChildProcess } from "node:child_process";
import { create, createFileRegistry, fromBinary, toBinary, type DescService } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import * as grpc from "@grpc/grpc-js";
import { readFile } from "node:fs/promises";
import { loadavg } from "node:os";
import { fileURLToPath } from "node:url";
import { createClient, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Redis } from "ioredis";
import { sql } from "kysely";
import pg from "pg";
import { OrderService, PlaceOrderRequestSchema, file_dabba_order_v1_order_service } from "../gen/dabba/order/v1/order_service_pb.js";
import { mulberry32 } from "../services/catalog/seed.js";
import { createCatalogStore } from "../services/catalog/store.js";
import { createMesh } from "../services/mesh.js";
import { mintToken } from "../services/platform/auth.js";
import { testConfig } from "../services/platform/config.js";
import { openDb, type Db } from "../services/platform/db.js";
import { createLogger } from "../services/platform/logger.js";
import { openRedis } from "../services/platform/redis.js";
import { uniqueId } from "../test/helpers/backends.js";
import { NEARBY, fixtureRestaurant } from "../test/helpers/fixtures.js";
import { createRunDatabase } from "../test/helpers/run-database.js";

const RATE = Number(process.env.BENCH_RATE ?? 300);
const OPEN_MS = Number(process.env.BENCH_SECONDS ?? 20) * 1000;
const STEP_MS = Number(process.env.BENCH_STEP_SECONDS ?? 5) * 1000;
const WARM_MS = Number(process.env.BENCH_WARM_SECONDS ?? 8) * 1000;
const STEPS = (process.env.BENCH_CONCURRENCY ?? "16,32,64,128").split(",").map(Number);
const CUSTOMERS = 2000;
const RESTAURANTS = 8;
const CAS_LOOPS = 8;
const CAS_MS = 5000;
const PLACE_RATE_PER_MINUTE = 1_000_000;
const CHILD_ROLE = "DABBA_BENCH_ORDERS_LOADGEN";
const ECHO_MS = Number(process.env.BENCH_ECHO_SECONDS ?? 5) * 1000;
const ECHO_WARM_MS = 1000;
const ECHO_CONCURRENCY = 32;

const log = (msg: string) => console.error(`[bench orders] ${msg}`);
function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}
const r2 = (x: number) => Math.round(x * 100) / 100;
const r3 = (x: number) => Math.round(x * 1000) / 1000;

// ---------------------------------------------------------------------------------------------
// Messages between the server process and the load generator.

interface EchoPlan {
  type: "echo";
  port: number;
  warmMs: number;
  ms: number;
  concurrency: number;
}
interface EchoResult {
  calls: number;
  errors: number;
  perSecond: number;
  /** Load generator CPU over the measured calls. */
  cpuMs: number;
}
interface LoadPlan {
  type: "orders";
  port: number;
  runId: string;
  tokens: string[];
  restaurantIds: string[];
  rate: number;
  openMs: number;
  stepMs: number;
  steps: number[];
}
interface OpenResult {
  /** Sequential warm-up placements before the open loop (counted in the verification). */
  warm: number;
  sent: number;
  ok: number;
  errors: number;
  errorSamples: string[];
  p50: number;
  p90: number;
  p99: number;
  max: number;
  lateSends: number;
}
interface StepResult {
  concurrency: number;
  ok: number;
  errors: number;
  perSecond: number;
  p50: number;
  p99: number;
  max: number;
}
type ChildMessage =
  | { type: "echo"; result: EchoResult }
  | { type: "open"; result: OpenResult }
  | { type: "step"; result: StepResult }
  | { type: "done"; cpuMs: number }
  | { type: "failed"; message: string };

// ---------------------------------------------------------------------------------------------
// Server side (this process): database, mesh, fixtures, baseline, verification.

export async function run(): Promise<void> {
  const runDb = await createRunDatabase("bench_orders");
  const redisUrl = process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
  const runId = uniqueId();
  const keyPrefix = `bench:${runId}:`;
  log(`database ${new URL(runDb.url).pathname.slice(1)}, redis prefix ${keyPrefix}`);
  let child: ChildProcess | undefined;
  try {
    const pgCasPerS = await casBaseline(runDb.url);
    log(`baseline: raw Postgres single-row compare-and-set from ${CAS_LOOPS} loops: ${pgCasPerS}/s`);

    // The load generator: a second process, so it does not share this event loop (it still shares the 2 cores).
    child = fork(fileURLToPath(import.meta.url), [], {
      execArgv: ["--import", "tsx", ...(process.env.BENCH_CHILD_CPU_PROF ? ["--cpu-prof", `--cpu-prof-dir=${process.env.BENCH_CHILD_CPU_PROF}`] : [])],
      env: { ...process.env, [CHILD_ROLE]: "1" },
      stdio: ["ignore", "pipe", "inherit", "ipc"],
    });
    child.stdout?.pipe(process.stderr);
    const messages = childMessages(child);
    const echo = await echoBaseline(child, messages);
    log(
      `baseline: bare unary gRPC echo (grpc-js server here, connect-node gRPC client in the child, ${ECHO_CONCURRENCY} callers): ` +
        `${echo.perSecond}/s, CPU per call: server ${echo.serverCpuUs} us, client ${echo.clientCpuUs} us; load average ${loadavg().map((x) => x.toFixed(1)).join(" ")}`,
    );

    const config = testConfig({
      databaseUrl: runDb.url,
      redisUrl,
      logLevel: "silent",
      // No order may meet its answer timer during the run (the check below wants each order PLACED only).
      orders: { ...testConfig().orders, placeRatePerMinute: PLACE_RATE_PER_MINUTE, answerTimeoutS: 3600 },
    });
    log(`placement rate limit raised to ${PLACE_RATE_PER_MINUTE}/min per customer (default ${testConfig().orders.placeRatePerMinute}); the limiter still runs on every call`);
    const logger = createLogger("silent");
    const db = await openDb({ databaseUrl: runDb.url, dataDir: "memory://", logger });
    const redis = await openRedis({ redisUrl, keyPrefix, logger });
    const mesh = await createMesh(config, { logger, db, redis });
    const { port } = await mesh.start();
    log(`mesh listening: gRPC port ${port} (all services, Postgres pool default size)`);

    const restaurantIds = Array.from({ length: RESTAURANTS }, (_, i) => `bench-r${i}`);
    await createCatalogStore(db).insertRestaurants(
      restaurantIds.map((id, i) => fixtureRestaurant(id, { lat: 12.9716 + (i % 3) * 0.004, lng: 77.5946 + Math.floor(i / 3) * 0.004 })),
    );
    const tokens = await Promise.all(
      Array.from({ length: CUSTOMERS }, (_, i) => mintToken(config.auth, { role: "customer", sub: `bench-c${i}` }, 3600)),
    );
    log(`${RESTAURANTS} fixture restaurants, ${CUSTOMERS} customer tokens minted`);

    const plan: LoadPlan = { type: "orders", port, runId, tokens, restaurantIds, rate: RATE, openMs: OPEN_MS, stepMs: STEP_MS, steps: STEPS };
    // CPU per order is the figure this shared 2-core machine cannot blur: wall-clock rates move
    // with whatever else runs, CPU time spent per order does not (much).
    const cpu0 = process.cpuUsage();
    const pg0 = await postgresCpuMs(db);
    const xacts0 = await transactions(db);
    child.send(plan);
    const results = await (async () => {
      let open: OpenResult | undefined;
      const steps: StepResult[] = [];
      for (;;) {
        const m = await messages.next();
        if (m.type === "open") open = m.result;
        else if (m.type === "step") steps.push(m.result);
        else if (m.type === "done") {
          if (!open) throw new Error("load generator sent no open-loop result");
          return { open, steps, childCpuMs: m.cpuMs };
        }
      }
    })();
    child = undefined;
    const cpu1 = process.cpuUsage(cpu0);
    const pg1 = await postgresCpuMs(db);
    await new Promise((r) => setTimeout(r, 1500)); // backends report their counters within a second of going idle
    const xacts = (await transactions(db)) - xacts0 - 2; // minus this function's own two reads

    // Let the relay publish the tail, then check every order's rows.
    const k = db.kysely;
    // Orders still PAYMENT_PENDING are settled by the reconciler (its retries back off up to PAYMENTS_RETRY_MAX_MS).
    const deadline = Date.now() + 120_000;
    let unpublished = -1;
    let pending = -1;
    let shown = 0;
    while (Date.now() < deadline) {
      const r = await sql<{ unpublished: number; pending: number }>`
        select (select count(*)::int from outbox where published_at is null) as unpublished,
               (select count(*)::int from orders where status = 'PAYMENT_PENDING') as pending`.execute(k);
      ({ unpublished, pending } = r.rows[0]!);
      if (unpublished === 0 && pending === 0) break;
      if (Date.now() - shown > 5_000) {
        log(`waiting: ${pending} orders PAYMENT_PENDING, ${unpublished} outbox rows unpublished`);
        shown = Date.now();
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    const streamLength = await streamLen(redisUrl, `${keyPrefix}events:orders`);
    // An order whose authorization timed out (the gateway's calls queue with everything else at
    // overload) was written PAYMENT_PENDING and made PLACED by the reconciler: its history is
    // PAYMENT_PENDING, PLACED and its events include payment ones. Every order must end PLACED.
    const check = await sql<{ orders: number; not_placed: number; via_pending: number; bad_history: number; bad_outbox: number; outbox: number; keys: number }>`
      select
        (select count(*)::int from orders) as orders,
        (select count(*)::int from orders where status <> 'PLACED') as not_placed,
        (select count(distinct order_id)::int from order_status_history where status = 'PAYMENT_PENDING') as via_pending,
        (select count(*)::int from orders o
           where (select count(*) from order_status_history h where h.order_id = o.id and h.status = 'PLACED') <> 1
              or (select count(*) from order_status_history h where h.order_id = o.id and h.status not in ('PLACED', 'PAYMENT_PENDING')) <> 0
              or (select count(*) from order_status_history h where h.order_id = o.id and h.status = 'PAYMENT_PENDING') > 1) as bad_history,
        (select count(*)::int from orders o
           where (select count(*) from outbox x where x.event_key = o.id and x.event_type = 'placed') <> 1) as bad_outbox,
        (select count(*)::int from outbox) as outbox,
        (select count(*)::int from idempotency_keys) as keys`.execute(k);
    const c = check.rows[0]!;
    const placed = results.open.warm + results.open.ok + results.steps.reduce((s, x) => s + x.ok, 0);
    const verified =
      c.orders === placed && c.not_placed === 0 && c.bad_history === 0 && c.bad_outbox === 0 && c.keys === placed && unpublished === 0 && streamLength === c.outbox;
    log(
      `verify: ${c.orders} orders for ${placed} successful placements, ${c.keys} idempotency keys, ${c.not_placed} not PLACED, ` +
        `${c.via_pending} via PAYMENT_PENDING (authorization timed out, settled by the reconciler), ` +
        `${c.bad_history} with a history other than [PAYMENT_PENDING,] PLACED, ${c.bad_outbox} without exactly one placed event, ` +
        `${unpublished} outbox rows unpublished, ${streamLength} events in the stream for ${c.outbox} outbox rows: ${verified ? "OK" : "MISMATCH"}`,
    );

    await mesh.stop();
    await redis.close();
    await db.close();

    const perOrder = (ms: number) => (placed > 0 ? Math.round((ms / placed) * 1000) / 1000 : 0);
    const serverCpuMs = (cpu1.user + cpu1.system) / 1000;
    let pgCpuMs: number | null = null;
    if (pg0 && pg1) {
      pgCpuMs = 0;
      for (const [pid, ms] of pg1) pgCpuMs += ms - (pg0.get(pid) ?? 0);
    }
    log(
      `CPU per order: server ${perOrder(serverCpuMs)} ms, load generator ${perOrder(results.childCpuMs)} ms, ` +
        `Postgres backends of this database ${pgCpuMs === null ? "n/a (not local)" : `${perOrder(pgCpuMs)} ms`}; load average ${loadavg().map((x) => x.toFixed(1)).join(" ")}`,
    );
    log(`Postgres transactions (each autocommit statement is one) per order: ${perOrder(xacts)}`);
    const best = results.steps.filter((s) => s.errors === 0).sort((a, b) => b.perSecond - a.perSecond)[0];
    const o = results.open;
    log(`open loop ${RATE}/s: sent ${o.sent}, ok ${o.ok}, errors ${o.errors}, p50 ${r2(o.p50)} ms, p99 ${r2(o.p99)} ms, max ${r2(o.max)} ms`);
    for (const s of results.steps) log(`closed loop c=${s.concurrency}: ${s.perSecond}/s, p50 ${r2(s.p50)} ms, p99 ${r2(s.p99)} ms, errors ${s.errors}`);
    console.log(
      JSON.stringify({
        bench: "orders",
        rate_per_s: RATE,
        p50_ms: r2(o.p50),
        p99_ms: r2(o.p99),
        max_ms: r2(o.max),
        errors: o.errors,
        max_orders_per_s: best?.perSecond ?? 0,
        max_p99_ms: best ? r2(best.p99) : null,
        concurrency: best?.concurrency ?? null,
        step_errors: results.steps.reduce((s, x) => s + x.errors, 0),
        pg_cas_per_s: pgCasPerS,
        grpc_echo_per_s: echo.perSecond,
        grpc_echo_server_cpu_us_per_call: echo.serverCpuUs,
        grpc_echo_client_cpu_us_per_call: echo.clientCpuUs,
        orders_per_echo: echo.perSecond > 0 ? r3((best?.perSecond ?? 0) / echo.perSecond) : null,
        orders_per_pg_cas: pgCasPerS > 0 ? r3((best?.perSecond ?? 0) / pgCasPerS) : null,
        verified,
        via_payment_pending: c.via_pending,
        server_cpu_ms_per_order: perOrder(serverCpuMs),
        loadgen_cpu_ms_per_order: perOrder(results.childCpuMs),
        pg_cpu_ms_per_order: pgCpuMs === null ? null : perOrder(pgCpuMs),
        pg_xacts_per_order: perOrder(xacts),
        loadavg_1m: Math.round(loadavg()[0]! * 10) / 10,
        load_generator: "child process, connect-node gRPC transport",
        place_rate_per_minute: PLACE_RATE_PER_MINUTE,
        warmup_s: WARM_MS / 1000,
        warmup_orders: o.warm,
      }),
    );
    if (!verified) process.exitCode = 1;
  } finally {
    child?.kill();
    await cleanupRedis(redisUrl, keyPrefix).catch((err) => log(`redis cleanup failed: ${(err as Error).message}`));
    await runDb.drop();
  }
}

/** Messages from the load generator, one at a time; a failure or exit of the child rejects. */
function childMessages(child: ChildProcess): { next(): Promise<Exclude<ChildMessage, { type: "failed" }>> } {
  const queue: ChildMessage[] = [];
  let waiting: { resolve: (m: ChildMessage) => void; reject: (e: Error) => void } | undefined;
  let failure: Error | undefined;
  const fail = (e: Error) => {
    failure ??= e;
    waiting?.reject(failure);
    waiting = undefined;
  };
  child.on("message", (m: ChildMessage) => {
    if (m.type === "failed") return fail(new Error(`load generator: ${m.message}`));
    if (waiting) {
      waiting.resolve(m);
      waiting = undefined;
    } else queue.push(m);
  });
  child.once("exit", (code) => fail(new Error(`load generator exited with ${code}`)));
  return {
    next() {
      const m = queue.shift();
      if (m) return Promise.resolve(m as Exclude<ChildMessage, { type: "failed" }>);
      if (failure) return Promise.reject(failure);
      return new Promise((resolve, reject) => (waiting = { resolve: resolve as (m: ChildMessage) => void, reject }));
    },
  };
}

/**
 * dabba.bench.v1.EchoService/Echo(PlaceOrderRequest) returns (PlaceOrderRequest), described at
 * run time (no generated code for a bench-only service).
 */
function echoService(): DescService {
  const file = create(FileDescriptorProtoSchema, {
    name: "dabba/bench/v1/echo.proto",
    package: "dabba.bench.v1",
    syntax: "proto3",
    dependency: [file_dabba_order_v1_order_service.proto.name],
    service: [
      {
        name: "EchoService",
        method: [{ name: "Echo", inputType: ".dabba.order.v1.PlaceOrderRequest", outputType: ".dabba.order.v1.PlaceOrderRequest" }],
      },
    ],
  });
  const registry = createFileRegistry(file, (name) => (name === file_dabba_order_v1_order_service.proto.name ? file_dabba_order_v1_order_service : undefined));
  return registry.getService("dabba.bench.v1.EchoService")!;
}

/** The bare-RPC baseline: a grpc-js echo server here, the child calling it as it will call PlaceOrder. */
async function echoBaseline(
  child: ChildProcess,
  messages: ReturnType<typeof childMessages>,
): Promise<{ perSecond: number; serverCpuUs: number; clientCpuUs: number }> {
  const server = new grpc.Server();
  const desc = echoService();
  const method = desc.methods[0]!;
  server.addService(
    {
      echo: {
        path: `/${desc.typeName}/${method.name}`,
        requestStream: false,
        responseStream: false,
        requestSerialize: (m: unknown) => Buffer.from(toBinary(PlaceOrderRequestSchema, m as never)),
        requestDeserialize: (b: Buffer) => fromBinary(PlaceOrderRequestSchema, b),
        responseSerialize: (m: unknown) => Buffer.from(toBinary(PlaceOrderRequestSchema, m as never)),
        responseDeserialize: (b: Buffer) => fromBinary(PlaceOrderRequestSchema, b),
      },
    } as grpc.ServiceDefinition,
    { echo: (call: grpc.ServerUnaryCall<unknown, unknown>, cb: grpc.sendUnaryData<unknown>) => cb(null, call.request) },
  );
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))),
  );
  try {
    const plan: EchoPlan = { type: "echo", port, warmMs: ECHO_WARM_MS, ms: ECHO_MS, concurrency: ECHO_CONCURRENCY };
    child.send(plan);
    // The child reports when the warm-up ends and when the measured calls end; server CPU is taken between the two.
    const warm = await messages.next();
    if (warm.type !== "echo") throw new Error(`load generator: expected the echo warm-up, got ${warm.type}`);
    const cpu0 = process.cpuUsage();
    const m = await messages.next();
    const cpu = process.cpuUsage(cpu0);
    if (m.type !== "echo") throw new Error(`load generator: expected the echo result, got ${m.type}`);
    const r = m.result;
    if (r.errors > 0) throw new Error(`echo baseline: ${r.errors} calls failed`);
    const us = (ms: number) => (r.calls > 0 ? Math.round((ms * 1000) / r.calls) : 0);
    return { perSecond: r.perSecond, serverCpuUs: us((cpu.user + cpu.system) / 1000), clientCpuUs: us(r.cpuMs) };
  } finally {
    server.forceShutdown();
  }
}

/** Raw Postgres: UPDATE ... WHERE id = $1 AND v = $2 from several loops, each on its own row. */
async function casBaseline(url: string): Promise<number> {
  const pool = new pg.Pool({ connectionString: url, max: CAS_LOOPS });
  try {
    await pool.query("create table bench_cas (id int primary key, v bigint not null)");
    await pool.query(`insert into bench_cas select g, 0 from generate_series(1, ${CAS_LOOPS}) g`);
    let n = 0;
    let lost = 0;
    const end = performance.now() + CAS_MS;
    const started = performance.now();
    await Promise.all(
      Array.from({ length: CAS_LOOPS }, async (_, i) => {
        let v = 0;
        while (performance.now() < end) {
          const r = await pool.query("UPDATE bench_cas SET v = v + 1 WHERE id = $1 AND v = $2", [i + 1, v]);
          if (r.rowCount === 1) {
            v++;
            n++;
          } else lost++;
        }
      }),
    );
    if (lost > 0) throw new Error(`baseline compare-and-set lost ${lost} times on uncontended rows`);
    const perS = Math.round(n / ((performance.now() - started) / 1000));
    await pool.query("drop table bench_cas");
    return perS;
  } finally {
    await pool.end();
  }
}

/** CPU time (ms) of each Postgres backend serving this database, when the server runs on this machine (from /proc). */
async function postgresCpuMs(db: Db): Promise<Map<number, number> | undefined> {
  const r = await sql<{ pid: number }>`select pid from pg_stat_activity where datname = current_database()`.execute(db.kysely);
  const out = new Map<number, number>();
  for (const { pid } of r.rows) {
    try {
      const stat = await readFile(`/proc/${pid}/stat`, "utf8");
      const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      // Fields 14 and 15 (utime, stime) are at 11 and 12 after the command; clock ticks of 10 ms.
      out.set(pid, (Number(f[11]) + Number(f[12])) * 10);
    } catch {
      return undefined;
    }
  }
  return out;
}

/** Committed plus rolled-back transactions of this database so far. */
async function transactions(db: Db): Promise<number> {
  const r = await sql<{ n: string }>`select (xact_commit + xact_rollback)::text as n from pg_stat_database where datname = current_database()`.execute(db.kysely);
  return Number(r.rows[0]!.n);
}

async function streamLen(url: string, key: string): Promise<number> {
  const r = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 });
  await r.connect();
  try {
    return await r.xlen(key);
  } finally {
    r.disconnect();
  }
}

async function cleanupRedis(url: string, prefix: string): Promise<void> {
  const r = new Redis(url, { lazyConnect: true, maxRetriesPerRequest: 1 });
  await r.connect();
  try {
    let cursor = "0";
    do {
      const [next, keys] = await r.scan(cursor, "MATCH", `${prefix}*`, "COUNT", 1000);
      cursor = next;
      if (keys.length) await r.del(...keys);
    } while (cursor !== "0");
  } finally {
    r.disconnect();
  }
}

// ---------------------------------------------------------------------------------------------
// Load generator (the forked child).

/** The echo baseline's client: closed loop, after a warm-up whose end it reports. */
async function echoLoad(plan: EchoPlan): Promise<void> {
  const desc = echoService();
  const method = desc.methods[0]!;
  const transport = createGrpcTransport({ baseUrl: `http://127.0.0.1:${plan.port}` });
  const rng = mulberry32(7);
  // A message like the load generator's PlaceOrder requests (a 2-line cart).
  const message = create(PlaceOrderRequestSchema, {
    restaurantId: "bench-r3",
    lines: [
      { itemId: "bench-r3-dosa", quantity: 2, optionIds: [], note: "extra chutney" },
      { itemId: "bench-r3-biryani", quantity: 1, optionIds: ["bench-r3-raita", "bench-r3-egg"], note: "" },
    ],
    delivery: { location: { lat: NEARBY.lat + rng() * 0.01, lng: NEARBY.lng }, addressLine: "17 Brigade Road", instructions: "ring the bell" },
    tipMinor: 50n,
    paymentToken: "tok_visa",
  });
  const headers = { authorization: `Bearer ${"x".repeat(200)}`, "idempotency-key": "echo-0000000000-1" };
  const loop = async (until: number, count: { calls: number; errors: number }) => {
    await Promise.all(
      Array.from({ length: plan.concurrency }, async () => {
        while (performance.now() < until) {
          try {
            await transport.unary(method as never, undefined, undefined, headers, message as never);
            count.calls++;
          } catch {
            count.errors++;
          }
        }
      }),
    );
  };
  await loop(performance.now() + plan.warmMs, { calls: 0, errors: 0 });
  process.send!({ type: "echo", result: { calls: 0, errors: 0, perSecond: 0, cpuMs: 0 } } satisfies ChildMessage);
  const count = { calls: 0, errors: 0 };
  const cpu0 = process.cpuUsage();
  const started = performance.now();
  await loop(started + plan.ms, count);
  const seconds = (performance.now() - started) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const result: EchoResult = { ...count, perSecond: Math.round(count.calls / seconds), cpuMs: (cpu.user + cpu.system) / 1000 };
  process.send!({ type: "echo", result } satisfies ChildMessage);
}

async function loadGenerator(plan: LoadPlan): Promise<void> {
  const glog = (msg: string) => console.error(`[bench orders load] ${msg}`);
  const transport: Transport = createGrpcTransport({ baseUrl: `http://127.0.0.1:${plan.port}` });
  const client = createClient(OrderService, transport);
  const rng = mulberry32(42);
  let seq = 0;
  const pick = <T>(xs: T[]) => xs[Math.floor(rng() * xs.length)]!;

  /** One PlaceOrder with its own key, a random customer and a 1-3 line cart. */
  function placeOne(): Promise<void> {
    const n = seq++;
    const c = Math.floor(rng() * plan.tokens.length);
    const rid = pick(plan.restaurantIds);
    const lines = Array.from({ length: 1 + Math.floor(rng() * 3) }, () => {
      if (rng() < 0.5) return { itemId: `${rid}-dosa`, quantity: 1 + Math.floor(rng() * 2), optionIds: [], note: rng() < 0.2 ? "extra chutney" : "" };
      const optionIds = [`${rid}-raita`, `${rid}-egg`].filter(() => rng() < 0.5);
      return { itemId: `${rid}-biryani`, quantity: 1 + Math.floor(rng() * 3), optionIds, note: "" };
    });
    return client
      .placeOrder(
        {
          restaurantId: rid,
          lines,
          delivery: {
            location: { lat: NEARBY.lat + (rng() - 0.5) * 0.02, lng: NEARBY.lng + (rng() - 0.5) * 0.02 },
            addressLine: `${1 + (n % 200)} Brigade Road`,
            instructions: rng() < 0.3 ? "ring the bell" : "",
          },
          tipMinor: BigInt(Math.floor(rng() * 4) * 50),
          paymentToken: "tok_visa",
        },
        { headers: { authorization: `Bearer ${plan.tokens[c]}`, "idempotency-key": `${plan.runId}-${n}` } },
      )
      .then(() => undefined);
  }

  const cpu0 = process.cpuUsage();
  // Warm-up (JIT of both processes, a full connection pool with its prepared statements, the
  // tables' first pages): 50 sequential placements, then WARM_MS of 32 concurrent callers. A cold
  // process on this 2-vCPU machine completes well under half its steady rate for ~10 s, which an
  // open loop that starts cold reports as seconds of queueing. Warm-up orders are verified too.
  let warm = 0;
  for (let i = 0; i < 50; i++) {
    await placeOne();
    warm++;
  }
  {
    const end = performance.now() + WARM_MS;
    await Promise.all(
      Array.from({ length: 32 }, async () => {
        while (performance.now() < end) {
          await placeOne();
          warm++;
        }
      }),
    );
    glog(`warm-up: ${warm} orders (${WARM_MS / 1000} s at 32 callers after 50 sequential)`);
  }

  // Phase 1: open loop.
  {
    const lat: number[] = [];
    const errorSamples: string[] = [];
    let errors = 0;
    let sent = 0;
    let lateSends = 0;
    const interval = 1000 / plan.rate;
    const total = Math.round((plan.openMs / 1000) * plan.rate);
    const t0 = performance.now() + 20;
    let secondLat: number[] = [];
    let secondErrors = 0;
    const inFlight = new Set<Promise<void>>();
    const ticker = setInterval(() => {
      secondLat.sort((a, b) => a - b);
      const el = (performance.now() - t0) / 1000;
      glog(`open ${el.toFixed(0)}s: sent ${sent}/${total}, done ${lat.length}, in flight ${inFlight.size}, errors ${errors}, last 1s p50 ${r2(percentile(secondLat, 50))} ms p99 ${r2(percentile(secondLat, 99))} ms`);
      secondLat = [];
      secondErrors = 0;
    }, 1000);
    await new Promise<void>((resolve) => {
      const tick = () => {
        const now = performance.now();
        while (sent < total && t0 + sent * interval <= now) {
          const planned = t0 + sent * interval;
          if (now - planned > 5) lateSends++;
          sent++;
          const p: Promise<void> = placeOne().then(
            () => {
              const ms = performance.now() - planned;
              lat.push(ms);
              secondLat.push(ms);
            },
            (err: unknown) => {
              errors++;
              secondErrors++;
              if (errorSamples.length < 5) errorSamples.push((err as Error).message);
            },
          );
          inFlight.add(p);
          void p.finally(() => inFlight.delete(p));
        }
        if (sent < total) {
          setTimeout(tick, Math.max(0, t0 + sent * interval - performance.now()));
        } else resolve();
      };
      setTimeout(tick, Math.max(0, t0 - performance.now()));
    });
    await Promise.all(inFlight);
    clearInterval(ticker);
    lat.sort((a, b) => a - b);
    for (const e of errorSamples) glog(`error: ${e}`);
    const result: OpenResult = {
      sent,
      warm,
      ok: lat.length,
      errors,
      errorSamples,
      p50: percentile(lat, 50),
      p90: percentile(lat, 90),
      p99: percentile(lat, 99),
      max: lat[lat.length - 1] ?? 0,
      lateSends,
    };
    process.send!({ type: "open", result } satisfies ChildMessage);
  }

  // Phase 2: closed loop, increasing concurrency.
  for (const concurrency of plan.steps) {
    const lat: number[] = [];
    let errors = 0;
    const started = performance.now();
    const end = started + plan.stepMs;
    let lastCount = 0;
    const ticker = setInterval(() => {
      glog(`closed c=${concurrency} ${((performance.now() - started) / 1000).toFixed(0)}s: ${lat.length - lastCount}/s, errors ${errors}`);
      lastCount = lat.length;
    }, 1000);
    await Promise.all(
      Array.from({ length: concurrency }, async () => {
        while (performance.now() < end) {
          const t = performance.now();
          try {
            await placeOne();
            lat.push(performance.now() - t);
          } catch (err) {
            errors++;
            if (errors <= 3) glog(`error: ${(err as Error).message}`);
          }
        }
      }),
    );
    clearInterval(ticker);
    const seconds = (performance.now() - started) / 1000;
    lat.sort((a, b) => a - b);
    const result: StepResult = {
      concurrency,
      ok: lat.length,
      errors,
      perSecond: Math.round(lat.length / seconds),
      p50: percentile(lat, 50),
      p99: percentile(lat, 99),
      max: lat[lat.length - 1] ?? 0,
    };
    glog(`closed c=${concurrency}: ${result.perSecond}/s, p99 ${r2(result.p99)} ms, errors ${errors}`);
    process.send!({ type: "step", result } satisfies ChildMessage);
  }
  const cpu = process.cpuUsage(cpu0);
  process.send!({ type: "done", cpuMs: (cpu.user + cpu.system) / 1000 } satisfies ChildMessage, undefined, {}, () => process.exit(0));
}

if (process.env[CHILD_ROLE] === "1" && process.send) {
  process.on("message", (plan: EchoPlan | LoadPlan) => {
    (plan.type === "echo" ? echoLoad(plan) : loadGenerator(plan)).catch((err: unknown) => {
      process.send!({ type: "failed", message: err instanceof Error ? (err.stack ?? err.message) : String(err) } satisfies ChildMessage, undefined, {}, () => process.exit(1));
    });
  });
}
