/**
 * Dispatch under a dinner rush: 10,000 online drivers in Bengaluru moving realistically, then
 * orders confirmed at 600 per second for 10 seconds; simulated drivers accept after a random 0-2 s
 * or decline 10 % of offers. dabba runs as a child process (all services, real Postgres and
 * Redis). Prints one JSON line last.
 *
 *   npm run bench -- dispatch [--drivers 10000] [--rate 600] [--seconds 10] [--split]
 *
 * --split (BENCH_SPLIT=1): DispatchService in a process of its own (SERVICES=dispatch, reaching
 * OrderService and LocationService of the other process over gRPC), as a split deployment runs
 * it; server CPU and RSS are then the two processes' sum.
 *
 * Server: `node --import tsx services/main.ts` with SERVICES=all, a fresh database
 * (bench_dispatch_<id>, dropped after), an empty Redis database index (5 or the next empty one,
 * emptied after; the server has no key prefix setting), DEMO_SEED=false, default dispatch settings.
 * Setup, not timed: 300 always-open fixture restaurants spread over the city (denser towards the
 * centre); rate x seconds orders PLACED through the API, one customer (own token) each, delivering
 * 1-4 km from the restaurant. Then the drivers (bench/lib/dispatch-drivers.ts, a forked process):
 * GoOnline, one StreamOffers stream and one ReportLocations stream each (a fix every 5 s), over 40
 * HTTP/2 connections; the run goes on once every driver has sent a fix.
 * Snapshot: the drivers' true simulated positions at the instant the burst starts.
 * Burst (this process, connect-node gRPC transport, 8 connections): AcceptOrder by the
 * restaurant's token, open loop at the rate (at most 256 in flight, so an overloaded server makes
 * sends late rather than piling up calls); t_confirm = when AcceptOrder returned. Then wait until
 * every confirmed order is assigned, or 60 s.
 * Figures:
 *  - offer_*: first offer of each order reaching its driver's stream minus t_confirm (absolute
 *    clock of this machine in both processes); redispatch_*: a later offer of the same order minus
 *    the answer (or expiry, withdrawal) of the one before it.
 *  - assign_*: AcceptOffer round trips that assigned (think time excluded); lost_accepts: accepts
 *    refused with FAILED_PRECONDITION; expired: offers whose expires_at passed before the answer.
 *  - double_assignments: client side (an order accepted by two drivers, a driver holding more
 *    accepted orders than the stack limit) plus Postgres (drivers with more active orders than the
 *    limit; orders with two driver_assigned rows without a driver_unassigned between).
 *  - pickup_km_mean: mean haversine distance from each assigned driver's snapshot position to the
 *    restaurant; pickup_km_optimal: the same orders assigned to distinct drivers on the same
 *    snapshot at minimum total distance (services/dispatch/assignment.ts, each order restricted to
 *    the 64 drivers nearest its restaurant, doubled while that leaves an order unmatched);
 *    pickup_km_at_offer_mean: the accepted offers' own
 *    pickup_distance_km (the server's view at offer time).
 * Baseline, same run, before the server starts: one offer's raw Redis work, GEOSEARCH FROMLONLAT
 * BYRADIUS 5 km ASC COUNT 50 over a key of `drivers` members, then SET NX PX on the nearest,
 * sequential round trips for 3 s (ioredis from this process).
 */
import { fork, type ChildProcess } from "node:child_process";
import { loadavg } from "node:os";
import { fileURLToPath } from "node:url";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import cliProgress from "cli-progress";
import { Redis } from "ioredis";
import pg from "pg";
import { OfferOutcome } from "../gen/dabba/dispatch/v1/dispatch_pb.js";
import { DispatchService } from "../gen/dabba/dispatch/v1/dispatch_service_pb.js";
import { OrderService } from "../gen/dabba/order/v1/order_service_pb.js";
import { mulberry32 } from "../services/catalog/seed.js";
import { createCatalogStore } from "../services/catalog/store.js";
import { createFleet, timestampToMs } from "../services/location/sim/drivers.js";
import { cityGeoKey } from "../services/location/keys.js";
import { mintToken } from "../services/platform/auth.js";
import { BENGALURU } from "../services/platform/config.js";
import { openDb } from "../services/platform/db.js";
import { createLogger } from "../services/platform/logger.js";
import { haversineKm } from "../services/platform/redis.js";
import { uniqueId } from "../test/helpers/backends.js";
import { fixtureRestaurant } from "../test/helpers/fixtures.js";
import { createRunDatabase } from "../test/helpers/run-database.js";
import { emptyRedisDb, percentile, rssMb, startChildServer, type ChildServer } from "./lib/child-server.js";
import { dbDoubleAssignments, optimalPickup, type Point } from "./lib/dispatch-checks.js";
import { CALL_TIMEOUT_MS, DRIVERS_ROLE, driverIdPrefix, type DriversPlan, type DriversProgress, type FromDrivers, type OfferSeen, type ToDrivers } from "./lib/dispatch-drivers.js";
import { sleep } from "../test/helpers/wait.js";

