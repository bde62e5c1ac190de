import assert from "node:assert/strict";
import { createLogger } from "../../services/platform/logger.js";
import { compareStreamIds, openRedis, type RedisPorts } from "../../services/platform/redis.js";
import { createStreamRetention, safeTrimId, type StreamRetentionConfig } from "../../services/platform/stream-retention.js";
import { redisUrl, requireReal, uniqueId, dropRedisPrefix } from "../helpers/backends.js";

const entry = (i: number) => ({ type: "t", key: `k${i % 3}`, eventId: `e${i}`, data: new Uint8Array([i % 256]) });

describe("stream retention rules", () => {
  it("orders stream ids numerically, not as text", () => {
    assert.ok(compareStreamIds("9-0", "10-0") < 0);
    assert.ok(compareStreamIds("10-2", "10-10") < 0);
    assert.equal(compareStreamIds("7-3", "7-3"), 0);
  });

  it("trims below the retention cutoff, or below the oldest entry some group still needs", () => {
    const now = 1_000_000;
    assert.equal(safeTrimId([], now, 60_000), "940000-0", "no groups: the window alone");
    const done = { name: "a", lastDeliveredId: "999000-4", pending: 0 };
    assert.equal(safeTrimId([done], now, 60_000), "940000-0", "a group past the cutoff does not hold it back");
    const unacked = { name: "b", lastDeliveredId: "999000-4", pending: 3, oldestPendingId: "900000-1" };
    assert.equal(safeTrimId([done, unacked], now, 60_000), "900000-1", "the oldest unacked entry stays");
    const unread = { name: "c", lastDeliveredId: "800000-0", pending: 0 };
    assert.equal(safeTrimId([done, unacked, unread], now, 60_000), "800000-0", "undelivered entries stay");
    assert.equal(safeTrimId([{ name: "new", lastDeliveredId: "0-0", pending: 0 }], now, 0), "0-0", "a group that has read nothing keeps everything");
  });
});

