import assert from "node:assert/strict";
import { Redis } from "ioredis";
import { createConsumer, type Consumer } from "../../services/platform/outbox.js";
import { openRedis, type EventLog, type RedisPorts, type StreamEntry } from "../../services/platform/redis.js";
import { redisUrl, requireReal, uniqueId, dropRedisPrefix } from "../helpers/backends.js";
import { until } from "../helpers/wait.js";

/**
 * An event log whose streams (with their groups) can be lost at once, as a Redis restart without
 * persistence loses them: after lose(), every name maps to a fresh, group-less stream, so reads
 * answer NOGROUP until the group is created again. Works over either implementation.
 */
function losableLog(log: EventLog): EventLog & { lose(): void } {
  let generation = 0;
  const name = (stream: string) => `${stream}#${generation}`;
  return {
    lose: () => void generation++,
    append: (s, e) => log.append(name(s), e),
    appendMany: (s, es) => log.appendMany(name(s), es),
    ensureGroup: (s, g, start) => log.ensureGroup(name(s), g, start),
    readGroup: (s, g, c, o) => log.readGroup(name(s), g, c, o),
    claimStale: (s, g, c, idle, n) => log.claimStale(name(s), g, c, idle, n),
    ack: (s, g, ids) => log.ack(name(s), g, ids),
    range: (s, after, n) => log.range(name(s), after, n),
    trim: (s, n) => log.trim(name(s), n),
    trimBefore: (s, id) => log.trimBefore(name(s), id),
    length: (s) => log.length(name(s)),
    groups: (s) => log.groups(name(s)),
    pendingCount: (s, g) => log.pendingCount(name(s), g),
  };
}

const entry = (eventId: string) => ({ type: "t", key: "k", eventId, data: new Uint8Array([1, 2, 3]) });

for (const impl of ["memory", "redis"] as const) {
  describe(`Consumer recovery when Redis lost the group (${impl})`, function () {
    this.timeout(30_000);
    let redis: RedisPorts;
    const prefix = `test:${uniqueId()}:`;
    let consumer: Consumer | undefined;

    before(async function () {
      if (impl === "redis") await requireReal("redis", this);
      redis = await openRedis({ redisUrl: impl === "redis" ? redisUrl() : undefined, keyPrefix: prefix });
    });
    afterEach(async () => {
      await consumer?.stop();
      consumer = undefined;
    });
    after(async () => {
      await redis?.close();
      if (impl === "redis") {
        await dropRedisPrefix(prefix);
      }
    });

    it("re-creates the group after a loss and delivers what was appended since, while running", async () => {
      const log = losableLog(redis.eventLog);
      const handled: string[] = [];
      consumer = createConsumer({
        eventLog: log,
        stream: "s1",
        group: "g",
        consumer: "c1",
        startId: "$",
        blockMs: 50,
        handle: async (e: StreamEntry) => void handled.push(e.eventId),
      });
      await consumer.start();
      await log.append("s1", entry("before-1"));
      await until(() => handled.includes("before-1"), 5000, "delivery before the loss");

      log.lose();
      // Appended after the loss and before the consumer noticed: the re-created group still gets it.
      await log.append("s1", entry("after-1"));
      await until(() => handled.includes("after-1"), 5000, "delivery after the loss");
      await log.append("s1", entry("after-2"));
      await until(() => handled.includes("after-2"), 5000, "delivery of a later entry");
      assert.deepEqual(handled, ["before-1", "after-1", "after-2"]);
      assert.equal(await log.pendingCount("s1", "g"), 0);
    });

    it("pollOnce reports the loss once and the next poll re-creates the group", async () => {
      const log = losableLog(redis.eventLog);
      const handled: string[] = [];
      consumer = createConsumer({ eventLog: log, stream: "s2", group: "g", consumer: "c1", startId: "$", handle: async (e) => void handled.push(e.eventId) });
      assert.equal(await consumer.pollOnce(), 0);
      await log.append("s2", entry("e1"));
      assert.equal(await consumer.pollOnce(), 1);
      log.lose();
      await log.append("s2", entry("e2"));
      await assert.rejects(consumer.pollOnce(), /NOGROUP|group lost/);
      assert.equal(await consumer.pollOnce(), 1);
      assert.deepEqual(handled, ["e1", "e2"]);
    });

    if (impl === "redis") {
      it("recovers when the stream key itself is deleted in Redis", async () => {
        const handled: string[] = [];
        consumer = createConsumer({
          eventLog: redis.eventLog,
          stream: "s3",
          group: "g",
          consumer: "c1",
          startId: "$",
          blockMs: 50,
          handle: async (e) => void handled.push(e.eventId),
        });
        await consumer.start();
        await redis.eventLog.append("s3", entry("x1"));
        await until(() => handled.includes("x1"), 5000, "first delivery");
        const raw = new Redis(redisUrl());
        try {
          await raw.del(`${prefix}s3`);
          await raw.xadd(`${prefix}s3`, "*", "type", "t", "key", "k", "eventId", "x2", "data", "abc");
        } finally {
          await raw.quit();
        }
        await until(() => handled.includes("x2"), 5000, "delivery after the stream and group were deleted");
      });
    }
  });
}