const RESTAURANTS = 300;
const RESTAURANT_RADIUS_M = 7000;
const DRIVER_CONNECTIONS = 40;
const ORDER_CONNECTIONS = 8;
const PLACE_CONCURRENCY = 32;
const MAX_CONFIRMS_IN_FLIGHT = 256;
const PING_MS = 5000;
const THINK_MAX_MS = 2000;
const DECLINE_SHARE = 0.1;
const WAIT_MS = 60_000;
const OPTIMAL_CANDIDATES = 64;
const BASELINE_MS = 3000;
/** The stack limit the server runs with (DISPATCH_STACK_SIZE, default 1): more active orders per driver is a double assignment. */
const STACK_LIMIT = Number(process.env.DISPATCH_STACK_SIZE ?? 1);
const TARGET_OFFER_P99_MS = 100;
const TARGET_PICKUP_RATIO = 1.05;

const log = (msg: string) => console.error(`[bench dispatch] ${msg}`);
const r1 = (x: number) => Math.round(x * 10) / 10;
const r2 = (x: number) => Math.round(x * 100) / 100;
const r3 = (x: number) => Math.round(x * 1000) / 1000;
const nowAbs = () => performance.timeOrigin + performance.now();
const sortNum = (xs: number[]) => xs.sort((a, b) => a - b);

function intArg(flag: string, env: string, def: number, min: number, max: number): number {
  const i = process.argv.indexOf(flag);
  const raw = i >= 0 ? process.argv[i + 1] : process.env[env];
  const n = Number(raw ?? def);
  if (!Number.isInteger(n) || n < min || n > max) throw new Error(`${flag} must be an integer from ${min} to ${max}, got "${raw}"`);
  return n;
}

interface Restaurant extends Point {
  id: string;
}

/** The drivers' process: messages as promises, the latest progress, failure or exit rejecting what is awaited. */
function driversProcess(child: ChildProcess) {
  let latest: DriversProgress | undefined;
  const waiters = new Map<string, (m: FromDrivers) => void>();
  let failure: Error | undefined;
  const rejecters = new Set<(e: Error) => void>();
  const failAll = (e: Error) => {
    failure ??= e;
    for (const r of rejecters) r(e);
  };
  child.on("message", (m: FromDrivers) => {
    if (m.type === "progress") latest = m.p;
    else if (m.type === "failed") failAll(new Error(`drivers process: ${m.message}`));
    else {
      if ("p" in m) latest = m.p;
      waiters.get(m.type)?.(m);
      waiters.delete(m.type);
    }
  });
  child.once("exit", (code) => failAll(new Error(`drivers process exited with code ${code}`)));
  return {
    progress: () => latest,
    send: (m: ToDrivers) => child.send(m),
    next<T extends FromDrivers["type"]>(type: T): Promise<Extract<FromDrivers, { type: T }>> {
      if (failure) return Promise.reject(failure);
      return new Promise((resolve, reject) => {
        const rej = (e: Error) => reject(e);
        rejecters.add(rej);
        waiters.set(type, (m) => {
          rejecters.delete(rej);
          resolve(m as Extract<FromDrivers, { type: T }>);
        });
      });
    },
  };
}