for (const impl of ["memory", "redis"] as const) {
  describe(`event stream retention (${impl})`, function () {
    this.timeout(30_000);
    let r: RedisPorts;
    const prefix = `test:${uniqueId()}:`;
    const logger = createLogger("silent");
    const retention = (streams: string[], config: Partial<StreamRetentionConfig>) =>
      createStreamRetention({ eventLog: r.eventLog, streams, logger, config: { retentionMs: 0, maxLen: 1_000_000, everyMs: 60_000, ...config } });

    before(async function () {
      if (impl === "redis") await requireReal("redis", this);
      r = await openRedis({ redisUrl: impl === "redis" ? redisUrl() : undefined, keyPrefix: prefix });
    });
    after(async function () {
      if (!r) return;
      await r.close();
      if (impl === "redis") {
        await dropRedisPrefix(prefix);
      }
    });

    it("reports each group's position: last delivered, pending count, oldest pending", async () => {
      assert.deepEqual(await r.eventLog.groups("g-none"), []);
      assert.equal(await r.eventLog.length("g-none"), 0);
      const ids = await r.eventLog.appendMany("g1", Array.from({ length: 10 }, (_, i) => entry(i)));
      await r.eventLog.ensureGroup("g1", "all", "0");
      await r.eventLog.ensureGroup("g1", "idle", "0");
      await r.eventLog.ensureGroup("g1", "late", "$");
      const read = await r.eventLog.readGroup("g1", "all", "c1", { count: 10 });
      await r.eventLog.ack("g1", "all", read.slice(0, 4).map((e) => e.id));
      const byName = new Map((await r.eventLog.groups("g1")).map((g) => [g.name, g]));
      assert.deepEqual(byName.get("all"), { name: "all", lastDeliveredId: ids[9], pending: 6, oldestPendingId: ids[4] });
      assert.deepEqual(byName.get("idle"), { name: "idle", lastDeliveredId: "0-0", pending: 0 });
      assert.deepEqual(byName.get("late"), { name: "late", lastDeliveredId: ids[9], pending: 0 });
      assert.equal(await r.eventLog.length("g1"), 10);
    });

    it("trimBefore deletes exactly the entries below an id", async () => {
      const ids = await r.eventLog.appendMany("t1", Array.from({ length: 20 }, (_, i) => entry(i)));
      assert.equal(await r.eventLog.trimBefore("t1", ids[5]!), 5);
      assert.deepEqual((await r.eventLog.range("t1", undefined, 100)).map((e) => e.id), ids.slice(5));
      assert.equal(await r.eventLog.trimBefore("t1", ids[5]!), 0);
      assert.equal(await r.eventLog.trimBefore("t-missing", "1-0"), 0);
    });

    it("trims what every group has acked, never an entry a group has not read or acked", async () => {
      const ids = await r.eventLog.appendMany("s1", Array.from({ length: 100 }, (_, i) => entry(i)));
      await r.eventLog.ensureGroup("s1", "fast", "0");
      await r.eventLog.ensureGroup("s1", "slow", "0");
      await r.eventLog.ack("s1", "fast", (await r.eventLog.readGroup("s1", "fast", "c", { count: 100 })).map((e) => e.id));
      // slow: read 60, acked 30 (entries 30-59 pending), 60-99 not yet delivered.
      const slow = await r.eventLog.readGroup("s1", "slow", "c", { count: 60 });
      await r.eventLog.ack("s1", "slow", slow.slice(0, 30).map((e) => e.id));

      const ret = retention(["s1"], { retentionMs: 0 });
      const [first] = await ret.run();
      assert.deepEqual(first, { stream: "s1", trimmed: 30, capped: 0, length: 70, behind: [] });
      assert.equal((await r.eventLog.range("s1", undefined, 1))[0]!.id, ids[30], "the oldest unacked entry is the first left");
      // The pending entries can still be claimed and acked; the undelivered ones still read.
      const rest = await r.eventLog.readGroup("s1", "slow", "c", { count: 100 });
      assert.deepEqual(rest.map((e) => e.id), ids.slice(60));
      await r.eventLog.ack("s1", "slow", [...slow.slice(30), ...rest].map((e) => e.id));
      const [second] = await ret.run();
      assert.equal(second!.trimmed, 69, "everything but the last delivered entry");
      assert.deepEqual((await r.eventLog.range("s1", undefined, 10)).map((e) => e.id), [ids[99]]);
    });

    it("keeps acked entries younger than the retention window", async () => {
      await r.eventLog.appendMany("s2", Array.from({ length: 10 }, (_, i) => entry(i)));
      await r.eventLog.ensureGroup("s2", "g", "0");
      await r.eventLog.ack("s2", "g", (await r.eventLog.readGroup("s2", "g", "c", { count: 10 })).map((e) => e.id));
      const [rep] = await retention(["s2"], { retentionMs: 3_600_000 }).run();
      assert.equal(rep!.trimmed, 0);
      assert.equal(await r.eventLog.length("s2"), 10);
    });

    it("caps a stream held back by a group that stopped reading, and names the group", async () => {
      await r.eventLog.appendMany("s3", Array.from({ length: 1000 }, (_, i) => entry(i)));
      await r.eventLog.ensureGroup("s3", "live", "0");
      await r.eventLog.ensureGroup("s3", "abandoned", "0");
      await r.eventLog.ack("s3", "live", (await r.eventLog.readGroup("s3", "live", "c", { count: 1000 })).map((e) => e.id));
      const [rep] = await retention(["s3"], { retentionMs: 0, maxLen: 100 }).run();
      assert.equal(rep!.trimmed, 0, "the abandoned group holds back the safe trim");
      assert.ok(rep!.length >= 100 && rep!.length < 1000, `length ${rep!.length} after the cap`);
      assert.equal(rep!.capped, 1000 - rep!.length);
      assert.deepEqual(rep!.behind, ["abandoned"]);
      const left = await r.eventLog.range("s3", undefined, 2000);
      assert.equal(left[left.length - 1]!.eventId, "e999", "the newest entries are kept");
    });
  });
}
