import assert from "node:assert/strict";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs, type Timestamp } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Client, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { LocationService, type ReportLocationsRequestSchema, type ReportLocationsResponse } from "../../gen/dabba/location/v1/location_service_pb.js";
import { createLocationService, type LocationModule } from "../../services/location/index.js";
import { cityGeoKey, driverFixKey, spoofCountKey } from "../../services/location/keys.js";
import { createFleet } from "../../services/location/sim/drivers.js";
import type { AcceptedFix, ActiveAssignment, ActiveOrders, HistorySink } from "../../services/location/types.js";
import { createTickWriter } from "../../services/location/writer.js";
import { authInterceptor, createVerifier, mintToken, type Role } from "../../services/platform/auth.js";
import { BENGALURU, defaultLocationConfig, testConfig, type Config, type LocationConfig } from "../../services/platform/config.js";
import { openDb, type Db } from "../../services/platform/db.js";
import { createHost, type Host } from "../../services/platform/host.js";
import { createLogger } from "../../services/platform/logger.js";
import { openRedis, type BatchOp, type RedisPorts } from "../../services/platform/redis.js";
import { decodeSignal, trackingChannel } from "../../services/tracking/channel.js";
import { redisUrl, requireReal, uniqueId } from "../helpers/backends.js";
import { createGrpcJsTransport } from "../helpers/grpc-js-transport.js";
import { offsetMetres, pushStream } from "../helpers/push-stream.js";
import { createRunDatabase } from "../helpers/run-database.js";
import { until } from "../helpers/wait.js";
import { expectCode } from "../helpers/expect.js";

type ReportMsg = MessageInitShape<typeof ReportLocationsRequestSchema>;
/** A Ping as the clients accept it (fields may be missing: bad pings). */
interface PingInit {
  location?: { lat: number; lng: number };
  accuracyM?: number;
  speedMps?: number;
  headingDeg?: number;
  deviceTime?: Timestamp;
  sequence?: bigint;
}
type Kind = "grpc-js" | "connect-grpc";
const KINDS: Kind[] = ["grpc-js", "connect-grpc"];

/** Records what ingestion hands the active-order tracker; assignments are set by the test. */
class FakeActiveOrders implements ActiveOrders {
  readonly assignments = new Map<string, ActiveAssignment>();
  readonly attached = new Map<string, number>();
  readonly detached: string[] = [];
  readonly observed: AcceptedFix[] = [];
  get(driverId: string) {
    const a = this.assignments.get(driverId);
    return a ? [a] : [];
  }
  async lookup(driverId: string) {
    return this.get(driverId);
  }
  async attach(driverId: string) {
    this.attached.set(driverId, (this.attached.get(driverId) ?? 0) + 1);
  }
  detach(driverId: string) {
    this.detached.push(driverId);
  }
  observe(fixes: readonly AcceptedFix[]) {
    this.observed.push(...fixes);
  }
  async start() {}
  async stop() {}
}

interface Env {
  cfg: Config;
  redis: RedisPorts;
  db: Db;
  module: LocationModule;
  active: FakeActiveOrders;
  port: number;
  /** A LocationService client of the kind, carrying a token of (role, sub). */
  client(kind: Kind, role: Role, sub: string, restaurantId?: string): Promise<Client<typeof LocationService>>;
  close(): Promise<void>;
}

/**
 * The location service with its real history (PGlite or a per-run Postgres database) and tick
 * writer (in-process twin or real Redis), behind the auth interceptor on a real gRPC listener;
 * the active-order tracker is a recording double so assignments are under the test's control.
 */