export async function run(): Promise<void> {
  const nDrivers = intArg("--drivers", "BENCH_DRIVERS", 10_000, 1, 100_000);
  const rate = intArg("--rate", "BENCH_RATE", 600, 1, 100_000);
  const seconds = intArg("--seconds", "BENCH_SECONDS", 10, 1, 3600);
  const nOrders = rate * seconds;
  const runId = uniqueId();
  const runDb = await createRunDatabase("bench_dispatch");
  const redisDb = await emptyRedisDb(process.env.REDIS_URL ?? "redis://127.0.0.1:6379");
  log(`${nDrivers} drivers, ${nOrders} orders confirmed at ${rate}/s for ${seconds} s; database ${new URL(runDb.url).pathname.slice(1)}, Redis database ${redisDb.db}`);
  const split = process.argv.includes("--split") || process.env.BENCH_SPLIT === "1";
  let server: ChildServer | undefined;
  // With --split: DispatchService's own process (the drivers' offer streams and answers go there).
  let dispatchServer: ChildServer | undefined;
  const servers = () => [server, dispatchServer].filter((s): s is ChildServer => s !== undefined);
  const serversRss = () => servers().reduce((a, s) => a + s.maxRssMb(), 0);
  const serversCpu = () => servers().reduce((a, s) => a + s.cpuMs(), 0);
  let child: ChildProcess | undefined;
  let pool: pg.Pool | undefined;
  try {
    const baseline = await redisBaseline(redisDb.url, nDrivers);
    log(`baseline: raw GEOSEARCH (5 km, COUNT 50, ${nDrivers} members) + SET NX PX, sequential: p50 ${r3(baseline.p50)} ms, p99 ${r3(baseline.p99)} ms over ${baseline.n} offers`);
    await redisDb.flush();

    const storage = { DATABASE_URL: runDb.url, REDIS_URL: redisDb.url, DEMO_SEED: "false" };
    server = await startChildServer({ env: { SERVICES: split ? "catalog,order,location,tracking" : "all", ...storage }, log });
    log(`dabba pid ${server.pid}: gRPC port ${server.port}; default dispatch settings; rss ${r1(server.maxRssMb())} MiB`);
    if (split) {
      const peer = `127.0.0.1:${server.port}`;
      dispatchServer = await startChildServer({ env: { SERVICES: "dispatch", ORDER_ADDR: peer, LOCATION_ADDR: peer, ...storage }, log, jwtSecret: server.jwtSecret });
      log(`dispatch in its own process: pid ${dispatchServer.pid}, gRPC port ${dispatchServer.port}`);
    }
    const auth = { hsSecret: server.jwtSecret, issuer: "dabba", audience: "dabba", devSecret: false };

    // Restaurants over the city, denser towards the centre.
    const rng = mulberry32(20261121);
    const restaurants: Restaurant[] = Array.from({ length: RESTAURANTS }, (_, i) => ({ id: `bench-${runId}-r${i}`, ...offset(BENGALURU.centre, RESTAURANT_RADIUS_M * rng() ** 0.75, rng() * 2 * Math.PI) }));
    {
      const db = await openDb({ databaseUrl: runDb.url, dataDir: "memory://", logger: createLogger("silent") });
      try {
        await createCatalogStore(db).insertRestaurants(restaurants.map((r) => fixtureRestaurant(r.id, { lat: r.lat, lng: r.lng })));
      } finally {
        await db.close();
      }
    }

    // Orders, placed before anything is timed.
    const orderTransports = Array.from({ length: ORDER_CONNECTIONS }, () => createGrpcTransport({ baseUrl: `http://127.0.0.1:${server!.port}` }));
    const orderClients = orderTransports.map((t) => createClient(OrderService, t));
    const staff = await Promise.all(restaurants.map((r) => mintToken(auth, { role: "restaurant", sub: `staff-${r.id}`, restaurantId: r.id }, 7200)));
    const orderIds: string[] = new Array(nOrders);
    const orderRestaurant: number[] = Array.from({ length: nOrders }, () => Math.floor(rng() * RESTAURANTS));
    {
      const customers = await Promise.all(Array.from({ length: nOrders }, (_, i) => mintToken(auth, { role: "customer", sub: `bench-${runId}-c${i}` }, 7200)));
      const drops = orderRestaurant.map((r) => offset(restaurants[r]!, 1000 + 3000 * rng(), rng() * 2 * Math.PI));
      const bar = new cliProgress.SingleBar({ format: "placing orders [{bar}] {value}/{total} | {duration}s", stream: process.stderr }, cliProgress.Presets.shades_classic);
      const started = performance.now();
      bar.start(nOrders, 0);
      let next = 0;
      let done = 0;
      await Promise.all(
        Array.from({ length: PLACE_CONCURRENCY }, async (_, w) => {
          const c = orderClients[w % ORDER_CONNECTIONS]!;
          for (let i = next++; i < nOrders; i = next++) {
            const r = restaurants[orderRestaurant[i]!]!;
            const placed = await c.placeOrder(
              {
                restaurantId: r.id,
                lines: [{ itemId: `${r.id}-${i % 3 === 0 ? "biryani" : "dosa"}`, quantity: 1 + (i % 2) }],
                delivery: { location: drops[i]!, addressLine: `${1 + (i % 300)} Residency Road` },
                paymentToken: "tok_visa",
              },
              { headers: { authorization: `Bearer ${customers[i]}`, "idempotency-key": `${runId}-${i}` }, timeoutMs: CALL_TIMEOUT_MS },
            );
            orderIds[i] = placed.order!.id;
            bar.update(++done);
          }
        }),
      );
      bar.stop();
      log(`placed ${nOrders} orders in ${r1((performance.now() - started) / 1000)} s (${Math.round(nOrders / ((performance.now() - started) / 1000))}/s); server rss ${r1(serversRss())} MiB`);
    }
    const orderIndex = new Map(orderIds.map((id, i) => [id, i]));

    // Drivers.
    child = fork(fileURLToPath(new URL("./lib/dispatch-drivers.ts", import.meta.url)), [], {
      execArgv: ["--import", "tsx"],
      env: { ...process.env, [DRIVERS_ROLE]: "1" },
      stdio: ["ignore", "inherit", "inherit", "ipc"],
    });
    const drivers = driversProcess(child);
    const plan: DriversPlan = {
      port: server.port,
      dispatchPort: (dispatchServer ?? server).port,
      jwtSecret: server.jwtSecret,
      runId,
      drivers: nDrivers,
      connections: DRIVER_CONNECTIONS,
      pingMs: PING_MS,
      seed: 42,
      declineShare: DECLINE_SHARE,
      thinkMaxMs: THINK_MAX_MS,
    };
    const redis = new Redis(redisDb.url, { maxRetriesPerRequest: 1 });
    let phase = "drivers starting";
    let online = 0;
    let lastP: DriversProgress | undefined;
    const progress = setInterval(() => {
      const p = drivers.progress();
      if (!p) return;
      const d = (k: keyof DriversProgress) => p[k] - (lastP?.[k] ?? 0);
      log(
        `${phase}: online ${p.online} (${p.onlineFailed} failed), ${d("pingsSent")} pings/s; offers ${p.offers} (+${d("offers")}), accepted ${p.accepted}, ` +
          `declined ${p.declined}, lost ${p.lost}, expired ${p.expired}, withdrawn ${p.withdrawn}, errors ${p.answerErrors}; assigned ${p.assignedOrders}; ` +
          `stream errors offers ${p.offerStreamErrors} location ${p.locationStreamErrors}; server rss ${r1(serversRss())} MiB, load ${loadavg()[0]!.toFixed(1)}`,
      );
      lastP = { ...p };
    }, 1000);
    try {
      const readyP = drivers.next("ready");
      drivers.send({ type: "start", plan });
      const ready = await readyP;
      online = ready.p.online;
      for (const f of ready.failures.slice(0, 5)) log(`drivers: ${f}`);
      // The server writes fixes within a tick of receiving them; a loaded machine may take longer.
      let indexed = await redis.zcard(cityGeoKey(BENGALURU.name));
      for (const until = performance.now() + 30_000; indexed < nDrivers && performance.now() < until; ) {
        await sleep(500);
        indexed = await redis.zcard(cityGeoKey(BENGALURU.name));
      }
      log(`drivers ready in ${r1(ready.setupMs / 1000)} s: ${ready.p.online} online, ${indexed} in the city's geo index, ${ready.p.pingsSent} fixes sent`);
      if (indexed < nDrivers) log(`warning: only ${indexed} of ${nDrivers} drivers are in the geo index`);
    } finally {
      redis.disconnect();
    }

    // Snapshot, then the burst.
    const snapP = drivers.next("snapshot");
    drivers.send({ type: "snapshot" });
    const snapshot = await snapP;
    log(`snapshot of ${snapshot.lat.length} true driver positions taken; confirming`);
    phase = "burst";
    const tConfirm = new Float64Array(nOrders).fill(NaN);
    const confirmLatency: number[] = [];
    const confirmErrors: string[] = [];
    let confirmErrorCount = 0;
    let lateSends = 0;
    const cpuServer0 = serversCpu();
    const burstStarted = nowAbs();
    let burstEnded = 0;
    {
      const interval = 1000 / rate;
      const t0 = performance.now() + 20;
      let sent = 0;
      const inFlight = new Set<Promise<void>>();
      await new Promise<void>((resolve) => {
        // One pending timer at most: the next planned send, or now when a slot frees up while capped.
        let timer: NodeJS.Timeout | undefined;
        const schedule = (ms: number) => {
          timer ??= setTimeout(() => {
            timer = undefined;
            tick();
          }, Math.max(0, ms));
        };
        const tick = () => {
          const now = performance.now();
          while (sent < nOrders && t0 + sent * interval <= now && inFlight.size < MAX_CONFIRMS_IN_FLIGHT) {
            const planned = t0 + sent * interval;
            if (now - planned > 5) lateSends++;
            const i = sent++;
            const r = orderRestaurant[i]!;
            const sentAt = performance.now();
            const call: Promise<void> = orderClients[i % ORDER_CONNECTIONS]!.acceptOrder({ orderId: orderIds[i]! }, { headers: { authorization: `Bearer ${staff[r]}` }, timeoutMs: CALL_TIMEOUT_MS }).then(
              () => {
                tConfirm[i] = nowAbs();
                confirmLatency.push(performance.now() - sentAt);
              },
              (err: unknown) => {
                confirmErrorCount++;
                if (confirmErrors.length < 5) confirmErrors.push(ConnectError.from(err).message);
              },
            );
            inFlight.add(call);
            void call.finally(() => {
              inFlight.delete(call);
              if (sent < nOrders) schedule(0);
            });
          }
          if (sent >= nOrders) resolve();
          else if (inFlight.size < MAX_CONFIRMS_IN_FLIGHT) schedule(t0 + sent * interval - performance.now());
        };
        schedule(t0 - performance.now());
      });
      await Promise.all(inFlight);
      burstEnded = nowAbs();
    }
    const confirmed = confirmLatency.length;
    const lastConfirm = Math.max(...Array.from(tConfirm).filter((t) => !Number.isNaN(t)), burstStarted);
    const confirmRate = confirmed / ((lastConfirm - burstStarted) / 1000);
    for (const e of confirmErrors) log(`AcceptOrder failed: ${e}`);
    log(`burst: ${confirmed} of ${nOrders} confirmed in ${r1((burstEnded - burstStarted) / 1000)} s (${Math.round(confirmRate)}/s), ${confirmErrorCount} errors, ${lateSends} late sends`);

    // Wait for every confirmed order to be assigned.
    phase = "assigning";
    const waitStarted = performance.now();
    if (online === 0) log("no driver is online: not waiting for assignments");
    while (online > 0 && performance.now() - waitStarted < WAIT_MS) {
      if ((drivers.progress()?.assignedOrders ?? 0) >= confirmed) break;
      await sleep(200);
    }
    const cpuServer = serversCpu() - cpuServer0;
    const doneP = drivers.next("done");
    drivers.send({ type: "finish" });
    const done = await doneP;
    clearInterval(progress);
    child = undefined;
    const waitedMs = performance.now() - waitStarted;
    for (const f of done.failures.slice(0, 5)) log(`drivers: ${f}`);

    // Client-side figures.
    const offersByOrder = new Map<string, OfferSeen[]>();
    for (const o of done.offers) {
      const list = offersByOrder.get(o.orderId);
      if (list) list.push(o);
      else offersByOrder.set(o.orderId, [o]);
    }
    const offerLat: number[] = [];
    const redispatch: number[] = [];
    let offersBeforeConfirmReturned = 0;
    let foreignOffers = 0;
    for (const [orderId, list] of offersByOrder) {
      const i = orderIndex.get(orderId);
      if (i === undefined || Number.isNaN(tConfirm[i]!)) {
        foreignOffers += list.length;
        continue;
      }
      list.sort((a, b) => a.recvAbs - b.recvAbs);
      const first = list[0]!.recvAbs - tConfirm[i]!;
      if (first < 0) offersBeforeConfirmReturned++;
      offerLat.push(first);
      for (let j = 1; j < list.length; j++) {
        const prev = list[j - 1]!;
        redispatch.push(list[j]!.recvAbs - (prev.answeredAbs ?? prev.recvAbs));
      }
    }
    sortNum(offerLat);
    sortNum(redispatch);
    const accepted = done.offers.filter((o) => o.answer === "accepted");
    const assignLat = sortNum(accepted.map((o) => o.rttMs!));
    const count = (a: OfferSeen["answer"]) => done.offers.filter((o) => o.answer === a).length;
    // Client-side double assignments: an order accepted twice, a driver holding more than the stack limit.
    const clientAssigned = new Map<string, number>(); // order -> driver index
    const ordersAcceptedTwice = new Set<string>();
    const heldByDriver = new Map<number, number>();
    for (const o of accepted) {
      if (clientAssigned.has(o.orderId)) ordersAcceptedTwice.add(o.orderId);
      else clientAssigned.set(o.orderId, o.driver);
      heldByDriver.set(o.driver, (heldByDriver.get(o.driver) ?? 0) + 1);
    }
    const driversOverLimitClient = [...heldByDriver.values()].filter((h) => h > STACK_LIMIT).length;

    // Flagged orders and the server's view of the unassigned ones.
    const ops = await mintToken(auth, { role: "ops", sub: "bench-ops" }, 3600);
    const dispatchClient: Client<typeof DispatchService> = createClient(
      DispatchService,
      dispatchServer ? createGrpcTransport({ baseUrl: `http://127.0.0.1:${dispatchServer.port}` }) : orderTransports[0]!,
    );
    const unassigned = orderIds.filter((id, i) => !Number.isNaN(tConfirm[i]!) && !clientAssigned.has(id));
    let flaggedCount = 0;
    let flaggedKnown = true;
    let shown = 0;
    for (const id of unassigned) {
      try {
        const s = await dispatchClient.getDispatchState({ orderId: id }, { headers: { authorization: `Bearer ${ops}` }, timeoutMs: CALL_TIMEOUT_MS });
        if (s.flagged) flaggedCount++;
        if (shown++ < 5) {
          const seen = (offersByOrder.get(id) ?? []).map((o) => `${o.answer}${o.rttMs !== undefined ? ` ${Math.round(o.rttMs)} ms` : ""}`);
          const server = s.offers.map((o) => `${OfferOutcome[o.outcome]}${o.decidedAt ? ` +${Math.round(timestampToMs(o.decidedAt) - tConfirm[orderIndex.get(id)!]!)} ms` : ""}`);
          log(`unassigned ${id}: drivers saw [${seen.join(", ")}]; server: attempt ${s.attempt}, radius ${s.radiusKm} km, flagged ${s.flagged}, offers [${server.join(", ")}]`);
        }
      } catch (err) {
        // Unknown then: the service is missing or not answering (a wedged server would take a deadline per order).
        const e = ConnectError.from(err);
        log(`GetDispatchState ${id}: [${Code[e.code]}] ${e.rawMessage}; flagged orders not counted`);
        flaggedKnown = false;
        break;
      }
    }

    // Postgres: double assignments and agreement with what the drivers were told.
    pool = new pg.Pool({ connectionString: runDb.url, max: 2 });
    const db = await dbDoubleAssignments(pool, STACK_LIMIT);
    const prefix = driverIdPrefix(runId);
    let mismatches = 0;
    for (const [orderId, driverId] of db.assigned) {
      const k = clientAssigned.get(orderId);
      if (k === undefined || `${prefix}${k}` !== driverId) mismatches++;
    }
    for (const orderId of clientAssigned.keys()) if (!db.assigned.has(orderId)) mismatches++;
    const doubleAssignments = ordersAcceptedTwice.size + driversOverLimitClient + db.driversOverLimit + db.ordersAssignedTwice;
    log(
      `double assignments: client ${ordersAcceptedTwice.size} orders accepted twice, ${driversOverLimitClient} drivers over the stack limit ${STACK_LIMIT}; ` +
        `Postgres ${db.driversOverLimit} drivers over the limit, ${db.ordersAssignedTwice} orders assigned twice without an unassign; ` +
        `${db.assigned.size} orders with a driver in Postgres, ${clientAssigned.size} accepted by drivers, ${mismatches} disagreements`,
    );

    // Pickup distance on the snapshot: achieved and optimal.
    const assignedOrders = [...clientAssigned.entries()];
    const pickupKm = assignedOrders.map(([orderId, k]) => {
      const r = restaurants[orderRestaurant[orderIndex.get(orderId)!]!]!;
      return haversineKm(r.lng, r.lat, snapshot.lng[k]!, snapshot.lat[k]!);
    });
    const pickupMean = mean(pickupKm);
    const atOfferMean = mean(accepted.map((o) => o.pickupKm));
    let optimal = { meanKm: 0, totalKm: 0, matched: 0, k: OPTIMAL_CANDIDATES, ms: 0 };
    if (assignedOrders.length > 0) {
      optimal = optimalPickup(
        assignedOrders.map(([orderId]) => orderRestaurant[orderIndex.get(orderId)!]!),
        restaurants,
        snapshot,
        OPTIMAL_CANDIDATES,
      );
    }
    log(
      `pickup distance on the snapshot: achieved mean ${r3(pickupMean)} km, optimal ${r3(optimal.meanKm)} km (${optimal.matched} of ${assignedOrders.length} matched within ` +
        `${optimal.k} nearest, solved in ${Math.round(optimal.ms)} ms); at offer time (server's view) ${r3(atOfferMean)} km`,
    );

    const rssEnd = servers().reduce((a, s) => a + (rssMb(s.pid) ?? 0), 0);
    const rssMax = serversRss();
    const warnings = servers().reduce((a, s) => a + s.warnings(), 0);
    await Promise.all(servers().map((s) => s.stop()));
    server = dispatchServer = undefined;

    const p = done.p;
    const assigned = clientAssigned.size;
    const offerP99 = percentile(offerLat, 99);
    const ratio = optimal.meanKm > 0 ? pickupMean / optimal.meanKm : null;
    const streamErrors = p.offerStreamErrors + p.locationStreamErrors;
    const verified =
      doubleAssignments === 0 && mismatches === 0 && confirmErrorCount === 0 && p.onlineFailed === 0 && streamErrors === 0 && p.answerErrors === 0 && done.pings.rejected === 0 && assigned === confirmed;
    log(
      `offers: first offer p50 ${r2(percentile(offerLat, 50))} ms, p99 ${r2(offerP99)} ms, max ${r2(offerLat[offerLat.length - 1] ?? 0)} ms ` +
        `(${offersBeforeConfirmReturned} arrived before AcceptOrder returned); redispatch p50 ${r2(percentile(redispatch, 50))} ms, p99 ${r2(percentile(redispatch, 99))} ms; ` +
        `assign p50 ${r2(percentile(assignLat, 50))} ms, p99 ${r2(percentile(assignLat, 99))} ms`,
    );
    log(
      `verify: ${assigned} of ${confirmed} confirmed orders assigned after ${r1(waitedMs / 1000)} s, ${doubleAssignments} double assignments, ${mismatches} disagreements, ` +
        `${confirmErrorCount} confirm errors, ${p.onlineFailed} GoOnline failures, ${streamErrors} stream errors, ${p.answerErrors} answer errors, ` +
        `pings sent ${done.pings.sent} accepted ${done.pings.accepted} rejected ${done.pings.rejected} ${JSON.stringify(done.pings.byReason)}, ` +
        `server warnings ${warnings}: ${verified ? "OK" : "MISMATCH"}`,
    );
    log(
      `CPU over burst and wait: server ${Math.round(cpuServer)} ms; drivers process ${Math.round(done.cpuMs)} ms in all; server rss max ${r1(rssMax)} MiB; ` +
        `load average ${loadavg().map((x) => x.toFixed(1)).join(" ")}`,
    );
    if (!verified) process.exitCode = 1;
    console.log(
      JSON.stringify({
        bench: "dispatch",
        drivers: nDrivers,
        orders: confirmed,
        split,
        offer_p50_ms: r2(percentile(offerLat, 50)),
        offer_p99_ms: r2(offerP99),
        assign_p99_ms: r2(percentile(assignLat, 99)),
        offers_per_assignment: assigned > 0 ? r3(p.offers / assigned) : null,
        double_assignments: doubleAssignments,
        pickup_km_mean: r3(pickupMean),
        pickup_km_optimal: r3(optimal.meanKm),
        pickup_ratio: ratio === null ? null : r3(ratio),
        pickup_km_at_offer_mean: r3(atOfferMean),
        offer_p99_ok: offerLat.length > 0 && offerP99 < TARGET_OFFER_P99_MS,
        pickup_ok: ratio !== null && ratio <= TARGET_PICKUP_RATIO,
        verified,
        assigned,
        flagged: flaggedKnown ? flaggedCount : null,
        unassigned: confirmed - assigned,
        rate_per_s: rate,
        confirm_rate_per_s: r1(confirmRate),
        confirm_errors: confirmErrorCount,
        confirm_p50_ms: r2(percentile(sortNum(confirmLatency), 50)),
        confirm_p99_ms: r2(percentile(confirmLatency, 99)),
        late_confirm_sends: lateSends,
        offer_max_ms: r2(offerLat[offerLat.length - 1] ?? 0),
        offers_before_confirm_returned: offersBeforeConfirmReturned,
        redispatch_p50_ms: r2(percentile(redispatch, 50)),
        redispatch_p99_ms: r2(percentile(redispatch, 99)),
        assign_p50_ms: r2(percentile(assignLat, 50)),
        offers: p.offers,
        declines: count("declined"),
        expired: p.expired,
        lost_accepts: p.lost,
        withdrawn: p.withdrawn,
        offers_to_busy_drivers: done.offers.filter((o) => o.toBusy).length,
        foreign_offers: foreignOffers,
        double_client_orders: ordersAcceptedTwice.size,
        double_client_drivers: driversOverLimitClient,
        double_db_drivers: db.driversOverLimit,
        double_db_orders: db.ordersAssignedTwice,
        db_disagreements: mismatches,
        optimal_matched: optimal.matched,
        optimal_candidates: optimal.k,
        optimal_solve_ms: Math.round(optimal.ms),
        baseline_redis_offer_p50_ms: r3(baseline.p50),
        baseline_redis_offer_p99_ms: r3(baseline.p99),
        offer_p99_per_baseline_p99: baseline.p99 > 0 ? r1(offerP99 / baseline.p99) : null,
        rss_mb: Math.round(rssMax),
        rss_end_mb: rssEnd === undefined ? null : Math.round(rssEnd),
        server_cpu_ms: Math.round(cpuServer),
        drivers_cpu_ms: Math.round(done.cpuMs),
        server_warnings: warnings,
        pings_sent: done.pings.sent,
        pings_rejected: done.pings.rejected,
        stream_errors: streamErrors,
        waited_s: r1(waitedMs / 1000),
        loadavg_1m: r1(loadavg()[0]!),
      }),
    );
  } finally {
    if (child && child.exitCode === null) child.kill("SIGKILL");
    await pool?.end().catch(() => {});
    await Promise.all(servers().map((s) => s.stop().catch(() => {})));
    await redisDb.flush().catch((err: unknown) => log(`could not empty Redis database ${redisDb.db}: ${String(err)}`));
    await runDb.drop().catch((err: unknown) => log(`could not drop the run database: ${String(err)}`));
  }
}

