/**
 * Live tracking under load: 10,000 concurrent TrackOrder streams (one per order, each watched
 * by its customer) while every order's driver pings once a second over its own ReportLocations
 * stream; latency is from a ping being sent to the customer receiving it. dabba runs as a child
 * process (all services, real Postgres and Redis). Prints one JSON line last.
 *
 *   [DATABASE_URL=postgres://...] [REDIS_URL=redis://...] npm run bench -- tracking [--streams 10000]
 *
 * Setup through the API: 20 always-open fixture restaurants are inserted into the run's
 * catalog (the demo seed's restaurants keep opening hours, so a run outside lunch or dinner
 * could not order), then per order, 32 at a time: PlaceOrder (its own customer token) ->
 * AcceptOrder (the restaurant's token) -> AssignDriver (ops token, its own driver).
 * Watchers (this process): N TrackOrder streams over 40 connect-node gRPC connections; all
 * snapshots must arrive before the drivers start. Drivers (a forked child process, so sending
 * and receiving do not share an event loop): N ReportLocations streams over 40 connections, one
 * fix per second each, phases spread evenly over the second; positions from route drivers
 * (services/location/sim) heading for their restaurant, device time = now. The first
 * BENCH_WARM_SECONDS (default 5) are not measured, then BENCH_SECONDS (default 20) are.
 * Latency: the customer's receipt time of a LocationUpdate minus the send time of the ping with
 * that driver and device time (both as absolute time in ms on this machine). The tracking
 * stream sends at most one position per second per order (newest wins), so a ping that arrives
 * just before the interval ends waits for it: that wait is part of what a customer sees.
 * rss_mb: the server's largest VmRSS over the whole run (setup included). Also printed: the
 * server's memory (RSS and V8 heap) after setup, with the streams open, and at the end of the
 * driver phase (BENCH_SERVER_HEAP_GC=1 collects garbage first, so the heap figures are live
 * objects; it pauses the server, between phases only), and the CPU of all three processes over
 * the driver phase (server, drivers, and this process: the watchers' side).
 */
import { fork, type ChildProcess } from "node:child_process";
import { setMaxListeners } from "node:events";
import { loadavg } from "node:os";
import { fileURLToPath } from "node:url";
import { ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import cliProgress from "cli-progress";
import { LocationService, type ReportLocationsResponse } from "../gen/dabba/location/v1/location_service_pb.js";
import { OrderService } from "../gen/dabba/order/v1/order_service_pb.js";
import { TrackingService } from "../gen/dabba/tracking/v1/tracking_service_pb.js";
import { createCatalogStore } from "../services/catalog/store.js";
import { createRouteDriver, timestampToMs } from "../services/location/sim/drivers.js";
import { mintToken } from "../services/platform/auth.js";
import { openDb } from "../services/platform/db.js";
import { createLogger } from "../services/platform/logger.js";
import { uniqueId } from "../test/helpers/backends.js";
import { fixtureRestaurant } from "../test/helpers/fixtures.js";
import { createRunDatabase } from "../test/helpers/run-database.js";
import { emptyRedisDb, formatHeap, percentile, startChildServer, type HeapStats } from "./lib/child-server.js";

const CHILD_ROLE = "DABBA_BENCH_TRACKING_DRIVERS";
const WARM_MS = Number(process.env.BENCH_WARM_SECONDS ?? 5) * 1000;
const MEASURE_MS = Number(process.env.BENCH_SECONDS ?? 20) * 1000;
const CONNECTIONS = 40;
const SETUP_CONCURRENCY = 32;
const RESTAURANTS = 20;
const PING_MS = 1000;

const log = (msg: string) => console.error(`[bench tracking] ${msg}`);
const r1 = (x: number) => Math.round(x * 10) / 10;
const r2 = (x: number) => Math.round(x * 100) / 100;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, Math.max(0, ms)));
const nowAbs = () => performance.timeOrigin + performance.now();

function streamsArg(): number {
  const i = process.argv.indexOf("--streams");
  const raw = i >= 0 ? process.argv[i + 1] : process.env.BENCH_STREAMS;
  const n = Number(raw ?? 10_000);
  if (!Number.isInteger(n) || n < 1 || n > 100_000) throw new Error(`--streams must be an integer from 1 to 100000, got "${raw}"`);
  return n;
}

