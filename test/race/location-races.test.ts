import assert from "node:assert/strict";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { sql } from "kysely";
import { LocationService, type ReportLocationsRequestSchema } from "../../gen/dabba/location/v1/location_service_pb.js";
import type { LocationModule } from "../../services/location/index.js";
import { cityGeoKey, driverFixKey } from "../../services/location/keys.js";
import { defaultLocationConfig } from "../../services/platform/config.js";
import { uniqueId } from "../helpers/backends.js";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { createMesh } from "../../services/mesh.js";
import { bearer } from "../../services/platform/auth.js";
import { startTestMesh, type TestMesh } from "../helpers/mesh.js";
import { offsetMetres, pushStream } from "../helpers/push-stream.js";
import { until } from "../helpers/wait.js";

type ReportMsg = MessageInitShape<typeof ReportLocationsRequestSchema>;
type PingInit = NonNullable<ReportMsg["pings"]>[number];

const DRIVERS = 30;
const STREAMS_PER_DRIVER = 3;
const FIXES = 60;
const START = { lat: 12.9756, lng: 77.606 };

/** Deterministic shuffle (xorshift) so a failure can be replayed. */
function shuffled<T>(xs: readonly T[], seed: number): T[] {
  const out = [...xs];
  let s = seed || 1;
  for (let i = out.length - 1; i > 0; i--) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    const j = Math.abs(s) % (i + 1);
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

/**
 * A driver reconnecting while its old streams are still open: several streams of one driver
 * send the same fixes concurrently, each in its own random order and batching, for many drivers
 * at once, against real Postgres and Redis. Whatever interleaving happens, a fix is accepted at
 * most once, live state ends at the newest fix, and history holds each accepted fix exactly once.
 */
describe("location ingestion under concurrent streams of the same drivers (Postgres + Redis)", function () {
  this.timeout(120_000);
  let t: TestMesh;

  before(async () => {
    t = await startTestMesh("real", {
      location: { ...defaultLocationConfig, maxPingsPerSecond: 100_000, pingBurst: 100_000, historyMinIntervalMs: 0 },
    });
  });
  after(async () => t?.close());

  it("accepts each fix once, keeps the newest live and writes each accepted fix to history once", async () => {
    const end = Date.now() - 1000;
    const drivers = Array.from({ length: DRIVERS }, (_, d) => {
      const id = `race-drv-${uniqueId()}-${d}`;
      const from = offsetMetres(START, d * 50, d * 30);
      // Moving north at 8 m/s, a fix every 200 ms of device time, the newest a second ago.
      const fixes = Array.from({ length: FIXES }, (_, i) => ({
        location: offsetMetres(from, i * 1.6, 0),
        accuracyM: 5,
        speedMps: 8,
        headingDeg: 0,
        atMs: end - (FIXES - 1 - i) * 200,
      }));
      return { id, fixes };
    });

    const results = await Promise.all(
      drivers.flatMap((drv, d) =>
        Array.from({ length: STREAMS_PER_DRIVER }, async (_, s) => {
          const client = await t.client(LocationService, "connect-grpc", "driver", drv.id);
          const order = shuffled(drv.fixes, d * 31 + s * 7 + 1);
          async function* body(): AsyncIterable<ReportMsg> {
            let seq = 0n;
            for (let i = 0; i < order.length; ) {
              const n = 1 + ((i + s) % 4); // batches of 1-4
              const pings: PingInit[] = order.slice(i, i + n).map((f) => ({
                location: f.location,
                accuracyM: f.accuracyM,
                speedMps: f.speedMps,
                headingDeg: f.headingDeg,
                deviceTime: timestampFromMs(f.atMs),
                sequence: ++seq,
              }));
              i += n;
              yield { pings };
            }
          }
          return { driver: drv.id, summary: await client.reportLocations(body()) };
        }),
      ),
    );

    const history = (t.mesh.modules.get("location") as LocationModule).parts.history;
    await history.flush();

    for (const drv of drivers) {
      const mine = results.filter((r) => r.driver === drv.id).map((r) => r.summary);
      const accepted = mine.reduce((n, s) => n + Number(s.accepted), 0);
      const rejected = mine.reduce((n, s) => n + Number(s.rejected), 0);
      assert.equal(accepted + rejected, FIXES * STREAMS_PER_DRIVER, "every ping is counted");
      assert.ok(accepted >= 1 && accepted <= FIXES, `${drv.id}: accepted ${accepted} of ${FIXES} distinct fixes`);
      for (const s of mine) {
        for (const reason of Object.keys(s.rejectedByReason)) assert.equal(reason, "out_of_order", `${drv.id}: unexpected ${reason}`);
      }

      // Live state is the newest fix (it is accepted by whichever stream sends it first).
      const newest = drv.fixes[FIXES - 1]!;
      const fix = await t.mesh.redis.kv.hgetall(driverFixKey(drv.id));
      assert.equal(Number(fix.at), newest.atMs, `${drv.id}: live fix is the newest`);
      assert.equal(Number(fix.lat), newest.location.lat);
      const hits = await t.mesh.redis.geo.search(cityGeoKey("bengaluru"), { ...newest.location, radiusKm: 0.01 });
      assert.ok(hits.some((h) => h.member === drv.id), `${drv.id}: geo index at the newest position`);

      // History: exactly the accepted fixes, each once, all strictly increasing in device time.
      const rows = await sql<{ n: number; distinct_at: number }>`
        select count(*)::int as n, count(distinct recorded_at)::int as distinct_at
        from location_history where driver_id = ${drv.id}`.execute(t.mesh.db.kysely);
      assert.equal(rows.rows[0]!.n, accepted, `${drv.id}: one history row per accepted fix`);
      assert.equal(rows.rows[0]!.distinct_at, accepted, `${drv.id}: no fix stored twice`);
    }
  });

  it("never lets a second process overwrite a driver's newer fix with an older one", async () => {
    // A second location process on the same Postgres and Redis (a driver's reconnect landed there
    // while its old stream was still open). Process B writes the newest fixes first; process A,
    // which knows nothing of them, then accepts older ones: the live state must stay at B's newest.
    const second = await createMesh({ ...t.config, port: 0, webPort: 0 }, { db: t.mesh.db, redis: t.mesh.redis, logger: t.mesh.logger });
    const { port } = await second.start();
    try {
      const driverId = `race-two-${uniqueId()}`;
      const token = await t.token("driver", driverId);
      const viaA = createClient(LocationService, t.transport("connect-grpc"));
      const viaB = createClient(LocationService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}`, interceptors: [bearer(token)] }));
      const end = Date.now() - 1000;
      const fix = (i: number, seq: number): PingInit => ({
        location: offsetMetres(START, i * 8, 0),
        accuracyM: 5,
        speedMps: 8,
        headingDeg: 0,
        deviceTime: timestampFromMs(end - (20 - i) * 1000),
        sequence: BigInt(seq),
      });
      async function* send(idx: number[]): AsyncIterable<ReportMsg> {
        let seq = 0;
        for (const i of idx) yield { pings: [fix(i, ++seq)] };
      }
      // A's stream is open (its state loaded, first fix written) before B starts.
      const aStream = pushStream<ReportMsg>();
      const aSummary = viaA.reportLocations(aStream, { headers: { authorization: `Bearer ${token}` } });
      aStream.push({ pings: [fix(0, 1)] });
      await until(async () => (await t.mesh.redis.kv.hgetall(driverFixKey(driverId))).seq === "1", 10_000, "A's first fix written");
      const b = await viaB.reportLocations(send([10, 12, 14, 16, 18, 20]));
      assert.equal(b.accepted, 6n);
      let seq = 1;
      for (const i of [1, 3, 5, 7, 9, 11, 13, 15, 17, 19]) aStream.push({ pings: [fix(i, ++seq)] });
      aStream.end();
      const a = await aSummary;
      assert.equal(a.accepted, 11n, "process A cannot know of B's fixes and accepts its own");
      const live = await t.mesh.redis.kv.hgetall(driverFixKey(driverId));
      assert.equal(Number(live.at), end, "the live fix is still the newest (B's last)");
      const newest = offsetMetres(START, 20 * 8, 0);
      const hits = await t.mesh.redis.geo.search(cityGeoKey("bengaluru"), { ...newest, radiusKm: 0.005 });
      assert.ok(hits.some((h) => h.member === driverId), "the geo index is at the newest position too");
    } finally {
      await second.stop();
    }
  });
});