function mean(xs: number[]): number {
  return xs.length > 0 ? xs.reduce((s, x) => s + x, 0) / xs.length : 0;
}

/** The point `m` metres from `p` in direction `rad` (clockwise from north), flat-earth at city scale. */
function offset(p: Point, m: number, rad: number): Point {
  return {
    lat: p.lat + (m * Math.cos(rad)) / 111_320,
    lng: p.lng + (m * Math.sin(rad)) / (111_320 * Math.cos((p.lat * Math.PI) / 180)),
  };
}

/**
 * One offer's Redis work without dabba: GEOSEARCH the nearest drivers of a random point, then
 * lock the nearest with SET NX PX, sequentially for BASELINE_MS, over `members` fleet positions.
 */
async function redisBaseline(url: string, members: number): Promise<{ p50: number; p99: number; n: number }> {
  const r = new Redis(url, { maxRetriesPerRequest: 1 });
  const key = "bench:baseline:geo";
  try {
    const fleet = createFleet({ city: BENGALURU, drivers: members, seed: 7, startMs: 0 });
    const points = fleet.step(1000).map((p) => p.location);
    for (let i = 0; i < points.length; i += 1000) {
      const pipe = r.pipeline();
      for (let j = i; j < Math.min(points.length, i + 1000); j++) pipe.geoadd(key, points[j]!.lng, points[j]!.lat, `d${j}`);
      await pipe.exec();
    }
    const rng = mulberry32(99);
    const lat: number[] = [];
    const once = async () => {
      const p = offset(BENGALURU.centre, RESTAURANT_RADIUS_M * Math.sqrt(rng()), rng() * 2 * Math.PI);
      const t0 = performance.now();
      const near = (await r.geosearch(key, "FROMLONLAT", p.lng, p.lat, "BYRADIUS", 5, "km", "ASC", "COUNT", 50)) as string[];
      if (near.length > 0) await r.set(`bench:baseline:offer:${near[0]}`, "order:1", "PX", 20_000, "NX");
      return performance.now() - t0;
    };
    const warmEnd = performance.now() + 300;
    while (performance.now() < warmEnd) await once();
    const end = performance.now() + BASELINE_MS;
    while (performance.now() < end) lat.push(await once());
    sortNum(lat);
    return { p50: percentile(lat, 50), p99: percentile(lat, 99), n: lat.length };
  } finally {
    r.disconnect();
  }
}