interface Assignment {
  orderId: string;
  driverId: string;
  restaurant: { lat: number; lng: number };
}
interface DriverPlan {
  port: number;
  jwtSecret: string;
  drivers: Assignment[];
  /** Absolute ms: first ping, and no pings from this time on. */
  startAbs: number;
  endAbs: number;
}
type ChildMessage =
  | { type: "done"; at: number[][]; sentAt: number[][]; summaries: { accepted: number; rejected: number; byReason: Record<string, number> }; failures: string[]; cpuMs: number }
  | { type: "progress"; sent: number }
  | { type: "failed"; message: string };

export async function run(): Promise<void> {
  const N = streamsArg();
  const runId = uniqueId();
  const runDb = await createRunDatabase("bench_tracking");
  const redisDb = await emptyRedisDb(process.env.REDIS_URL ?? "redis://127.0.0.1:6379");
  log(`${N} orders and streams; database ${new URL(runDb.url).pathname.slice(1)}, Redis database ${redisDb.db}`);
  let server: Awaited<ReturnType<typeof startChildServer>> | undefined;
  let child: ChildProcess | undefined;
  const abort = new AbortController();
  setMaxListeners(0, abort.signal); // one signal ends every TrackOrder stream
  try {
    server = await startChildServer({ env: { SERVICES: "all", DATABASE_URL: runDb.url, REDIS_URL: redisDb.url, DEMO_SEED: "false" }, log });
    log(`dabba pid ${server.pid}: gRPC port ${server.port}; default rate limits and tracking settings (position at most every 1000 ms)`);
    const auth = { hsSecret: server.jwtSecret, issuer: "dabba", audience: "dabba", devSecret: false };

    // Catalog: always-open restaurants around the centre.
    const restaurants = Array.from({ length: RESTAURANTS }, (_, i) => ({
      id: `bench-${runId}-r${i}`,
      lat: 12.9716 + ((i % 5) - 2) * 0.01,
      lng: 77.5946 + (Math.floor(i / 5) - 2) * 0.01,
    }));
    {
      const db = await openDb({ databaseUrl: runDb.url, dataDir: "memory://", logger: createLogger("silent") });
      try {
        await createCatalogStore(db).insertRestaurants(restaurants.map((r) => fixtureRestaurant(r.id, { lat: r.lat, lng: r.lng })));
      } finally {
        await db.close();
      }
    }

    // Orders through the API.
    const transports = Array.from({ length: CONNECTIONS }, () => createGrpcTransport({ baseUrl: `http://127.0.0.1:${server!.port}` }));
    const orderClients = transports.slice(0, 8).map((t) => createClient(OrderService, t));
    const ops = await mintToken(auth, { role: "ops", sub: "bench-ops" }, 7200);
    const staff = await Promise.all(restaurants.map((r) => mintToken(auth, { role: "restaurant", sub: `staff-${r.id}`, restaurantId: r.id }, 7200)));
    const customers = await Promise.all(Array.from({ length: N }, (_, i) => mintToken(auth, { role: "customer", sub: `bench-${runId}-c${i}` }, 7200)));
    const assignments: Assignment[] = new Array(N);
    const bar = new cliProgress.SingleBar({ format: "orders [{bar}] {value}/{total} | {duration}s", stream: process.stderr }, cliProgress.Presets.shades_classic);
    const setupStarted = performance.now();
    bar.start(N, 0);
    let nextOrder = 0;
    let done = 0;
    await Promise.all(
      Array.from({ length: SETUP_CONCURRENCY }, async (_, w) => {
        const c = orderClients[w % orderClients.length]!;
        for (let i = nextOrder++; i < N; i = nextOrder++) {
          const r = restaurants[i % RESTAURANTS]!;
          const bearer = (t: string) => ({ headers: { authorization: `Bearer ${t}` } });
          const placed = await c.placeOrder(
            {
              restaurantId: r.id,
              lines: [{ itemId: `${r.id}-dosa`, quantity: 1 + (i % 2) }],
              delivery: { location: { lat: r.lat + 0.008, lng: r.lng + 0.004 }, addressLine: `${1 + (i % 300)} Residency Road` },
              paymentToken: "tok_visa",
            },
            { headers: { authorization: `Bearer ${customers[i]}`, "idempotency-key": `${runId}-${i}` } },
          );
          const orderId = placed.order!.id;
          await c.acceptOrder({ orderId }, bearer(staff[i % RESTAURANTS]!));
          const driverId = `bench-${runId}-d${i}`;
          await c.assignDriver({ orderId, driverId }, bearer(ops));
          assignments[i] = { orderId, driverId, restaurant: { lat: r.lat, lng: r.lng } };
          bar.update(++done);
        }
      }),
    );
    bar.stop();
    log(`set up ${N} orders (place, accept, assign) in ${r1((performance.now() - setupStarted) / 1000)} s; server rss ${r1(server.maxRssMb())} MiB`);
    const heapSetup = await server.heapStats();
    log(`server memory after setup: ${formatHeap(heapSetup)}`);

    // Watchers: one TrackOrder stream per order, its customer's token.
    const trackers = transports.map((t) => createClient(TrackingService, t));
    const received: { at: number[]; recvAt: number[] }[] = Array.from({ length: N }, () => ({ at: [], recvAt: [] }));
    let snapshots = 0;
    let positions = 0;
    const watchFailures: string[] = [];
    const watchers = assignments.map(async (a, i) => {
      try {
        const stream = trackers[i % CONNECTIONS]!.trackOrder({ orderId: a.orderId }, { signal: abort.signal, headers: { authorization: `Bearer ${customers[i]}` } });
        for await (const m of stream) {
          const t = nowAbs();
          if (m.update.case === "location") {
            const at = m.update.value.at;
            if (at) {
              received[i]!.at.push(timestampToMs(at));
              received[i]!.recvAt.push(t);
              positions++;
            }
          } else if (m.update.case === "snapshot") snapshots++;
        }
      } catch (err) {
        if (!abort.signal.aborted) watchFailures.push(`${a.orderId}: ${err instanceof ConnectError ? err.message : String(err)}`);
      }
    });
    const watchStarted = performance.now();
    while (snapshots + watchFailures.length < N) {
      if (performance.now() - watchStarted > 180_000) throw new Error(`only ${snapshots} of ${N} snapshots within 180 s`);
      await sleep(250);
      if (Math.round(performance.now() - watchStarted) % 2000 < 250) log(`watchers: ${snapshots}/${N} snapshots`);
    }
    if (watchFailures.length > 0) throw new Error(`${watchFailures.length} TrackOrder streams failed, e.g. ${watchFailures[0]}`);
    log(`${N} TrackOrder streams open (all snapshots in ${r1((performance.now() - watchStarted) / 1000)} s); server rss ${r1(server.maxRssMb())} MiB`);
    await sleep(1000);
    const heapOpen = await server.heapStats();
    log(`server memory with the streams open: ${formatHeap(heapOpen)}`);
    const perStream = (a: HeapStats | undefined, b: HeapStats | undefined, k: "rss" | "heapUsed") => (a && b ? Math.round(((b[k] - a[k]) * 1024) / N) : undefined);
    log(`per open stream: rss ${perStream(heapSetup, heapOpen, "rss")} KiB, V8 heap ${perStream(heapSetup, heapOpen, "heapUsed")} KiB`);

    // Drivers: a forked process pinging once a second per driver.
    child = fork(fileURLToPath(import.meta.url), [], { execArgv: ["--import", "tsx"], env: { ...process.env, [CHILD_ROLE]: "1" }, stdio: ["ignore", "inherit", "inherit", "ipc"] });
    const startAbs = nowAbs() + 2000;
    const measureFrom = startAbs + WARM_MS;
    const endAbs = measureFrom + MEASURE_MS;
    const plan: DriverPlan = { port: server.port, jwtSecret: server.jwtSecret, drivers: assignments, startAbs, endAbs };
    const result = new Promise<Extract<ChildMessage, { type: "done" }>>((resolve, reject) => {
      child!.on("message", (m: ChildMessage) => {
        if (m.type === "done") resolve(m);
        else if (m.type === "failed") reject(new Error(`driver process: ${m.message}`));
      });
      child!.once("exit", (code) => reject(new Error(`driver process exited with code ${code}`)));
    });
    let childSent = 0;
    child.on("message", (m: ChildMessage) => {
      if (m.type === "progress") childSent = m.sent;
    });
    child.send(plan);
    let lastPositions = 0;
    let lastSent = 0;
    const progress = setInterval(() => {
      const t = nowAbs();
      const phase = t < startAbs ? "starting" : t < measureFrom ? "warm-up" : t < endAbs ? "measuring" : "draining";
      log(
        `${phase}: ${childSent - lastSent} pings/s sent, ${positions - lastPositions} positions/s received, server rss ${r1(server!.maxRssMb())} MiB, load ${loadavg()[0]!.toFixed(1)}`,
      );
      lastPositions = positions;
      lastSent = childSent;
    }, 1000);
    const cpu0 = server.cpuMs();
    const watcherCpu0 = process.cpuUsage();
    const driverResult = await result;
    const serverCpuMs = server.cpuMs() - cpu0;
    const watcherCpu = process.cpuUsage(watcherCpu0);
    const watcherCpuMs = (watcherCpu.user + watcherCpu.system) / 1000;
    // The last pings' positions: give them a moment, then close the watchers.
    await sleep(1500);
    clearInterval(progress);
    const heapEnd = await server.heapStats();
    log(`server memory at the end of the driver phase: ${formatHeap(heapEnd)}`);
    abort.abort();
    await Promise.all(watchers);

    // Latency per received position: match (order's driver, device time) to its send time.
    const latencies: number[] = [];
    let unmatched = 0;
    let measuredPings = 0;
    for (let i = 0; i < N; i++) {
      const sent = new Map<number, number>();
      const at = driverResult.at[i]!;
      const sentAt = driverResult.sentAt[i]!;
      for (let j = 0; j < at.length; j++) {
        sent.set(at[j]!, sentAt[j]!);
        if (sentAt[j]! >= measureFrom) measuredPings++;
      }
      const rec = received[i]!;
      for (let j = 0; j < rec.at.length; j++) {
        const s = sent.get(rec.at[j]!);
        if (s === undefined) {
          unmatched++;
          continue;
        }
        if (s >= measureFrom && s < endAbs) latencies.push(rec.recvAt[j]! - s);
      }
    }
    latencies.sort((a, b) => a - b);
    const sums = driverResult.summaries;
    const totalSent = driverResult.at.reduce((n, a) => n + a.length, 0);
    // A server that logged warnings or errors (a failed Redis write, say, which leaves pings
    // accepted but never published) did not run the benchmark cleanly.
    const serverWarnings = server.warnings();
    const verified = driverResult.failures.length === 0 && sums.accepted === totalSent && sums.rejected === 0 && unmatched === 0 && serverWarnings === 0;
    const deliveredPct = r1((latencies.length / Math.max(1, measuredPings)) * 100);
    for (const f of driverResult.failures.slice(0, 5)) log(`driver stream failed: ${f}`);
    log(
      `verify: ${totalSent} pings sent, accepted ${sums.accepted}, rejected ${sums.rejected} ${JSON.stringify(sums.byReason)}, ` +
        `failed driver streams ${driverResult.failures.length}, positions received ${positions} (${unmatched} without a matching ping), ` +
        `server warnings ${serverWarnings}: ${verified ? "OK" : "MISMATCH"}`,
    );
    log(
      `measured ${MEASURE_MS / 1000} s: ${measuredPings} pings, ${latencies.length} positions delivered to customers ` +
        `(${deliveredPct}%; at most one per order per second is sent), ` +
        `latency p50 ${r2(percentile(latencies, 50))} ms, p90 ${r2(percentile(latencies, 90))} ms, p99 ${r2(percentile(latencies, 99))} ms, max ${r2(latencies[latencies.length - 1] ?? 0)} ms`,
    );
    log(
      `CPU over the driver phase: server ${Math.round(serverCpuMs)} ms, driver process ${Math.round(driverResult.cpuMs)} ms, watchers (this process) ${Math.round(watcherCpuMs)} ms; load average ${loadavg().map((x) => x.toFixed(1)).join(" ")}`,
    );
    const rss = server.maxRssMb();
    if (!verified) process.exitCode = 1;
    console.log(
      JSON.stringify({
        bench: "tracking",
        streams: N,
        p50_ms: r2(percentile(latencies, 50)),
        p99_ms: r2(percentile(latencies, 99)),
        rss_mb: Math.round(rss),
        p90_ms: r2(percentile(latencies, 90)),
        max_ms: r2(latencies[latencies.length - 1] ?? 0),
        positions: latencies.length,
        pings: measuredPings,
        measured_s: MEASURE_MS / 1000,
        accepted: sums.accepted,
        rejected: sums.rejected,
        verified,
        delivered_pct: deliveredPct,
        server_warnings: serverWarnings,
        server_cpu_ms: Math.round(serverCpuMs),
        drivers_cpu_ms: Math.round(driverResult.cpuMs),
        watchers_cpu_ms: Math.round(watcherCpuMs),
        rss_open_mb: heapOpen?.rss,
        heap_used_open_mb: heapOpen?.heapUsed,
      }),
    );
  } finally {
    abort.abort();
    if (child && child.exitCode === null) child.kill("SIGKILL");
    if (server) await server.stop().catch(() => {});
    await redisDb.flush().catch((err: unknown) => log(`could not empty Redis database ${redisDb.db}: ${String(err)}`));
    await runDb.drop().catch((err: unknown) => log(`could not drop the run database: ${String(err)}`));
  }
}

