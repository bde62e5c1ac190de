import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Redis } from "ioredis";
import { LocationService, type ReportLocationsRequestSchema, type ReportLocationsResponse } from "../../gen/dabba/location/v1/location_service_pb.js";
import { cityGeoKey, driverFixKey } from "../../services/location/keys.js";
import type { LocationModule } from "../../services/location/index.js";
import { defaultLocationConfig } from "../../services/platform/config.js";
import { uniqueId } from "../helpers/backends.js";
import { startTestMesh, type ClientKind, type TestMesh } from "../helpers/mesh.js";
import { offsetMetres, pushStream } from "../helpers/push-stream.js";
import { freePort, killRedis, startRedis } from "../helpers/private-redis.js";
import { sleep, until } from "../helpers/wait.js";

type ReportMsg = MessageInitShape<typeof ReportLocationsRequestSchema>;

/**
 * Redis restarts under live ingestion: dabba keeps running, the drivers' streams (one over
 * grpc-js, one over connect-node's gRPC transport) never fail, and every driver reappears in
 * the (empty) new Redis with its next pings.
 */
describe("location ingestion survives a Redis restart", function () {
  this.timeout(120_000);
  let port: number;
  let redis: ChildProcess | undefined;
  let t: TestMesh | undefined;

  before(async function () {
    port = await freePort();
    redis = await startRedis(port);
    t = await startTestMesh("real", {
      redisUrl: `redis://127.0.0.1:${port}`,
      location: { ...defaultLocationConfig, maxPingsPerSecond: 50 },
    });
  });

  after(async () => {
    await t?.close();
    if (redis) await killRedis(redis);
  });

  it("keeps both streams open across SIGKILL and restart, and rewrites the drivers' live state", async () => {
    const mesh = t!;
    const location = mesh.mesh.modules.get("location") as LocationModule;
    const kinds: ClientKind[] = ["grpc-js", "connect-grpc"];
    const drivers = kinds.map((kind, i) => ({ kind, id: `drv-${kind}-${uniqueId()}`, start: offsetMetres({ lat: 12.9756, lng: 77.606 }, 0, i * 500) }));
    const streams = drivers.map(() => pushStream<ReportMsg>());
    let stopped = false;
    const failures: unknown[] = [];
    const clients = await Promise.all(drivers.map((d) => mesh.client(LocationService, d.kind, "driver", d.id)));
    const summaries = clients.map((c, i) =>
      c.reportLocations(streams[i]!).catch((err: unknown) => {
        failures.push(err);
        throw err;
      }),
    );
    const sent = drivers.map(() => 0n);
    // Phones: one fix every 100 ms at ~10 m/s, device time = now.
    const phones = (async () => {
      while (!stopped) {
        drivers.forEach((d, i) => {
          const seq = ++sent[i]!;
          streams[i]!.push({
            pings: [{ location: offsetMetres(d.start, Number(seq), 0), accuracyM: 5, speedMps: 10, headingDeg: 0, deviceTime: timestampFromMs(Date.now()), sequence: seq }],
          });
        });
        await sleep(100);
      }
    })();
    const live = async (id: string, afterSeq = 0n) => {
      const h = await mesh.mesh.redis.kv.hgetall(driverFixKey(id));
      return h.seq !== undefined && BigInt(h.seq) > afterSeq;
    };
    const inGeo = async (id: string, at: { lat: number; lng: number }) =>
      (await mesh.mesh.redis.geo.search(cityGeoKey("bengaluru"), { ...at, radiusKm: 2 })).some((h) => h.member === id);

    try {
      for (const d of drivers) await until(() => live(d.id), 10_000, `${d.kind} driver live before the restart`);

      await killRedis(redis!);
      const sentAtKill = [...sent];
      // Keep streaming while Redis is gone (a couple of seconds of pings).
      await until(() => sent.every((s, i) => s >= sentAtKill[i]! + 20n), 20_000, "pings sent while Redis is down");
      assert.deepEqual(failures, [], "no stream failed while Redis was down");

      redis = await startRedis(port);
      const sentAtRestart = [...sent];
      // The new Redis starts empty: the drivers are back only once their next pings are written.
      for (const [i, d] of drivers.entries()) {
        await until(() => live(d.id), 30_000, `${d.kind} driver live again after the restart`);
        await until(() => inGeo(d.id, d.start), 10_000, `${d.kind} driver back in the city geo set`);
        await until(() => live(d.id, sentAtRestart[i]!), 30_000, `${d.kind} driver's pings after the restart written`);
      }
      assert.deepEqual(failures, [], "no stream failed across the restart");
    } finally {
      stopped = true;
      await phones;
      for (const s of streams) s.end();
    }
    const results: ReportLocationsResponse[] = await Promise.all(summaries);
    for (const [i, r] of results.entries()) {
      assert.equal(r.rejected, 0n, `${drivers[i]!.kind}: ${Object.entries(r.rejectedByReason).join(" ")}`);
      assert.equal(r.accepted, sent[i], `${drivers[i]!.kind}: every ping was accepted`);
    }
    // Memory stayed bounded: one batch in flight, so at most a tick's worth of fixes could be lost.
    const stats = location.writer.stats;
    assert.ok(stats.batches > 0);
    assert.ok(stats.lostFixes <= stats.failedBatches * drivers.length * 100, JSON.stringify(stats));
  });
});