async function openEnv(backend: "embedded" | "real", loc: Partial<LocationConfig> = {}): Promise<Env> {
  const cfg = testConfig({ location: { ...defaultLocationConfig, ...loc } });
  const logger = createLogger("silent");
  const runDb = backend === "real" ? await createRunDatabase("location_test") : undefined;
  const db = await openDb({ databaseUrl: runDb?.url, dataDir: "memory://" });
  const redis = await openRedis({ redisUrl: backend === "real" ? redisUrl() : undefined, keyPrefix: `test:${uniqueId()}:` });
  const active = new FakeActiveOrders();
  const module = createLocationService(
    { config: cfg, db, redis, logger, peer: () => assert.fail("the location service under test calls no peer") },
    { activeOrders: active },
  );
  await db.migrate("location", module.migrations);
  await module.start();
  const verifier = await createVerifier(cfg.auth);
  const host: Host = createHost({ config: cfg, logger, modules: [module], interceptors: [authInterceptor(verifier)] });
  const { port } = await host.start();
  const grpcJs: (Transport & { close(): void })[] = [];
  return {
    cfg,
    redis,
    db,
    module,
    active,
    port,
    async client(kind, role, sub, restaurantId) {
      const token = await mintToken(cfg.auth, { role, sub, restaurantId: restaurantId ?? (role === "restaurant" ? `r-${sub}` : undefined) });
      let t: Transport;
      if (kind === "grpc-js") {
        const g = createGrpcJsTransport(`127.0.0.1:${port}`);
        grpcJs.push(g);
        t = g;
      } else {
        t = createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}` });
      }
      return createClient(LocationService, withToken(t, token));
    },
    async close() {
      for (const g of grpcJs) g.close();
      await host.stop();
      await module.stop();
      await redis.close();
      await db.close();
      await runDb?.drop();
    },
  };
}

function withToken(t: Transport, token: string): Transport {
  const h = (headers?: HeadersInit) => {
    const out = new Headers(headers);
    out.set("authorization", `Bearer ${token}`);
    return out;
  };
  return {
    unary: (m, s, to, hd, i, cv) => t.unary(m, s, to, h(hd), i, cv),
    stream: (m, s, to, hd, i, cv) => t.stream(m, s, to, h(hd), i, cv),
  };
}

const MG_ROAD = { lat: 12.9756, lng: 77.606 };

/** Plausible fixes: a driver moving north at ~10 m/s, one fix per second of device time ending now. */
function walk(n: number, opts: { from?: { lat: number; lng: number }; endMs?: number; firstSeq?: number } = {}): PingInit[] {
  const from = opts.from ?? MG_ROAD;
  const end = opts.endMs ?? Date.now();
  return Array.from({ length: n }, (_, i) => ({
    location: offsetMetres(from, i * 10, 0),
    accuracyM: 6,
    speedMps: 10,
    headingDeg: 0,
    deviceTime: timestampFromMs(end - (n - 1 - i) * 1000),
    sequence: BigInt((opts.firstSeq ?? 1) + i),
  }));
}

async function* messages(batches: PingInit[][]): AsyncIterable<ReportMsg> {
  for (const pings of batches) yield { pings };
}

function chunks<T>(xs: T[], size: number): T[][] {
  const out: T[][] = [];
  for (let i = 0; i < xs.length; i += size) out.push(xs.slice(i, i + size));
  return out;
}

/** JSON with bigints, for assertion messages. */
function show(v: unknown): string {
  return JSON.stringify(v, (_k, x) => (typeof x === "bigint" ? `${x}n` : x));
}


for (const backend of ["embedded", "real"] as const) {
  describe(`LocationService ingestion (${backend} storage)`, function () {
    this.timeout(60_000);
    let env: Env;
    before(async function () {
      if (backend === "real") {
        await requireReal("postgres", this);
        await requireReal("redis", this);
      }
      env = await openEnv(backend);
    });
    after(async () => env?.close());

    for (const kind of KINDS) {
      describe(`over ${kind}`, () => {
        it("accepts a simulated driver's fixes, one per message and in small batches, and makes them readable", async () => {
          const fleet = createFleet({ city: BENGALURU, drivers: 1, seed: kind.length, startMs: Date.now() - 120_000, idPrefix: `sim-${uniqueId()}-` });
          const fixes = Array.from({ length: 60 }, () => fleet.step(1000)[0]!);
          const driverId = `drv-${uniqueId()}`;
          const driver = await env.client(kind, "driver", driverId);
          // One per message, then batches of 3 and 7 (a phone flushing what it buffered offline).
          const batches = [...fixes.slice(0, 20).map((f) => [f]), ...chunks(fixes.slice(20, 41), 3), ...chunks(fixes.slice(41), 7)];
          const summary = await driver.reportLocations(messages(batches));
          assert.equal(summary.rejected, 0n, show(summary.rejectedByReason));
          assert.equal(summary.accepted, 60n);

          const last = fixes[fixes.length - 1]!;
          const fix = await env.redis.kv.hgetall(driverFixKey(driverId));
          assert.deepEqual(Object.keys(fix).sort(), ["acc", "at", "city", "heading", "lat", "lng", "recv", "seq", "speed"]);
          assert.equal(Number(fix.lat), last.location.lat);
          assert.equal(Number(fix.lng), last.location.lng);
          assert.equal(Number(fix.at), Number(last.deviceTime.seconds) * 1000 + Math.floor(last.deviceTime.nanos / 1e6));
          assert.equal(fix.seq, String(last.sequence));
          assert.equal(fix.city, "bengaluru");
          assert.ok(Math.abs(Number(fix.recv) - Date.now()) < 60_000);
          const hits = await env.redis.geo.search(cityGeoKey("bengaluru"), { ...last.location, radiusKm: 0.05 });
          assert.ok(hits.some((h) => h.member === driverId), "the driver is in the city's geo set");

          const self = await driver.getDriverLocation({ driverId });
          assert.equal(self.position?.driverId, driverId);
          assert.equal(self.position?.location?.lat, last.location.lat);
          assert.equal(self.position?.accuracyM, last.accuracyM);

          // Every accepted fix reached the geofence observer and the history, in order.
          const observed = env.active.observed.filter((f) => f.driverId === driverId);
          assert.deepEqual(observed.map((f) => f.sequence), fixes.map((f) => f.sequence));
          assert.equal(env.active.attached.get(driverId), 1);
          assert.ok(env.active.detached.includes(driverId), "detached when the stream ended");
          await env.module.parts.history.flush();
          const trail = await env.module.parts.history.trail(driverId, Date.now() - 600_000, Date.now() + 60_000, 1000);
          assert.ok(trail.length >= 50, `history kept ${trail.length} points (at most one per second per driver)`);
        });

        it("counts every bad ping by reason and keeps the stream going", async () => {
          const driverId = `drv-${uniqueId()}`;
          const driver = await env.client(kind, "driver", driverId);
          const now = Date.now();
          const good = walk(6, { endMs: now - 5000 });
          const at = (ms: number) => timestampFromMs(ms);
          const base = { accuracyM: 5, speedMps: 8, headingDeg: 10 };
          const batches: PingInit[][] = [
            [good[0]!, good[1]!],
            [{ ...base, deviceTime: at(now - 20_000), sequence: 10n }], // missing_field (no location)
            [{ ...base, location: MG_ROAD, sequence: 11n }], // missing_field (no device time)
            [{ ...base, location: { lat: 91, lng: 77 }, deviceTime: at(now - 3900), sequence: 12n }], // invalid_coordinates
            [{ ...base, location: { lat: NaN, lng: 77 }, deviceTime: at(now - 3900), sequence: 13n }], // invalid_coordinates
            [{ ...base, headingDeg: 360, location: MG_ROAD, deviceTime: at(now - 3900), sequence: 14n }], // invalid_value
            [{ ...base, speedMps: -1, location: MG_ROAD, deviceTime: at(now - 3900), sequence: 15n }], // invalid_value
            [{ ...base, accuracyM: 250, location: MG_ROAD, deviceTime: at(now - 3900), sequence: 16n }], // low_accuracy
            [{ ...base, location: MG_ROAD, deviceTime: at(now + 3_600_000), sequence: 17n }], // too_far_in_future
            [{ ...base, location: MG_ROAD, deviceTime: at(now - 3_600_000), sequence: 18n }], // too_old
            [{ ...good[2]!, sequence: 2n }], // duplicate_sequence (bad pings' sequences above were never seen: they failed earlier checks)
            [{ ...good[0]!, sequence: 19n }], // out_of_order (older than the last accepted)
            [{ ...good[1]!, sequence: 20n }], // out_of_order (the same fix again)
            [{ ...base, location: { lat: 48.8566, lng: 2.3522 }, deviceTime: good[2]!.deviceTime, sequence: 21n }], // outside_service_area
            [{ ...base, location: offsetMetres(MG_ROAD, 5000, 0), deviceTime: good[2]!.deviceTime, sequence: 22n }], // impossible_speed
            // Good pings resume after the bad ones, then an oversized message.
            [{ ...good[2]!, sequence: 23n }, { ...good[3]!, sequence: 24n }],
            [
              { ...good[4]!, sequence: 25n },
              ...Array.from({ length: env.cfg.location.maxPingsPerMessage + 1 }, (_, i) => ({ ...good[5]!, sequence: 26n + BigInt(i) })),
            ],
          ];
          const before = Number((await env.redis.kv.get(spoofCountKey(driverId))) ?? 0);
          const s = await driver.reportLocations(messages(batches));
          // The 102-ping message: its first maxPingsPerMessage (100) pings are validated (good[4], good[5], then 98
          // repeats of good[5]'s time: out_of_order), the 2 beyond the limit are batch_too_large.
          const extraOutOfOrder = BigInt(env.cfg.location.maxPingsPerMessage - 2);
          assert.deepEqual(s.rejectedByReason, {
            missing_field: 2n,
            invalid_coordinates: 2n,
            invalid_value: 2n,
            low_accuracy: 1n,
            too_far_in_future: 1n,
            too_old: 1n,
            duplicate_sequence: 1n,
            out_of_order: 2n + extraOutOfOrder,
            outside_service_area: 1n,
            impossible_speed: 1n,
            batch_too_large: 2n,
          });
          assert.equal(s.accepted, 6n);
          assert.equal(s.rejected, 14n + extraOutOfOrder + 2n);
          assert.equal(Number(await env.redis.kv.get(spoofCountKey(driverId))), before + 1, "the spoof is counted against the driver");
          const fix = await env.redis.kv.hgetall(driverFixKey(driverId));
          assert.equal(fix.seq, "26", "the last accepted fix is stored");
        });

        it("rate-limits a driver with one bucket across its streams", async () => {
          const driverId = `drv-${uniqueId()}`;
          const burst = env.cfg.location.pingBurst;
          const extra = 60;
          // burst + extra fixes, 1 s apart and 1 m apart, device times ending now.
          const all = walk(burst + extra, { endMs: Date.now() - 1000 }).map((p, i) => ({ ...p, location: offsetMetres(MG_ROAD, i, 0) }));
          // Stream A spends the whole burst and stays open ...
          const a = pushStream<ReportMsg>();
          const summaryA = (await env.client(kind, "driver", driverId)).reportLocations(a);
          for (const c of chunks(all.slice(0, burst), 10)) a.push({ pings: c });
          const lastSeqA = String(all[burst - 1]!.sequence);
          await until(async () => (await env.redis.kv.hgetall(driverFixKey(driverId))).seq === lastSeqA, 10_000, "stream A's fixes written");
          // ... while stream B, fresh, finds the driver's bucket nearly empty.
          const sb = await (await env.client(kind, "driver", driverId)).reportLocations(messages(chunks(all.slice(burst), 10)));
          a.end();
          const sa = await summaryA;
          assert.equal(sa.accepted, BigInt(burst), show(sa.rejectedByReason));
          const limited = sb.rejectedByReason.rate_limited ?? 0n;
          assert.ok(limited > 0n, `B was not limited: ${show(sb.rejectedByReason)}`);
          assert.equal(sb.accepted + limited, BigInt(extra));
          assert.deepEqual(Object.keys(sb.rejectedByReason), ["rate_limited"]);
          // Another driver is not affected.
          const other = await (await env.client(kind, "driver", `drv-${uniqueId()}`)).reportLocations(messages(chunks(all.slice(burst), 10)));
          assert.equal(other.accepted, BigInt(extra));
        });

        it("takes the driver from the token: another driver's data is untouched", async () => {
          const victim = `drv-${uniqueId()}`;
          const attacker = `drv-${uniqueId()}`;
          await (await env.client(kind, "driver", victim)).reportLocations(messages([walk(1, { from: MG_ROAD })]));
          const victimFix = await env.redis.kv.hgetall(driverFixKey(victim));
          assert.equal(victimFix.seq, "1");
          const far = offsetMetres(MG_ROAD, 3000, 3000);
          const s = await (await env.client(kind, "driver", attacker)).reportLocations(messages([walk(3, { from: far, firstSeq: 50 })]));
          assert.equal(s.accepted, 3n);
          assert.deepEqual(await env.redis.kv.hgetall(driverFixKey(victim)), victimFix);
          assert.equal((await env.redis.kv.hgetall(driverFixKey(attacker))).seq, "52");
        });

        it("lets only drivers stream: PERMISSION_DENIED for a customer, ops or service, nothing written", async () => {
          for (const role of ["customer", "ops", "service", "restaurant"] as Role[]) {
            const sub = `${role}-${uniqueId()}`;
            const c = await env.client(kind, role, sub);
            await expectCode(c.reportLocations(messages([walk(2)])), Code.PermissionDenied, /role/);
            assert.deepEqual(await env.redis.kv.hgetall(driverFixKey(sub)), {});
          }
          const anon = createClient(LocationService, kind === "grpc-js" ? createGrpcJsTransport(`127.0.0.1:${env.port}`) : createGrpcTransport({ baseUrl: `http://127.0.0.1:${env.port}` }));
          await expectCode(anon.reportLocations(messages([walk(1)])), Code.Unauthenticated);
        });

        it("publishes the carrying driver's newest position on its order's tracking channel", async () => {
          const driverId = `drv-${uniqueId()}`;
          const orderId = `ord-${uniqueId()}`;
          env.active.assignments.set(driverId, {
            driverId,
            orderId,
            customerId: "c",
            restaurantId: "r",
            status: "PICKED_UP",
            pickup: MG_ROAD,
            dropoff: offsetMetres(MG_ROAD, 2000, 0),
          });
          const got: number[] = [];
          const unsubscribe = await env.redis.channels.subscribe(trackingChannel(orderId), (data) => {
            const sig = decodeSignal(data);
            assert.equal(sig.kind, "position");
            if (sig.kind === "position") {
              assert.equal(sig.position.driverId, driverId);
              got.push(Number(sig.position.at!.seconds) * 1000 + sig.position.at!.nanos / 1e6);
            }
          });
          try {
            const pings = walk(5);
            const s = await (await env.client(kind, "driver", driverId)).reportLocations(messages(pings.map((p) => [p])));
            assert.equal(s.accepted, 5n);
            const lastAt = Number(pings[4]!.deviceTime!.seconds) * 1000 + pings[4]!.deviceTime!.nanos / 1e6;
            await until(() => got.includes(lastAt), 5000, "the last position on the tracking channel");
            for (let i = 1; i < got.length; i++) assert.ok(got[i]! > got[i - 1]!, "positions in order");
          } finally {
            env.active.assignments.delete(driverId);
            await unsubscribe();
          }
        });
      });
    }

    describe("GetDriverLocation", () => {
      let driverId: string;
      before(async () => {
        driverId = `drv-${uniqueId()}`;
        await (await env.client("connect-grpc", "driver", driverId)).reportLocations(messages([walk(2)]));
        env.active.assignments.set(driverId, {
          driverId,
          orderId: "o-1",
          customerId: "cust-carried",
          restaurantId: "r-1",
          status: "PICKED_UP",
          pickup: MG_ROAD,
          dropoff: offsetMetres(MG_ROAD, 1000, 0),
        });
      });
      after(() => env.active.assignments.delete(driverId));

      for (const kind of KINDS) {
        it(`answers ops, services, the driver and the carried customer over ${kind}; NOT_FOUND for anyone else`, async () => {
          for (const [role, sub] of [["ops", "op"], ["service", "dispatch"], ["driver", driverId], ["customer", "cust-carried"]] as [Role, string][]) {
            const r = await (await env.client(kind, role, sub)).getDriverLocation({ driverId });
            assert.equal(r.position?.driverId, driverId, role);
            assert.ok(Math.abs(r.position!.location!.lat - offsetMetres(MG_ROAD, 10, 0).lat) < 1e-9, role);
          }
          for (const [role, sub] of [["customer", "cust-other"], ["driver", "drv-other"], ["restaurant", "r-1"]] as [Role, string][]) {
            await expectCode((await env.client(kind, role, sub)).getDriverLocation({ driverId }), Code.NotFound);
          }
          const ops = await env.client(kind, "ops", "op");
          await expectCode(ops.getDriverLocation({ driverId: `drv-never-${uniqueId()}` }), Code.NotFound);
          await expectCode(ops.getDriverLocation({ driverId: "" }), Code.InvalidArgument, /driver_id/);
          await expectCode(ops.getDriverLocation({ driverId: "x".repeat(129) }), Code.InvalidArgument, /driver_id/);
        });
      }
    });

    describe("FindNearbyDrivers", () => {
      const ids: string[] = [];
      // 12 km south of the centre: clear of the simulated fleets (within 8 km of the centre) and other tests.
      const centre = offsetMetres(BENGALURU.centre, -12_000, 0);
      before(async () => {
        // Five drivers 300 m, 600 m, ... 1500 m east of the centre.
        for (let i = 1; i <= 5; i++) {
          const id = `near-${i}-${uniqueId()}`;
          ids.push(id);
          await (await env.client("grpc-js", "driver", id)).reportLocations(messages([walk(1, { from: offsetMetres(centre, 0, i * 300) })]));
        }
      });

      for (const kind of KINDS) {
        it(`lists live drivers nearest first with distances over ${kind}`, async () => {
          const ops = await env.client(kind, "ops", "op");
          const r = await ops.findNearbyDrivers({ city: "bengaluru", location: centre, radiusKm: 1.0 });
          const mine = r.drivers.filter((d) => ids.includes(d.driverId));
          assert.deepEqual(mine.map((d) => d.driverId), ids.slice(0, 3));
          for (const [i, d] of mine.entries()) assert.ok(Math.abs(d.distanceKm - (i + 1) * 0.3) < 0.01, `${d.distanceKm}`);
          for (let i = 1; i < r.drivers.length; i++) assert.ok(r.drivers[i]!.distanceKm >= r.drivers[i - 1]!.distanceKm);
          const svc = await env.client(kind, "service", "dispatch");
          const two = await svc.findNearbyDrivers({ city: "bengaluru", location: offsetMetres(centre, 0, 1500), radiusKm: 0.5, limit: 2 });
          assert.deepEqual(two.drivers.map((d) => d.driverId), [ids[4], ids[3]]);
        });

        it(`validates the request and the role over ${kind}`, async () => {
          const ops = await env.client(kind, "ops", "op");
          await expectCode(ops.findNearbyDrivers({ city: "atlantis", location: centre }), Code.InvalidArgument, /^city/);
          await expectCode(ops.findNearbyDrivers({ city: "", location: centre }), Code.InvalidArgument, /^city/);
          await expectCode(ops.findNearbyDrivers({ city: "bengaluru" }), Code.InvalidArgument, /^location/);
          await expectCode(ops.findNearbyDrivers({ city: "bengaluru", location: { lat: NaN, lng: 77 } }), Code.InvalidArgument, /location\.lat/);
          await expectCode(ops.findNearbyDrivers({ city: "bengaluru", location: { lat: 12, lng: 181 } }), Code.InvalidArgument, /location\.lng/);
          await expectCode(ops.findNearbyDrivers({ city: "bengaluru", location: centre, radiusKm: 50.5 }), Code.InvalidArgument, /radius_km/);
          await expectCode(ops.findNearbyDrivers({ city: "bengaluru", location: centre, radiusKm: -1 }), Code.InvalidArgument, /radius_km/);
          await expectCode(ops.findNearbyDrivers({ city: "bengaluru", location: centre, limit: -1 }), Code.InvalidArgument, /limit/);
          await expectCode(ops.findNearbyDrivers({ city: "bengaluru", location: centre, limit: 201 }), Code.InvalidArgument, /limit/);
          for (const role of ["driver", "customer", "restaurant"] as Role[]) {
            await expectCode((await env.client(kind, role, "x")).findNearbyDrivers({ city: "bengaluru", location: centre }), Code.PermissionDenied);
          }
        });
      }
    });

    it("serves many driver streams on one grpc-js channel at realistic rates", async function () {
      const drivers = 50;
      const pingsEach = 4;
      const t = createGrpcJsTransport(`127.0.0.1:${env.port}`);
      try {
        const tokens = await Promise.all(Array.from({ length: drivers }, (_, i) => mintToken(env.cfg.auth, { role: "driver", sub: `many-${i}` })));
        const fleet = createFleet({ city: BENGALURU, drivers, seed: 7, startMs: Date.now() - 10_000, idPrefix: "many-" });
        const streams = tokens.map(() => pushStream<ReportMsg>());
        const summaries = streams.map((s, i) =>
          createClient(LocationService, withToken(t, tokens[i]!)).reportLocations(s),
        );
        // One fix per driver per second of device time, sent at that pace.
        for (let k = 0; k < pingsEach; k++) {
          const fixes = fleet.step(1000);
          fixes.forEach((f, i) => streams[i]!.push({ pings: [f] }));
          if (k < pingsEach - 1) await new Promise((r) => setTimeout(r, 1000));
        }
        for (const s of streams) s.end();
        const results: ReportLocationsResponse[] = await Promise.all(summaries);
        for (const r of results) {
          assert.equal(r.rejected, 0n, show(r.rejectedByReason));
          assert.equal(r.accepted, BigInt(pingsEach));
        }
        const live = await env.redis.hgetallMany(fleet.drivers.map((d) => driverFixKey(d.id)));
        assert.ok(live.every((h) => h.seq !== undefined), "every driver is live");
      } finally {
        t.close();
      }
    });
  });

  describe(`LocationService stale drivers (${backend} storage)`, function () {
    this.timeout(60_000);
    let env: Env;
    before(async function () {
      if (backend === "real") {
        await requireReal("postgres", this);
        await requireReal("redis", this);
      }
      env = await openEnv(backend, { fixTtlMs: 500 });
    });
    after(async () => env?.close());

    it("drops a silent driver out of FindNearbyDrivers and the geo set once its fix expires", async () => {
      const silent = `silent-${uniqueId()}`;
      const where = offsetMetres(MG_ROAD, 0, 100);
      await (await env.client("grpc-js", "driver", silent)).reportLocations(messages([walk(1, { from: where })]));
      const ops = await env.client("connect-grpc", "ops", "op");
      const found = await ops.findNearbyDrivers({ city: "bengaluru", location: MG_ROAD, radiusKm: 1 });
      assert.deepEqual(found.drivers.map((d) => d.driverId), [silent]);
      await until(async () => Object.keys(await env.redis.kv.hgetall(driverFixKey(silent))).length === 0, 5000, "the fix hash expires");
      // Still in the geo set until a search meets it.
      assert.equal((await env.redis.geo.search(cityGeoKey("bengaluru"), { ...MG_ROAD, radiusKm: 1 })).length, 1);
      const after = await ops.findNearbyDrivers({ city: "bengaluru", location: MG_ROAD, radiusKm: 1 });
      assert.deepEqual(after.drivers, []);
      await until(async () => (await env.redis.geo.search(cityGeoKey("bengaluru"), { ...MG_ROAD, radiusKm: 1 })).length === 0, 5000, "lazy geo removal");
      await expectCode(ops.getDriverLocation({ driverId: silent }), Code.NotFound);
      // The driver comes back with its next ping.
      await (await env.client("grpc-js", "driver", silent)).reportLocations(messages([walk(1, { from: where, firstSeq: 2 })]));
      const back = await ops.findNearbyDrivers({ city: "bengaluru", location: MG_ROAD, radiusKm: 1 });
      assert.deepEqual(back.drivers.map((d) => d.driverId), [silent]);
    });
  });
}