// ---------------------------------------------------------------------------------------------
// The drivers (forked child): one ReportLocations stream per driver, one fix a second.

async function drivers(plan: DriverPlan): Promise<void> {
  const cpu0 = process.cpuUsage();
  const auth = { hsSecret: plan.jwtSecret, issuer: "dabba", audience: "dabba", devSecret: false };
  const n = plan.drivers.length;
  const clients: Client<typeof LocationService>[] = Array.from({ length: CONNECTIONS }, () =>
    createClient(LocationService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${plan.port}` })),
  );
  const tokens = await Promise.all(plan.drivers.map((d) => mintToken(auth, { role: "driver", sub: d.driverId }, 7200)));
  const at: number[][] = Array.from({ length: n }, () => []);
  const sentAt: number[][] = Array.from({ length: n }, () => []);
  let sent = 0;
  const progress = setInterval(() => process.send!({ type: "progress", sent } satisfies ChildMessage), 1000);
  const failures: string[] = [];
  const summaries = { accepted: 0, rejected: 0, byReason: {} as Record<string, number> };
  await Promise.all(
    plan.drivers.map(async (a, i) => {
      // On the way to the restaurant: starts ~1.5 km out.
      const from = { lat: a.restaurant.lat - 0.009 + (i % 7) * 0.002, lng: a.restaurant.lng - 0.009 + (i % 5) * 0.003 };
      const startMs = Date.now();
      const driver = createRouteDriver({ from, to: a.restaurant, seed: i + 1, startMs, id: a.driverId });
      const phase = (i / n) * PING_MS;
      async function* body() {
        for (let k = 0; ; k++) {
          const planned = plan.startAbs + phase + k * PING_MS;
          if (planned >= plan.endAbs) return;
          await sleep(planned - nowAbs());
          const ping = driver.next(Date.now());
          at[i]!.push(timestampToMs(ping.deviceTime));
          sentAt[i]!.push(nowAbs());
          sent++;
          yield { pings: [ping] };
        }
      }
      try {
        const r: ReportLocationsResponse = await clients[i % CONNECTIONS]!.reportLocations(body(), { headers: { authorization: `Bearer ${tokens[i]}` } });
        summaries.accepted += Number(r.accepted);
        summaries.rejected += Number(r.rejected);
        for (const [reason, c] of Object.entries(r.rejectedByReason)) summaries.byReason[reason] = (summaries.byReason[reason] ?? 0) + Number(c);
      } catch (err) {
        failures.push(`${a.driverId}: ${err instanceof Error ? err.message : String(err)}`);
      }
    }),
  );
  clearInterval(progress);
  const cpu = process.cpuUsage(cpu0);
  process.send!({ type: "done", at, sentAt, summaries, failures, cpuMs: (cpu.user + cpu.system) / 1000 } satisfies ChildMessage, undefined, {}, () => process.exit(0));
}

if (process.env[CHILD_ROLE] === "1" && process.send) {
  process.once("message", (plan: DriverPlan) => {
    drivers(plan).catch((err: unknown) => {
      process.send!({ type: "failed", message: err instanceof Error ? (err.stack ?? err.message) : String(err) } satisfies ChildMessage, undefined, {}, () => process.exit(1));
    });
  });
}
