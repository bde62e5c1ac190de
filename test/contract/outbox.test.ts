import assert from "node:assert/strict";
import { sql } from "kysely";
import { openDb, type Db } from "../../services/platform/db.js";
import { createConsumer, createLruSeenSet, createOutboxRelay, createOutboxTableSql } from "../../services/platform/outbox.js";
import { openRedis, type RedisPorts, type StreamEntry } from "../../services/platform/redis.js";
import { postgresUrl, redisUrl, requireReal, uniqueId, dropRedisPrefix } from "../helpers/backends.js";
import { sleep, until } from "../helpers/wait.js";


for (const impl of ["memory", "redis"] as const) {
  const dbKind = impl === "memory" ? "pglite" : "postgres";
  describe(`Outbox relay and consumer (${dbKind} + ${impl})`, function () {
    let db: Db;
    let db2: Db;
    let redis: RedisPorts;
    const id = uniqueId();
    const table = `outbox_${id}`;
    const prefix = `test:${id}:`;

    before(async function () {
      if (impl === "redis") {
        await requireReal("postgres", this);
        await requireReal("redis", this);
      }
      const databaseUrl = impl === "redis" ? postgresUrl() : undefined;
      db = await openDb({ databaseUrl, dataDir: "memory://", poolSize: 4 });
      // A second process on Postgres; PGlite is one process, so both relays share it.
      db2 = impl === "redis" ? await openDb({ databaseUrl, dataDir: "memory://", poolSize: 4 }) : db;
      redis = await openRedis({ redisUrl: impl === "redis" ? redisUrl() : undefined, keyPrefix: prefix });
      for (const stmt of createOutboxTableSql(table).split(";\n")) await sql.raw(stmt).execute(db.kysely);
    });

    after(async function () {
      if (db) {
        await sql`drop table if exists ${sql.table(table)}`.execute(db.kysely);
        if (db2 !== db) await db2.close();
        await db.close();
      }
      if (redis) await redis.close();
      if (impl === "redis" && redis) {
        await dropRedisPrefix(prefix);
      }
    });

    let seq = 0;
    async function insert(n: number, stream = "orders", on: Db = db): Promise<string[]> {
      const rows = Array.from({ length: n }, () => {
        const i = seq++;
        return {
          stream,
          event_type: "order.placed",
          event_key: `o${i % 7}`,
          event_id: `ev-${i}`,
          payload: new Uint8Array([i & 255, (i >> 8) & 255, 0, 255]),
        };
      });
      await on.kysely.insertInto(table).values(rows).execute();
      return rows.map((r) => r.event_id);
    }

    async function unpublished(): Promise<number> {
      const row = await db.kysely
        .selectFrom(table)
        .select((eb) => eb.fn.countAll<number>().as("n"))
        .where("published_at", "is", null)
        .executeTakeFirstOrThrow();
      return Number(row.n);
    }

    it("relays pending rows in id order to their streams and marks them published", async () => {
      const a = await insert(3, "orders");
      const b = await insert(2, "dispatch");
      const c = await insert(2, "orders");
      const relay = createOutboxRelay({ db, eventLog: redis.eventLog, table, batchSize: 4 });
      assert.equal(await relay.drain(), 7);
      assert.equal(await relay.drain(), 0);
      assert.equal(await unpublished(), 0);
      const orders = await redis.eventLog.range("orders", undefined, 100);
      assert.deepEqual(
        orders.map((e) => e.eventId),
        [...a, ...c],
      );
      assert.deepEqual(
        (await redis.eventLog.range("dispatch", undefined, 100)).map((e) => e.eventId),
        b,
      );
      assert.equal(orders[0]!.type, "order.placed");
      assert.equal(orders[0]!.key, "o0");
      assert.deepEqual([...orders[1]!.data], [1, 0, 0, 255]);
    });

    it("keeps id order with no loss when two relays run while a writer commits 1,000 events", async function () {
      this.timeout(60_000);
      const before = (await redis.eventLog.range("bulk", undefined, 10_000)).length;
      const r1 = createOutboxRelay({ db, eventLog: redis.eventLog, table, batchSize: 50, idleMs: 5 });
      const r2 = createOutboxRelay({ db: db2, eventLog: redis.eventLog, table, batchSize: 50, idleMs: 5 });
      r1.start();
      r2.start();
      const expected: string[] = [];
      try {
        // Sequential commits (as one key's writers are): each batch lands after the previous.
        for (let i = 0; i < 100; i++) {
          expected.push(...(await insert(10, "bulk", i % 2 ? db : db2)));
          (i % 2 ? r1 : r2).wake();
        }
        await until(async () => (await unpublished()) === 0, 30_000);
      } finally {
        await r1.stop();
        await r2.stop();
      }
      const got = (await redis.eventLog.range("bulk", undefined, 10_000)).slice(before).map((e) => e.eventId);
      // Exactly once here (no crash); at-least-once would still require this first-seen order.
      assert.equal(got.length, 1000);
      assert.deepEqual(got, expected);
    });

    it("relays with low latency after wake()", async () => {
      const relay = createOutboxRelay({ db, eventLog: redis.eventLog, table, idleMs: 10_000 });
      relay.start();
      try {
        await sleep(50); // the loop is now idle for 10 s unless woken
        const [evId] = await insert(1, "wake");
        relay.wake();
        const t0 = Date.now();
        await until(async () => (await redis.eventLog.range("wake", undefined, 10)).length === 1, 2000);
        assert.ok(Date.now() - t0 < 1000);
        assert.equal((await redis.eventLog.range("wake", undefined, 10))[0]!.eventId, evId);
      } finally {
        await relay.stop();
      }
    });

    it("prunes only published rows older than the cutoff", async () => {
      await insert(2, "prune");
      const relay = createOutboxRelay({ db, eventLog: redis.eventLog, table });
      await relay.drain();
      await insert(1, "prune"); // unpublished
      const total = async () =>
        Number(
          (await db.kysely.selectFrom(table).select((eb) => eb.fn.countAll<number>().as("n")).executeTakeFirstOrThrow()).n,
        );
      const n0 = await total();
      assert.equal(await relay.prune(1), 0); // everything was published just now
      await db.kysely
        .updateTable(table)
        .set({ published_at: sql`now() - interval '2 hours'` })
        .where("published_at", "is not", null)
        .execute();
      const pruned = await relay.prune(1);
      assert.equal(pruned, n0 - 1);
      assert.equal(await total(), 1);
      assert.equal(await unpublished(), 1);
      await relay.drain();
    });

    it("consumes in order, acks after success and skips duplicate event ids", async () => {
      const stream = "consume";
      await redis.eventLog.appendMany(stream, [
        { type: "t", key: "k", eventId: "x1", data: new Uint8Array([1]) },
        { type: "t", key: "k", eventId: "x2", data: new Uint8Array([2]) },
        { type: "t", key: "k", eventId: "x1", data: new Uint8Array([1]) }, // republished duplicate
        { type: "t", key: "k", eventId: "x3", data: new Uint8Array([3]) },
      ]);
      const handled: string[] = [];
      const consumer = createConsumer({
        eventLog: redis.eventLog,
        stream,
        group: "g",
        consumer: "c1",
        handle: async (e) => void handled.push(e.eventId),
        blockMs: 50,
      });
      await consumer.start();
      try {
        await until(() => handled.length >= 3);
        await until(async () => (await redis.eventLog.pendingCount(stream, "g")) === 0);
        await redis.eventLog.append(stream, { type: "t", key: "k", eventId: "x4", data: new Uint8Array([4]) });
        await until(() => handled.length >= 4);
      } finally {
        await consumer.stop();
      }
      assert.deepEqual(handled, ["x1", "x2", "x3", "x4"]);
    });

    it("leaves a failed entry pending and another consumer claims it once stale", async () => {
      const stream = "claim";
      await redis.eventLog.appendMany(stream, [
        { type: "t", key: "k", eventId: "y1", data: new Uint8Array([1]) },
        { type: "t", key: "k", eventId: "y2", data: new Uint8Array([2]) },
      ]);
      const failing = createConsumer({
        eventLog: redis.eventLog,
        stream,
        group: "g",
        consumer: "crashy",
        claimIdleMs: 60_000,
        handle: async (e) => {
          if (e.eventId === "y1") throw new Error("handler down");
        },
      });
      assert.equal(await failing.pollOnce(), 1); // y2 handled, y1 left pending
      assert.equal(await redis.eventLog.pendingCount(stream, "g"), 1);

      const got: StreamEntry[] = [];
      const healthy = createConsumer({
        eventLog: redis.eventLog,
        stream,
        group: "g",
        consumer: "healthy",
        claimIdleMs: 50,
        handle: async (e) => void got.push(e),
      });
      await sleep(80);
      assert.equal(await healthy.pollOnce(), 1);
      assert.deepEqual(
        got.map((e) => [e.eventId, e.deliveries]),
        [["y1", 2]],
      );
      assert.equal(await redis.eventLog.pendingCount(stream, "g"), 0);
    });

    const entry = (eventId: string, b: number) => ({ type: "t", key: "k", eventId, data: new Uint8Array([b]) });

    it("hands each read's new entries to handleBatch in order in one call and acks them all", async () => {
      const stream = "batch-ok";
      await redis.eventLog.appendMany(stream, [entry("b1", 1), entry("b0", 0), entry("b2", 2), entry("b1", 1), entry("b3", 3)]);
      const seen = createLruSeenSet();
      seen.add("b0"); // handled before (say by the previous batch of a consumer that died before acking)
      const calls: StreamEntry[][] = [];
      const consumer = createConsumer({
        eventLog: redis.eventLog,
        stream,
        group: "g",
        consumer: "c1",
        seen,
        claimIdleMs: 60_000,
        blockMs: 50,
        handleBatch: async (entries) => void calls.push(entries),
      });
      assert.equal(await consumer.pollOnce(), 5, "every entry of the read is acked, skipped ones included");
      assert.deepEqual(
        calls.map((c) => c.map((e) => [e.eventId, [...e.data]])),
        [[["b1", [1]], ["b2", [2]], ["b3", [3]]]],
      );
      assert.equal(await redis.eventLog.pendingCount(stream, "g"), 0);
      // Handled ids are remembered: a republished one is not passed again.
      assert.equal(await consumer.pollOnce(), 0);
      await consumer.start();
      try {
        await redis.eventLog.appendMany(stream, [entry("b2", 2), entry("b4", 4), entry("b5", 5)]);
        await until(async () => calls.length === 2 && (await redis.eventLog.pendingCount(stream, "g")) === 0);
      } finally {
        await consumer.stop();
      }
      assert.deepEqual(calls[1]!.map((e) => e.eventId), ["b4", "b5"]);
    });

    it("leaves a failed batch wholly pending and retries all of it after claimIdleMs", async () => {
      const stream = "batch-fail";
      await redis.eventLog.appendMany(stream, [entry("f0", 0), entry("f1", 1), entry("f2", 2), entry("f3", 3)]);
      const seen = createLruSeenSet();
      seen.add("f0");
      const calls: [string, number | undefined][][] = [];
      let failures = 1;
      const consumer = createConsumer({
        eventLog: redis.eventLog,
        stream,
        group: "g",
        consumer: "c1",
        seen,
        claimIdleMs: 50,
        handleBatch: async (entries) => {
          calls.push(entries.map((e) => [e.eventId, e.deliveries]));
          if (failures-- > 0) throw new Error("sink down");
        },
      });
      assert.equal(await consumer.pollOnce(), 1, "only the entry handled before is acked");
      assert.equal(await redis.eventLog.pendingCount(stream, "g"), 3);
      assert.equal(seen.has("f1"), false, "a failed batch is not remembered as handled");
      await sleep(80);
      assert.equal(await consumer.pollOnce(), 3);
      assert.deepEqual(calls, [
        [["f1", 1], ["f2", 1], ["f3", 1]],
        [["f1", 2], ["f2", 2], ["f3", 2]],
      ]);
      assert.equal(await redis.eventLog.pendingCount(stream, "g"), 0);
    });

    it("requires exactly one of handle and handleBatch", () => {
      const base = { eventLog: redis.eventLog, stream: "batch-opts", group: "g", consumer: "c1" };
      assert.throws(() => createConsumer(base), /exactly one of handle and handleBatch/);
      assert.throws(
        () => createConsumer({ ...base, handle: async () => {}, handleBatch: async () => {} }),
        /exactly one of handle and handleBatch/,
      );
    });
  });
}