// ---------------------------------------------------------------------------------------------
// The tick writer's batching and backpressure, against a Redis double whose batches the test releases.

describe("location tick writer", () => {
  const cfg: LocationConfig = { ...defaultLocationConfig, tickMs: 1 };
  const logger = createLogger("silent");
  const fix = (driverId: string, i: number, city = "bengaluru"): AcceptedFix => ({
    driverId,
    city,
    lat: MG_ROAD.lat + i * 1e-4,
    lng: MG_ROAD.lng,
    accuracyM: 5,
    speedMps: 10,
    headingDeg: 0,
    deviceTimeMs: 1_000_000 + i * 1000,
    receivedAtMs: 2_000_000 + i,
    sequence: BigInt(i),
  });
  const history: HistorySink & { got: number } = {
    got: 0,
    async append(f) {
      this.got += f.length;
    },
    async flush() {},
    start() {},
    async stop() {},
  };

  function gatedRedis() {
    const batches: { ops: BatchOp[]; release: (err?: Error) => void }[] = [];
    const redis = {
      async batch(ops: BatchOp[]) {
        await new Promise<void>((resolve, reject) => batches.push({ ops, release: (err) => (err ? reject(err) : resolve()) }));
      },
    } as unknown as RedisPorts;
    return { redis, batches };
  }

  it("sends one pipeline per tick with the newest fix per driver, one batch in flight, and holds submitters until it is written", async () => {
    const { redis, batches } = gatedRedis();
    const w = createTickWriter({ redis, config: cfg, logger, history, activeOrders: new FakeActiveOrders() });
    w.start();
    let firstDone = false;
    const first = w.submit([fix("a", 1), fix("a", 2), fix("b", 1)]).then(() => (firstDone = true));
    await until(() => batches.length === 1, 2000, "first batch");
    const ops = batches[0]!.ops;
    const fixOps = ops.flatMap((o) => (o.op === "fix" ? [o] : []));
    assert.equal(fixOps.length, 2, "one conditional fix write per driver");
    assert.deepEqual(fixOps.map((o) => o.member).sort(), ["a", "b"]);
    const aSet = fixOps.find((o) => o.key === driverFixKey("a"));
    assert.equal(aSet?.fields.seq, "2", "newest fix of the driver");
    assert.equal(aSet?.ttlMs, cfg.fixTtlMs);
    assert.equal(aSet?.orderField, "at", "never overwrites a newer fix");
    assert.equal(aSet?.geoKey, cityGeoKey("bengaluru"));

    // While the batch is in flight, more submits wait and no second batch is sent.
    let secondDone = false;
    const second = w.submit([fix("a", 3, "mysuru")]).then(() => (secondDone = true));
    await new Promise((r) => setTimeout(r, 30));
    assert.equal(batches.length, 1, "one batch in flight at a time");
    assert.equal(firstDone, false, "submitters wait for their batch");
    batches[0]!.release();
    await first;
    await until(() => batches.length === 2, 2000, "second batch");
    assert.equal(secondDone, false);
    // The driver changed city: removed from the previous city's set in the same pipeline.
    assert.deepEqual(
      batches[1]!.ops.filter((o) => o.op === "georemove"),
      [{ op: "georemove", key: cityGeoKey("bengaluru"), members: ["a"] }],
    );
    // A failed batch is counted and its submitters are released: the streams go on.
    batches[1]!.release(new Error("READONLY connection lost"));
    await second;
    assert.equal(w.stats.failedBatches, 1);
    assert.equal(w.stats.lostFixes, 1);
    assert.equal(w.stats.batches, 1);
    const stopping = w.stop();
    await stopping;
    assert.equal(history.got, 4);
  });
});
