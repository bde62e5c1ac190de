import assert from "node:assert/strict";
import { createConsumer } from "../../services/platform/outbox.js";
import { openRedis, type EventLog, type RedisPorts } from "../../services/platform/redis.js";

/** The event log with its ack replaced (a Proxy: the implementations keep state in private fields). */
function withAck(log: EventLog, ack: EventLog["ack"]): EventLog {
  return new Proxy(log, {
    get(target, prop) {
      if (prop === "ack") return ack;
      const v = Reflect.get(target, prop, target) as unknown;
      return typeof v === "function" ? v.bind(target) : v;
    },
  });
}

describe("createConsumer acknowledgements", () => {
  let redis: RedisPorts;
  before(async () => {
    redis = await openRedis({});
  });
  after(async () => {
    await redis.close();
  });

  it("acks a read's handled entries with one call and leaves a failed one pending", async () => {
    const stream = "ack-batch";
    await redis.eventLog.appendMany(
      stream,
      ["a1", "a2", "bad", "a3", "a4"].map((id) => ({ type: "t", key: "k", eventId: id, data: new Uint8Array([1]) })),
    );
    const acks: string[][] = [];
    const eventLog = withAck(redis.eventLog, (s, g, ids) => {
      acks.push([...ids]);
      return redis.eventLog.ack(s, g, ids);
    });
    const handled: string[] = [];
    const consumer = createConsumer({
      eventLog,
      stream,
      group: "g",
      consumer: "c1",
      claimIdleMs: 60_000,
      handle: async (e) => {
        if (e.eventId === "bad") throw new Error("handler down");
        handled.push(e.eventId);
      },
    });
    assert.equal(await consumer.pollOnce(), 4);
    assert.deepEqual(handled, ["a1", "a2", "a3", "a4"]);
    assert.equal(acks.length, 1, `expected one ack call, got ${acks.length}`);
    assert.equal(acks[0]!.length, 4);
    assert.equal(await redis.eventLog.pendingCount(stream, "g"), 1);
  });

  it("leaves the whole read pending when the ack fails, so it is delivered again", async () => {
    const stream = "ack-fails";
    await redis.eventLog.appendMany(stream, [{ type: "t", key: "k", eventId: "b1", data: new Uint8Array([1]) }]);
    const eventLog = withAck(redis.eventLog, async () => {
      throw new Error("connection reset");
    });
    const consumer = createConsumer({ eventLog, stream, group: "g", consumer: "c1", claimIdleMs: 60_000, handle: async () => {} });
    assert.equal(await consumer.pollOnce(), 0);
    assert.equal(await redis.eventLog.pendingCount(stream, "g"), 1);
  });
});
