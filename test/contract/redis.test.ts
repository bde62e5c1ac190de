import assert from "node:assert/strict";
import { Redis } from "ioredis";
import { openRedis, type BatchOp, type RedisPorts, type StreamEntry } from "../../services/platform/redis.js";
import { connName } from "../../services/platform/redis-real.js";
import { redisUrl, requireReal, uniqueId, dropRedisPrefix } from "../helpers/backends.js";
import { sleep, until } from "../helpers/wait.js";

const bytes = (...b: number[]) => new Uint8Array(b);
const ev = (i: number, data = bytes(i % 256, 0, 255)) => ({ type: "t", key: `k${i % 3}`, eventId: `e${i}`, data });


for (const impl of ["memory", "redis"] as const) {
  describe(`RedisPorts (${impl})`, function () {
    let r: RedisPorts;
    const prefix = `test:${uniqueId()}:`;

    before(async function () {
      if (impl === "redis") await requireReal("redis", this);
      r = await openRedis({ redisUrl: impl === "redis" ? redisUrl() : undefined, keyPrefix: prefix });
      assert.equal(r.kind, impl);
    });

    after(async function () {
      if (!r) return;
      await r.close();
      if (impl === "redis") {
        await dropRedisPrefix(prefix);
      }
    });

    describe("EventLog", () => {
      it("appends, ranges after an id and round-trips binary data", async () => {
        const all = new Uint8Array(256).map((_, i) => i);
        const id1 = await r.eventLog.append("s1", { type: "order.placed", key: "o1", eventId: "a", data: all });
        const ids = await r.eventLog.appendMany("s1", [ev(1), ev(2), ev(3)]);
        assert.equal(ids.length, 3);
        const got = await r.eventLog.range("s1", undefined, 10);
        assert.deepEqual(
          got.map((e) => e.id),
          [id1, ...ids],
        );
        assert.deepEqual(got[0]!.type, "order.placed");
        assert.deepEqual(got[0]!.key, "o1");
        assert.deepEqual(got[0]!.eventId, "a");
        assert.deepEqual([...got[0]!.data], [...all]);
        assert.deepEqual(
          got.slice(1).map((e) => e.eventId),
          ["e1", "e2", "e3"],
        );
        const after = await r.eventLog.range("s1", ids[0], 10);
        assert.deepEqual(
          after.map((e) => e.eventId),
          ["e2", "e3"],
        );
        assert.deepEqual(await r.eventLog.range("s1", ids[2], 10), []);
        assert.deepEqual(
          (await r.eventLog.range("s1", undefined, 2)).map((e) => e.eventId),
          ["a", "e1"],
        );
        assert.deepEqual(await r.eventLog.range("nope", undefined, 10), []);
      });

      it("keeps appendMany batches contiguous and ordered under concurrency", async () => {
        await Promise.all([
          r.eventLog.appendMany("s2", [ev(1), ev(2), ev(3), ev(4)]),
          r.eventLog.appendMany("s2", [ev(11), ev(12), ev(13), ev(14)]),
        ]);
        const got = (await r.eventLog.range("s2", undefined, 100)).map((e) => e.eventId).join(",");
        assert.ok(
          got === "e1,e2,e3,e4,e11,e12,e13,e14" || got === "e11,e12,e13,e14,e1,e2,e3,e4",
          got,
        );
      });

      it("delivers each entry once per group across two consumers, pending until acked", async () => {
        await r.eventLog.appendMany("s3", Array.from({ length: 10 }, (_, i) => ev(i)));
        await r.eventLog.ensureGroup("s3", "g");
        await r.eventLog.ensureGroup("s3", "g"); // idempotent
        const a = await r.eventLog.readGroup("s3", "g", "c1", { count: 4 });
        const b = await r.eventLog.readGroup("s3", "g", "c2", { count: 100 });
        assert.equal(a.length, 4);
        assert.equal(b.length, 6);
        const seen = [...a, ...b].map((e) => e.eventId);
        assert.deepEqual(seen, Array.from({ length: 10 }, (_, i) => `e${i}`));
        assert.ok([...a, ...b].every((e) => e.deliveries === 1));
        assert.deepEqual(await r.eventLog.readGroup("s3", "g", "c1", { count: 10 }), []);
        assert.equal(await r.eventLog.pendingCount("s3", "g"), 10);
        assert.equal(await r.eventLog.ack("s3", "g", a.map((e) => e.id)), 4);
        assert.equal(await r.eventLog.ack("s3", "g", [a[0]!.id]), 0);
        assert.equal(await r.eventLog.pendingCount("s3", "g"), 6);

        // A second group sees everything independently.
        await r.eventLog.ensureGroup("s3", "other");
        assert.equal((await r.eventLog.readGroup("s3", "other", "x", { count: 100 })).length, 10);
        // A group created at "$" sees only new entries.
        await r.eventLog.ensureGroup("s3", "late", "$");
        assert.deepEqual(await r.eventLog.readGroup("s3", "late", "x"), []);
        await r.eventLog.append("s3", ev(99));
        assert.deepEqual(
          (await r.eventLog.readGroup("s3", "late", "x")).map((e) => e.eventId),
          ["e99"],
        );
      });

      it("claims a crashed consumer's stale entries with delivery counts", async () => {
        await r.eventLog.ensureGroup("s4", "g");
        await r.eventLog.appendMany("s4", [ev(1), ev(2), ev(3)]);
        const crashed = await r.eventLog.readGroup("s4", "g", "dead", { count: 10 });
        assert.equal(crashed.length, 3);
        assert.deepEqual(await r.eventLog.claimStale("s4", "g", "alive", 10_000, 10), []);
        await sleep(60);
        const claimed = await r.eventLog.claimStale("s4", "g", "alive", 50, 2);
        assert.deepEqual(
          claimed.map((e) => e.eventId),
          ["e1", "e2"],
        );
        assert.deepEqual([...claimed[0]!.data], [...ev(1).data]);
        assert.ok(claimed.every((e) => e.deliveries === 2), JSON.stringify(claimed.map((e) => e.deliveries)));
        // Just claimed: not idle any more.
        const rest = await r.eventLog.claimStale("s4", "g", "alive", 50, 10);
        assert.deepEqual(
          rest.map((e) => e.eventId),
          ["e3"],
        );
        await r.eventLog.ack("s4", "g", [...claimed, ...rest].map((e) => e.id));
        assert.equal(await r.eventLog.pendingCount("s4", "g"), 0);
      });

      it("blocks a read until an entry arrives, or returns empty after blockMs", async () => {
        await r.eventLog.ensureGroup("s5", "g");
        const t0 = Date.now();
        assert.deepEqual(await r.eventLog.readGroup("s5", "g", "c", { blockMs: 100 }), []);
        assert.ok(Date.now() - t0 >= 90, `returned after ${Date.now() - t0} ms`);
        const t1 = Date.now();
        const pending = r.eventLog.readGroup("s5", "g", "c", { blockMs: 5000 });
        await sleep(30);
        // Other commands are not held up by the blocked reader.
        await r.kv.set("while-blocked", "1");
        assert.equal(await r.kv.get("while-blocked"), "1");
        await r.eventLog.append("s5", ev(7));
        const got = await pending;
        assert.deepEqual(
          got.map((e: StreamEntry) => e.eventId),
          ["e7"],
        );
        assert.ok(Date.now() - t1 < 2000);
        // Non-blocking read returns at once.
        const t2 = Date.now();
        assert.deepEqual(await r.eventLog.readGroup("s5", "g", "c"), []);
        assert.ok(Date.now() - t2 < 500);
      });

      it("rejects a read from a missing group", async () => {
        await assert.rejects(r.eventLog.readGroup("s6", "missing", "c"), /NOGROUP/);
      });

      it("trims to about maxLen newest entries", async () => {
        await r.eventLog.appendMany("s7", Array.from({ length: 1000 }, (_, i) => ev(i)));
        await r.eventLog.trim("s7", 100);
        const left = await r.eventLog.range("s7", undefined, 2000);
        assert.ok(left.length >= 100 && left.length < 1000, `left ${left.length}`);
        assert.equal(left[left.length - 1]!.eventId, "e999");
      });
    });

    describe("Channels", () => {
      it("delivers to every local subscriber with one subscription per channel", async () => {
        assert.equal(r.channels.subscribedCount(), 0);
        const a: number[][] = [];
        const b: number[][] = [];
        const offA = await r.channels.subscribe("order:1", (d) => a.push([...d]));
        const offB = await r.channels.subscribe("order:1", (d) => b.push([...d]));
        const offC = await r.channels.subscribe("order:2", () => {});
        assert.equal(r.channels.subscribedCount(), 2);
        await r.channels.publish("order:1", bytes(1, 0, 255));
        await r.channels.publish("order:3", bytes(9));
        await until(() => a.length === 1 && b.length === 1);
        assert.deepEqual(a, [[1, 0, 255]]);
        await offA();
        assert.equal(r.channels.subscribedCount(), 2);
        await r.channels.publish("order:1", bytes(2));
        await until(() => b.length === 2);
        await sleep(20);
        assert.equal(a.length, 1);
        await offB();
        await offB(); // idempotent
        assert.equal(r.channels.subscribedCount(), 1);
        await offC();
        assert.equal(r.channels.subscribedCount(), 0);
      });

      it("keeps one subscription through concurrent subscribe and unsubscribe", async () => {
        const offs = await Promise.all(Array.from({ length: 20 }, () => r.channels.subscribe("busy", () => {})));
        assert.equal(r.channels.subscribedCount(), 1);
        const more = r.channels.subscribe("busy", () => {});
        await Promise.all(offs.map((off) => off()));
        const off = await more;
        assert.equal(r.channels.subscribedCount(), 1);
        await off();
        assert.equal(r.channels.subscribedCount(), 0);
        // Subscribing again after a full unsubscribe works.
        const got: number[] = [];
        const again = await r.channels.subscribe("busy", (d) => got.push(d[0]!));
        await r.channels.publish("busy", bytes(5));
        await until(() => got.length === 1);
        await again();
      });

      if (impl === "redis") {
        it("resubscribes after the subscriber connection is dropped", async () => {
          const got: number[] = [];
          const off = await r.channels.subscribe("survive", (d) => got.push(d[0]!));
          const admin = new Redis(redisUrl());
          try {
            const list = (await admin.call("CLIENT", "LIST", "TYPE", "pubsub")) as string;
            const ids = list
              .split("\n")
              .filter((l) => l.includes(`name=${connName(prefix, "sub")} `))
              .map((l) => /id=(\d+)/.exec(l)![1]!);
            assert.equal(ids.length, 1);
            await admin.call("CLIENT", "KILL", "ID", ids[0]!);
            // Publish until the reconnected subscriber receives one.
            const end = Date.now() + 5000;
            while (got.length === 0 && Date.now() < end) {
              await r.channels.publish("survive", bytes(42));
              await sleep(50);
            }
            assert.ok(got.includes(42), "no message after reconnect");
          } finally {
            await admin.quit();
            await off();
          }
        });
      }
    });

    describe("RateLimiter", () => {
      it("allows limit hits per window, then reports when to retry", async () => {
        const results = [];
        for (let i = 0; i < 4; i++) results.push(await r.rateLimiter.hit("rl:a", 3, 300));
        assert.deepEqual(
          results.map((x) => [x.allowed, x.remaining]),
          [
            [true, 2],
            [true, 1],
            [true, 0],
            [false, 0],
          ],
        );
        assert.equal(results[0]!.retryAfterMs, 0);
        assert.ok(results[3]!.retryAfterMs > 0 && results[3]!.retryAfterMs <= 300, `${results[3]!.retryAfterMs}`);
        // Another key is independent.
        assert.equal((await r.rateLimiter.hit("rl:b", 3, 300)).allowed, true);
        await sleep(results[3]!.retryAfterMs + 20);
        const later = await r.rateLimiter.hit("rl:a", 3, 300);
        assert.equal(later.allowed, true);
      });

      it("slides: hits leave the window one by one", async () => {
        await r.rateLimiter.hit("rl:s", 2, 400);
        await sleep(200);
        await r.rateLimiter.hit("rl:s", 2, 400);
        assert.equal((await r.rateLimiter.hit("rl:s", 2, 400)).allowed, false);
        await sleep(230); // first hit left the window, second has not
        assert.equal((await r.rateLimiter.hit("rl:s", 2, 400)).allowed, true);
        assert.equal((await r.rateLimiter.hit("rl:s", 2, 400)).allowed, false);
      });

      it("is atomic under concurrent hits", async () => {
        const res = await Promise.all(Array.from({ length: 50 }, () => r.rateLimiter.hit("rl:c", 10, 10_000)));
        assert.equal(res.filter((x) => x.allowed).length, 10);
      });
    });

    describe("GeoIndex", () => {
      it("finds members within a radius, nearest first, with distance and position", async () => {
        // Around Bengaluru MG Road.
        await r.geo.add("city:blr", [
          { member: "far", lng: 77.7, lat: 13.05 },
          { member: "near", lng: 77.606, lat: 12.9757 },
          { member: "mid", lng: 77.62, lat: 12.97 },
          { member: "out", lng: 78.5, lat: 13.5 },
        ]);
        const hits = await r.geo.search("city:blr", { lng: 77.605, lat: 12.9756, radiusKm: 20 });
        assert.deepEqual(
          hits.map((h) => h.member),
          ["near", "mid", "far"],
        );
        assert.ok(hits[0]!.distanceKm > 0.05 && hits[0]!.distanceKm < 0.2, `${hits[0]!.distanceKm}`);
        assert.ok(Math.abs(hits[1]!.lng - 77.62) < 1e-4 && Math.abs(hits[1]!.lat - 12.97) < 1e-4);
        const top = await r.geo.search("city:blr", { lng: 77.605, lat: 12.9756, radiusKm: 20, count: 2 });
        assert.deepEqual(
          top.map((h) => h.member),
          ["near", "mid"],
        );
        await r.geo.add("city:blr", [{ member: "near", lng: 77.69, lat: 13.04 }]); // moved
        await r.geo.remove("city:blr", "mid");
        const after = await r.geo.search("city:blr", { lng: 77.605, lat: 12.9756, radiusKm: 20 });
        assert.deepEqual(
          after.map((h) => h.member),
          ["near", "far"],
        );
        assert.deepEqual(await r.geo.search("city:none", { lng: 0, lat: 0, radiusKm: 5 }), []);
      });
    });

    describe("batch and hgetallMany", () => {
      it("applies geoadd, georemove, hset (with and without TTL) and publish in order, in one call", async () => {
        const got: Uint8Array[] = [];
        const unsubscribe = await r.channels.subscribe("b:ch", (d) => got.push(d));
        try {
          await r.batch([
            { op: "geoadd", key: "b:geo", items: [{ member: "a", lng: 77.606, lat: 12.9757 }, { member: "b", lng: 77.62, lat: 12.97 }] },
            { op: "hset", key: "b:fix:a", fields: { lat: "12.9757", lng: "77.606", seq: "1" }, ttlMs: 150 },
            { op: "hset", key: "b:fix:b", fields: { lat: "12.97", seq: "7" } },
            { op: "hset", key: "b:fix:a", fields: { seq: "2" } },
            { op: "georemove", key: "b:geo", members: ["a", "never-there"] },
            { op: "geoadd", key: "b:geo2", items: [{ member: "a", lng: 77.7, lat: 13.0 }] },
            { op: "publish", channel: "b:ch", data: bytes(0, 1, 255, 10) },
            { op: "geoadd", key: "b:geo", items: [] },
            { op: "georemove", key: "b:geo", members: [] },
          ]);
          const hits = await r.geo.search("b:geo", { lng: 77.605, lat: 12.9756, radiusKm: 20 });
          assert.deepEqual(hits.map((h) => h.member), ["b"]);
          assert.deepEqual((await r.geo.search("b:geo2", { lng: 77.7, lat: 13.0, radiusKm: 1 })).map((h) => h.member), ["a"]);
          assert.deepEqual(await r.hgetallMany(["b:fix:a", "b:missing", "b:fix:b"]), [
            { lat: "12.9757", lng: "77.606", seq: "2" },
            {},
            { lat: "12.97", seq: "7" },
          ]);
          await until(() => got.length === 1, 2000, "the published message");
          assert.deepEqual([...got[0]!], [0, 1, 255, 10]);
          // The TTL applies to the whole hash (a later hset without ttlMs keeps it); the other has none.
          await sleep(250);
          assert.deepEqual(await r.hgetallMany(["b:fix:a", "b:fix:b"]), [{}, { lat: "12.97", seq: "7" }]);
        } finally {
          await unsubscribe();
        }
      });

      it("refreshes the TTL on every hset that carries one", async () => {
        await r.batch([{ op: "hset", key: "b:ttl", fields: { v: "1" }, ttlMs: 400 }]);
        await sleep(250);
        await r.batch([{ op: "hset", key: "b:ttl", fields: { v: "2" }, ttlMs: 400 }]);
        await sleep(250);
        assert.deepEqual(await r.kv.hgetall("b:ttl"), { v: "2" }, "still alive 500 ms after the first write");
        await until(async () => Object.keys(await r.kv.hgetall("b:ttl")).length === 0, 2000, "expiry of the refreshed TTL");
      });

      it("resolves an empty batch and an empty read, and rejects a batch with an invalid write", async () => {
        await r.batch([]);
        assert.deepEqual(await r.hgetallMany([]), []);
        await assert.rejects(r.batch([{ op: "geoadd", key: "b:bad", items: [{ member: "x", lng: 77.6, lat: 89 }] }]), /invalid/i);
        await r.kv.set("b:str", "x");
        await assert.rejects(r.hgetallMany(["b:fix:b", "b:str"]), /WRONGTYPE/);
      });

      it("writes a large batch whole (thousands of members and keys in one call)", async () => {
        const n = 5000;
        const items = Array.from({ length: n }, (_, i) => ({ member: `m${i}`, lng: 77.5 + (i % 100) * 1e-3, lat: 12.9 + Math.floor(i / 100) * 1e-3 }));
        const fields = Object.fromEntries(Array.from({ length: 1500 }, (_, i) => [`f${i}`, String(i)]));
        await r.batch([
          { op: "geoadd", key: "b:big", items },
          ...items.slice(0, 2000).map((it) => ({ op: "hset" as const, key: `b:big:${it.member}`, fields: { seq: it.member }, ttlMs: 60_000 })),
          { op: "hset", key: "b:wide", fields, ttlMs: 60_000 },
          { op: "georemove", key: "b:big", members: items.slice(0, 1500).map((it) => it.member) },
        ]);
        const hits = await r.geo.search("b:big", { lng: 77.55, lat: 12.925, radiusKm: 50, count: 10_000 });
        assert.equal(hits.length, n - 1500);
        const some = await r.hgetallMany(["b:big:m0", "b:big:m1999", "b:big:m2000"]);
        assert.deepEqual(some, [{ seq: "m0" }, { seq: "m1999" }, {}]);
        assert.equal(Object.keys(await r.kv.hgetall("b:wide")).length, 1500);
      });

      it("writes a fix only when it is newer than the one stored (hash and geo together)", async () => {
        const fix = (at: number, lat: number) => ({
          op: "fix" as const,
          key: "b:fix:d1",
          fields: { lat: String(lat), lng: "77.6", at: String(at) },
          ttlMs: 60_000,
          orderField: "at",
          geoKey: "b:fix-geo",
          member: "d1",
          lng: 77.6,
          lat,
        });
        await r.batch([fix(2000, 12.97)]);
        await r.batch([fix(1000, 12.9), fix(2000, 12.91)]); // older, then equal: both skipped
        assert.deepEqual(await r.kv.hgetall("b:fix:d1"), { lat: "12.97", lng: "77.6", at: "2000" });
        assert.deepEqual((await r.geo.search("b:fix-geo", { lng: 77.6, lat: 12.97, radiusKm: 0.1 })).map((h) => h.member), ["d1"]);
        await r.batch([fix(3000, 12.98)]);
        assert.equal((await r.kv.hgetall("b:fix:d1")).at, "3000");
        assert.deepEqual((await r.geo.search("b:fix-geo", { lng: 77.6, lat: 12.98, radiusKm: 0.1 })).map((h) => h.member), ["d1"]);
        await assert.rejects(r.batch([{ ...fix(4000, 12.99), fields: { lat: "12.99" } }]), /fields.at must be a number/);
      });

      it("takes a tick of 20,000 drivers' writes in one call", async () => {
        const n = 20_000;
        const ops: BatchOp[] = [];
        for (let i = 0; i < n; i++) {
          ops.push({ op: "hset", key: `b:many:${i}`, fields: { lat: "12.97", lng: "77.59", seq: String(i), at: "1", recv: "2" }, ttlMs: 60_000 });
        }
        ops.push({ op: "geoadd", key: "b:many-geo", items: Array.from({ length: n }, (_, i) => ({ member: `d${i}`, lng: 77.5 + (i % 200) * 1e-3, lat: 12.9 + Math.floor(i / 200) * 1e-3 })) });
        await r.batch(ops);
        assert.deepEqual(await r.hgetallMany([`b:many:${n - 1}`]), [{ lat: "12.97", lng: "77.59", seq: String(n - 1), at: "1", recv: "2" }]);
        assert.equal((await r.geo.search("b:many-geo", { lng: 77.6, lat: 12.95, radiusKm: 50, count: 100_000 })).length, n);
      });

      it("keeps concurrent batches' writes whole and in call order per key", async () => {
        await Promise.all(
          Array.from({ length: 50 }, (_, i) =>
            r.batch([
              { op: "hset", key: "b:conc", fields: { last: String(i) }, ttlMs: 10_000 },
              { op: "geoadd", key: "b:conc-geo", items: [{ member: `m${i}`, lng: 77.6 + i * 1e-4, lat: 12.97 }] },
            ]),
          ),
        );
        assert.equal((await r.kv.hgetall("b:conc")).last, "49");
        assert.equal((await r.geo.search("b:conc-geo", { lng: 77.6, lat: 12.97, radiusKm: 5 })).length, 50);
      });
    });

    describe("Kv", () => {
      it("sets, gets, deletes and honours NX", async () => {
        assert.equal(await r.kv.get("k1"), null);
        assert.equal(await r.kv.set("k1", "v1"), true);
        assert.equal(await r.kv.get("k1"), "v1");
        assert.equal(await r.kv.set("k1", "v2", { nx: true }), false);
        assert.equal(await r.kv.get("k1"), "v1");
        assert.equal(await r.kv.del("k1"), true);
        assert.equal(await r.kv.del("k1"), false);
        assert.equal(await r.kv.set("k1", "v3", { nx: true }), true);
      });

      it("expires keys after their TTL", async () => {
        assert.equal(await r.kv.set("ttl", "x", { ttlMs: 80, nx: true }), true);
        assert.equal(await r.kv.set("ttl", "y", { ttlMs: 80, nx: true }), false);
        await sleep(130);
        assert.equal(await r.kv.get("ttl"), null);
        assert.equal(await r.kv.set("ttl", "z", { ttlMs: 80, nx: true }), true);
        // A plain set clears the TTL.
        await r.kv.set("ttl", "keep");
        await sleep(130);
        assert.equal(await r.kv.get("ttl"), "keep");
      });

      it("compare-and-deletes only the expected value", async () => {
        await r.kv.set("offer:driver:1", "order1:7", { ttlMs: 10_000 });
        assert.equal(await r.kv.compareAndDelete("offer:driver:1", "order1:6"), false);
        assert.equal(await r.kv.get("offer:driver:1"), "order1:7");
        assert.equal(await r.kv.compareAndDelete("offer:driver:1", "order1:7"), true);
        assert.equal(await r.kv.get("offer:driver:1"), null);
        assert.equal(await r.kv.compareAndDelete("offer:driver:1", "order1:7"), false);
      });

      it("compare-and-swaps only the expected value, with the new TTL, once under concurrency", async () => {
        await r.kv.set("offer:driver:2", "order2:9", { ttlMs: 10_000 });
        assert.equal(await r.kv.compareAndSwap("offer:driver:2", "order2:8", "x", 5000), false);
        assert.equal(await r.kv.get("offer:driver:2"), "order2:9");
        const won = await Promise.all(Array.from({ length: 10 }, (_, i) => r.kv.compareAndSwap("offer:driver:2", "order2:9", `accepting:${i}`, 80)));
        assert.equal(won.filter(Boolean).length, 1);
        assert.match((await r.kv.get("offer:driver:2")) ?? "", /^accepting:\d$/);
        await sleep(130);
        assert.equal(await r.kv.get("offer:driver:2"), null, "the swapped value carries the new TTL");
        assert.equal(await r.kv.compareAndSwap("missing", "a", "b", 1000), false);
        assert.equal(await r.kv.get("missing"), null);
      });

      it("increments atomically and keeps the TTL", async () => {
        const vals = await Promise.all(Array.from({ length: 20 }, () => r.kv.incr("ctr")));
        assert.deepEqual(
          [...vals].sort((a, b) => a - b),
          Array.from({ length: 20 }, (_, i) => i + 1),
        );
        await r.kv.set("ctr-ttl", "5", { ttlMs: 80 });
        assert.equal(await r.kv.incr("ctr-ttl"), 6);
        await sleep(130);
        assert.equal(await r.kv.get("ctr-ttl"), null);
        await r.kv.set("not-a-number", "abc");
        await assert.rejects(r.kv.incr("not-a-number"), /not an integer/);
      });

      it("stores hashes with an optional TTL", async () => {
        assert.deepEqual(await r.kv.hgetall("h"), {});
        await r.kv.hset("h", { lat: "12.9", lng: "77.6" });
        await r.kv.hset("h", { seq: "3" });
        assert.deepEqual(await r.kv.hgetall("h"), { lat: "12.9", lng: "77.6", seq: "3" });
        await r.kv.hset("h", { seq: "4" }, { ttlMs: 80 });
        assert.equal((await r.kv.hgetall("h")).seq, "4");
        await sleep(130);
        assert.deepEqual(await r.kv.hgetall("h"), {});
      });

      it("deletes hash fields, and the key with its last field", async () => {
        await r.kv.hset("hd", { a: "1", b: "2", c: "3" }, { ttlMs: 10_000 });
        assert.equal(await r.kv.hdel("hd", ["a", "missing"]), 1);
        assert.deepEqual(await r.kv.hgetall("hd"), { b: "2", c: "3" });
        assert.equal(await r.kv.hdel("hd", []), 0);
        assert.equal(await r.kv.hdel("hd", ["b", "c", "b"]), 2);
        assert.deepEqual(await r.kv.hgetall("hd"), {});
        // The emptied hash is gone, not an empty hash: the key can now hold a string.
        assert.equal(await r.kv.set("hd", "s", { nx: true }), true);
        await assert.rejects(r.kv.hdel("hd", ["x"]), /WRONGTYPE/);
        assert.equal(await r.kv.hdel("hd-missing", ["a"]), 0);
      });

      it("increments hash fields atomically, keeping the other fields and the TTL", async () => {
        const vals = await Promise.all(Array.from({ length: 20 }, () => r.kv.hincrby("hi", "n", 2)));
        assert.deepEqual(
          [...vals].sort((a, b) => a - b),
          Array.from({ length: 20 }, (_, i) => 2 * (i + 1)),
        );
        assert.equal(await r.kv.hincrby("hi", "n", -45), -5);
        assert.equal(await r.kv.hincrby("hi", "m", 0), 0);
        assert.deepEqual(await r.kv.hgetall("hi"), { n: "-5", m: "0" });

        await r.kv.hset("hi-ttl", { n: "7", name: "x" }, { ttlMs: 80 });
        assert.equal(await r.kv.hincrby("hi-ttl", "n", 1), 8);
        assert.deepEqual(await r.kv.hgetall("hi-ttl"), { n: "8", name: "x" });
        await sleep(130);
        assert.deepEqual(await r.kv.hgetall("hi-ttl"), {});

        await r.kv.hset("hi-bad", { name: "x" });
        await assert.rejects(r.kv.hincrby("hi-bad", "name", 1), /not an integer/);
        await assert.rejects(r.kv.hincrby("hi-bad", "n", 1.5), /not an integer/);
        await r.kv.set("hi-str", "1");
        await assert.rejects(r.kv.hincrby("hi-str", "n", 1), /WRONGTYPE/);
      });

      it("reads many string keys in order with mget", async () => {
        assert.deepEqual(await r.kv.mget([]), []);
        await r.kv.set("mg:a", "1");
        await r.kv.set("mg:b", "2");
        await r.kv.hset("mg:h", { f: "v" });
        await r.kv.set("mg:gone", "x", { ttlMs: 50 });
        await sleep(100);
        assert.deepEqual(await r.kv.mget(["mg:b", "mg:missing", "mg:a", "mg:h", "mg:gone", "mg:b"]), ["2", null, "1", null, null, "2"]);
        const keys = Array.from({ length: 5000 }, (_, i) => `mg:many:${i}`);
        for (let i = 0; i < keys.length; i += 500) await Promise.all(keys.slice(i, i + 500).map((k, j) => r.kv.set(k, String(i + j))));
        const got = await r.kv.mget(keys);
        assert.deepEqual(got, keys.map((_, i) => String(i)));
      });
    });
  });
}
