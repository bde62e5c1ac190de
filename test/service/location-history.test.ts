import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { TimestampSchema, timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, createRouterTransport, type Client, type ServiceImpl } from "@connectrpc/connect";
import { sql, type KyselyPlugin, type RootOperationNode } from "kysely";
import { LocationService } from "../../gen/dabba/location/v1/location_service_pb.js";
import { migrations } from "../../services/location/db/migrations.js";
import { getLocationHistory } from "../../services/location/handlers/get-location-history.js";
import { createLocationHistory, partitionName, type LocationHistory } from "../../services/location/history.js";
import type { AcceptedFix } from "../../services/location/types.js";
import { authInterceptor, createVerifier, mintToken, type Role } from "../../services/platform/auth.js";
import { testConfig, type LocationConfig } from "../../services/platform/config.js";
import { openDb, type Db } from "../../services/platform/db.js";
import { withMappedErrors } from "../../services/platform/errors.js";
import { createLogger } from "../../services/platform/logger.js";
import { requireReal } from "../helpers/backends.js";
import { createRunDatabase } from "../helpers/run-database.js";
import { until } from "../helpers/wait.js";
import { expectCode } from "../helpers/expect.js";

const DAY = 86_400_000;
const logger = createLogger("silent");
/** A fixed instant in the future, so partitions of "now" in a test never meet the real clock's. */
const NOW = Date.UTC(2030, 2, 10, 12, 0, 0);

let seq = 0n;
function fix(driverId: string, t: number, over: Partial<AcceptedFix> = {}): AcceptedFix {
  return {
    driverId,
    city: "bengaluru",
    lat: 12.97 + Number(seq % 1000n) * 1e-5,
    lng: 77.59,
    accuracyM: 8.5,
    speedMps: 6.25,
    headingDeg: 270.5,
    deviceTimeMs: t,
    receivedAtMs: t + 150,
    sequence: ++seq,
    ...over,
  };
}

function locationConfig(over: Partial<LocationConfig> = {}): LocationConfig {
  // Flushes only when a test asks (or the buffer passes the mark): no timer races in assertions.
  return { ...testConfig().location, historyFlushMs: 3_600_000, historyMinIntervalMs: 0, ...over };
}

/** Counts INSERTs into location_history as Kysely compiles them (one per statement sent). */
function insertCounter(): KyselyPlugin & { inserts: number } {
  const isInsert = (node: RootOperationNode) =>
    node.kind === "RawNode" && node.sqlFragments.join("?").includes("insert into location_history");
  const plugin = {
    inserts: 0,
    transformQuery(args: { node: RootOperationNode }) {
      if (isInsert(args.node)) plugin.inserts++;
      return args.node;
    },
    async transformResult(args: { result: any }) {
      return args.result;
    },
  };
  return plugin;
}

function withPlugin(db: Db, plugin: KyselyPlugin): Db {
  return { ...db, kysely: db.kysely.withPlugin(plugin) };
}

async function partitions(db: Db): Promise<{ name: string; bound: string }[]> {
  const { rows } = await sql<{ name: string; bound: string }>`
    select c.relname as name, pg_get_expr(c.relpartbound, c.oid) as bound
    from pg_inherits i join pg_class c on c.oid = i.inhrelid
    where i.inhparent = 'location_history'::regclass
    order by c.relname`.execute(db.kysely);
  return rows;
}

async function rowsByPartition(db: Db): Promise<{ part: string; driver_id: string; at: number }[]> {
  const { rows } = await sql<{ part: string; driver_id: string; recorded_at: Date }>`
    select tableoid::regclass::text as part, driver_id, recorded_at from location_history order by recorded_at, driver_id`.execute(db.kysely);
  return rows.map((r) => ({ part: r.part, driver_id: r.driver_id, at: r.recorded_at.getTime() }));
}

async function count(db: Db): Promise<number> {
  const { rows } = await sql<{ n: number }>`select count(*)::int as n from location_history`.execute(db.kysely);
  return rows[0]!.n;
}


for (const kind of ["embedded", "real"] as const) {
  describe(`LocationHistory (${kind === "real" ? "Postgres" : "PGlite"})`, function () {
    this.timeout(60_000);
    let db: Db;
    let runDb: { url: string; drop(): Promise<void> } | undefined;
    const open: LocationHistory[] = [];

    function history(over: Partial<LocationConfig> = {}, on: Db = db): LocationHistory {
      const h = createLocationHistory({ db: on, config: locationConfig(over), logger });
      open.push(h);
      return h;
    }

    before(async function () {
      if (kind === "real") {
        await requireReal("postgres", this);
        runDb = await createRunDatabase("location_history_test");
        db = await openDb({ databaseUrl: runDb.url, dataDir: "memory://" });
      } else {
        db = await openDb({ dataDir: "memory://" });
      }
      await db.migrate("location", migrations);
    });

    beforeEach(async () => {
      // Every test starts without partitions (and so without rows).
      for (const p of await partitions(db)) await sql`drop table ${sql.table(p.name)}`.execute(db.kysely);
    });

    afterEach(async () => {
      for (const h of open.splice(0)) await h.stop();
    });

    after(async () => {
      await db?.close();
      await runDb?.drop();
    });

    describe("partitions", () => {
      it("creates one partition per UTC day from now - maxPastMs to tomorrow, with day bounds", async () => {
        const h = history({ maxPastMs: 2 * DAY, maxFutureMs: 10_000 });
        await h.ensurePartitions(new Date(NOW));
        const parts = await partitions(db);
        assert.deepEqual(
          parts.map((p) => p.name),
          ["location_history_p20300308", "location_history_p20300309", "location_history_p20300310", "location_history_p20300311"],
        );
        const p10 = parts.find((p) => p.name === "location_history_p20300310")!;
        const m = /FROM \('([^']+)'\) TO \('([^']+)'\)/.exec(p10.bound);
        assert.ok(m, p10.bound);
        assert.equal(new Date(m[1]!.replace(" ", "T").replace(/\+00$/, "Z")).getTime(), Date.UTC(2030, 2, 10));
        assert.equal(new Date(m[2]!.replace(" ", "T").replace(/\+00$/, "Z")).getTime(), Date.UTC(2030, 2, 11));
        // Idempotent, and no default partition exists.
        await h.ensurePartitions(new Date(NOW));
        assert.deepEqual(await partitions(db), parts);
        assert.ok(parts.every((p) => p.bound !== "DEFAULT"));
        // Every partition carries the (driver_id, recorded_at) index.
        const { rows } = await sql<{ n: number }>`
          select count(*)::int as n from pg_indexes where tablename = 'location_history_p20300310' and indexdef like '%(driver_id, recorded_at)%'`.execute(db.kysely);
        assert.equal(rows[0]!.n, 1);
      });

      it("covers maxFutureMs past midnight and names days by UTC", async () => {
        const h = history({ maxPastMs: 60_000, maxFutureMs: 3_600_000 });
        // 23:30 UTC on the 31st: today, tomorrow (also now + maxFutureMs), nothing else.
        await h.ensurePartitions(new Date(Date.UTC(2030, 11, 31, 23, 30)));
        assert.deepEqual((await partitions(db)).map((p) => p.name), ["location_history_p20301231", "location_history_p20310101"]);
        assert.equal(partitionName(Date.UTC(2030, 0, 1, 0, 0, 0, 0) - 1), "location_history_p20291231");
      });

      it("stores each row in the partition of its device day, creating a missing one on the fly", async () => {
        const h = history();
        await h.ensurePartitions(new Date(NOW));
        const lastMsOf9th = Date.UTC(2030, 2, 10) - 1;
        const firstMsOf10th = Date.UTC(2030, 2, 10);
        const jan1 = Date.UTC(2030, 0, 1, 8); // no partition was made for this day
        await h.append([fix("d1", lastMsOf9th), fix("d1", firstMsOf10th), fix("d2", jan1)]);
        await h.flush();
        assert.deepEqual(await rowsByPartition(db), [
          { part: "location_history_p20300101", driver_id: "d2", at: jan1 },
          { part: "location_history_p20300309", driver_id: "d1", at: lastMsOf9th },
          { part: "location_history_p20300310", driver_id: "d1", at: firstMsOf10th },
        ]);
        assert.deepEqual(h.stats(), { written: 3, downsampled: 0, dropped: 0, flushes: 1, failures: 0 });
      });

      it("survives concurrent ensurePartitions from several connections", async function () {
        const dbs: Db[] = [db];
        if (kind === "real") for (let i = 0; i < 3; i++) dbs.push(await openDb({ databaseUrl: runDb!.url, dataDir: "memory://", poolSize: 4 }));
        try {
          const hs = dbs.flatMap((d) => [history({ maxPastMs: 3 * DAY }, d), history({ maxPastMs: 3 * DAY }, d)]);
          for (let round = 0; round < 5; round++) {
            const now = new Date(NOW + round * 10 * DAY);
            await Promise.all(hs.flatMap((h) => [h.ensurePartitions(now), h.ensurePartitions(now)]));
          }
          const names = (await partitions(db)).map((p) => p.name);
          assert.equal(names.length, 5 * 5, names.join(","));
          assert.equal(new Set(names).size, names.length);
        } finally {
          for (const d of dbs.slice(1)) await d.close();
        }
      });
    });

    describe("append and flush", () => {
      it("keeps at most one point per driver per historyMinIntervalMs of device time", async () => {
        const h = history({ historyMinIntervalMs: 1000 });
        await h.ensurePartitions(new Date(NOW));
        // Two drivers, a fix every 200 ms for 5 s, over several appends: 5 points each survive.
        for (let i = 0; i < 25; i += 5) {
          const batch: AcceptedFix[] = [];
          for (let j = i; j < i + 5; j++) batch.push(fix("ds-a", NOW + j * 200), fix("ds-b", NOW + 100 + j * 200));
          await h.append(batch);
        }
        await h.flush();
        const trailA = await h.trail("ds-a", NOW - DAY, NOW + DAY, 100);
        const trailB = await h.trail("ds-b", NOW - DAY, NOW + DAY, 100);
        assert.deepEqual(trailA.map((f) => f.deviceTimeMs - NOW), [0, 1000, 2000, 3000, 4000]);
        assert.deepEqual(trailB.map((f) => f.deviceTimeMs - NOW), [100, 1100, 2100, 3100, 4100]);
        assert.deepEqual(h.stats(), { written: 10, downsampled: 40, dropped: 0, flushes: 1, failures: 0 });
        // A fix older than the last kept one (another stream's leftovers) is not written either.
        await h.append([fix("ds-a", NOW + 3500), fix("ds-a", NOW + 5000)]);
        await h.flush();
        assert.deepEqual((await h.trail("ds-a", NOW, NOW + DAY, 100)).map((f) => f.deviceTimeMs - NOW), [0, 1000, 2000, 3000, 4000, 5000]);
      });

      it("writes thousands of buffered rows as one insert statement", async () => {
        const counter = insertCounter();
        const h = history({ historyMaxBuffered: 100_000 }, withPlugin(db, counter));
        await h.ensurePartitions(new Date(NOW));
        for (let i = 0; i < 5000; i += 100) {
          await h.append(Array.from({ length: 100 }, (_, j) => fix(`bulk-${(i + j) % 700}`, NOW + i + j)));
        }
        assert.equal(counter.inserts, 0, "nothing is written before the flush");
        await h.flush();
        assert.equal(counter.inserts, 1);
        assert.equal(await count(db), 5000);
        // One statement, one transaction: every row has the same xmin.
        const { rows } = await sql<{ n: number }>`select count(distinct xmin::text)::int as n from location_history`.execute(db.kysely);
        assert.equal(rows[0]!.n, 1);
        assert.deepEqual(h.stats(), { written: 5000, downsampled: 0, dropped: 0, flushes: 1, failures: 0 });
      });

      it("round-trips every field, including driver ids that need quoting in an array literal", async () => {
        const h = history();
        await h.ensurePartitions(new Date(NOW));
        const odd = 'drv,"quoted" {brace} back\\slash ñ';
        const f = fix(odd, NOW + 123, { lat: -33.8688, lng: 151.2093, accuracyM: 3.5, speedMps: 0, headingDeg: 359.5, receivedAtMs: NOW + 999 });
        await h.append([f, fix("NULL", NOW + 124), fix("nan", Number.NaN)]);
        await h.flush();
        // A row Postgres would refuse is dropped and counted, not allowed to fail the whole batch.
        assert.deepEqual(h.stats(), { written: 2, downsampled: 0, dropped: 1, flushes: 1, failures: 0 });
        const [got] = await h.trail(odd, NOW, NOW + 1000, 10);
        assert.deepEqual(got, { ...f, city: "", sequence: 0n });
        assert.equal((await h.trail("NULL", NOW, NOW + 1000, 10)).length, 1);
      });

      it("flushes on its timer after start() and on stop()", async () => {
        const h = history({ historyFlushMs: 20 });
        await h.ensurePartitions(new Date());
        h.start();
        const t = Date.now();
        await h.append([fix("timer", t)]);
        await until(async () => (await count(db)) === 1, 10_000, "timer flush");
        await h.append([fix("timer", t + 5000)]);
        await h.stop();
        assert.equal(await count(db), 2);
        assert.equal(h.stats().written, 2);
      });

      it("makes append wait for a flush once historyMaxBuffered rows are buffered", async () => {
        const counter = insertCounter();
        const h = history({ historyMaxBuffered: 100 }, withPlugin(db, counter));
        await h.ensurePartitions(new Date(NOW));
        // Below the mark: resolves at once, nothing written.
        await h.append(Array.from({ length: 99 }, (_, i) => fix(`bp-${i}`, NOW + i)));
        assert.equal(h.stats().flushes, 0);
        assert.equal(counter.inserts, 0);

        // Hold a lock that blocks inserts, so the flush the next append triggers cannot finish.
        let release!: () => void;
        const gate = new Promise<void>((r) => (release = r));
        let locked!: () => void;
        const isLocked = new Promise<void>((r) => (locked = r));
        const blocker = db.kysely.transaction().execute(async (trx) => {
          await sql`lock table location_history in share mode`.execute(trx);
          locked();
          await gate;
        });
        await isLocked;

        try {
          let settled = false;
          const waiting = h.append([fix("bp-last", NOW + 500)]).then(() => (settled = true));
          await until(() => counter.inserts === 1, 10_000, "flush started");
          // Appends above the mark wait too, for the flush after the blocked one.
          let settled2 = false;
          const waiting2 = h.append([fix("bp-after", NOW + 600)]).then(() => (settled2 = true));
          assert.equal(settled, false, "append above the mark resolved while its flush was blocked");
          assert.equal(settled2, false);
          assert.equal(await countOutside(kind, runDb), kind === "real" ? 0 : undefined);

          release();
          await blocker;
          await waiting;
          assert.equal(h.stats().flushes >= 1, true);
          await waiting2;
          await h.flush();
          assert.equal(await count(db), 101);
          assert.equal(h.stats().written, 101);
        } finally {
          // A failed assertion must not leave the lock held (later hooks would wait on it).
          release();
          await blocker;
        }
      });

      it("keeps rows of a failed flush for retry and drops the oldest beyond 2 x historyMaxBuffered", async () => {
        const h = history({ historyMaxBuffered: 100 });
        await h.ensurePartitions(new Date(NOW));
        await sql`alter table location_history rename to location_history_offline`.execute(db.kysely);
        try {
          // 150 rows: above the mark, so the append waits for a flush, which fails; rows are kept.
          await h.append(Array.from({ length: 150 }, (_, i) => fix(`of-${i}`, NOW + i)));
          assert.equal(h.stats().failures, 1);
          assert.equal(h.stats().dropped, 0);
          await assert.rejects(h.flush());
          assert.equal(h.stats().failures, 2);
          // 100 more: 250 buffered > 200, the 50 oldest go.
          await h.append(Array.from({ length: 100 }, (_, i) => fix(`of-${150 + i}`, NOW + 150 + i)));
          assert.equal(h.stats().dropped, 50);
        } finally {
          await sql`alter table location_history_offline rename to location_history`.execute(db.kysely);
        }
        await h.flush();
        const rows = await rowsByPartition(db);
        assert.equal(rows.length, 200);
        assert.equal(rows[0]!.at, NOW + 50);
        assert.equal(rows.at(-1)!.at, NOW + 249);
        const s = h.stats();
        assert.equal(s.written, 200);
        assert.equal(s.dropped, 50);
        assert.ok(s.failures >= 3, `failures ${s.failures}`);
      });
    });

    describe("retention", () => {
      it("drops exactly the whole days older than historyRetentionDays and keeps the rest", async () => {
        const h = history({ historyRetentionDays: 30, maxPastMs: 60_000 });
        const days = [NOW - 40 * DAY, NOW - 31 * DAY, NOW - 30 * DAY - 3_600_000, NOW - 29 * DAY, NOW];
        for (const d of days) await h.ensurePartitions(new Date(d));
        await h.append(days.map((d) => fix("ret", d)));
        await h.flush();
        assert.deepEqual((await partitions(db)).map((p) => p.name), [
          "location_history_p20300129",
          "location_history_p20300130",
          "location_history_p20300207",
          "location_history_p20300208",
          "location_history_p20300209",
          "location_history_p20300210",
          "location_history_p20300310",
          "location_history_p20300311",
        ]);

        // Cutoff 2030-02-08T12:00Z: Feb 8 still holds younger instants, so it stays.
        const dropped = await h.enforceRetention(new Date(NOW));
        assert.deepEqual(dropped, ["location_history_p20300129", "location_history_p20300130", "location_history_p20300207"]);
        assert.deepEqual((await partitions(db)).map((p) => p.name), [
          "location_history_p20300208",
          "location_history_p20300209",
          "location_history_p20300210",
          "location_history_p20300310",
          "location_history_p20300311",
        ]);
        assert.deepEqual((await rowsByPartition(db)).map((r) => r.at), [NOW - 30 * DAY - 3_600_000, NOW - 29 * DAY, NOW]);
        assert.deepEqual(await h.enforceRetention(new Date(NOW)), []);
      });
    });

    describe("trail", () => {
      it("returns the driver's points in [from, to) in time order, at most limit, across days", async () => {
        const h = history({ maxPastMs: DAY });
        await h.ensurePartitions(new Date(NOW));
        const midnight = Date.UTC(2030, 2, 10);
        const times = Array.from({ length: 10 }, (_, i) => midnight - 5000 + i * 1000);
        // Written out of order, in two flushes, with another driver interleaved.
        const shuffled = [7, 2, 9, 0, 4, 1, 8, 3, 6, 5].map((i) => times[i]!);
        await h.append(shuffled.slice(0, 5).map((t) => fix("tr", t)));
        await h.append(times.map((t) => fix("tr-other", t)));
        await h.flush();
        await h.append(shuffled.slice(5).map((t) => fix("tr", t)));
        await h.flush();

        const got = await h.trail("tr", times[2]!, times[7]!, 100);
        assert.deepEqual(got.map((f) => f.deviceTimeMs), times.slice(2, 7));
        assert.ok(got.every((f) => f.driverId === "tr" && f.city === "bengaluru"));
        assert.deepEqual((await h.trail("tr", times[2]!, times[7]!, 3)).map((f) => f.deviceTimeMs), times.slice(2, 5));
        assert.deepEqual(await h.trail("tr", times[9]! + 1, times[9]! + DAY, 10), []);
        assert.deepEqual(await h.trail("nobody", times[0]!, times[9]! + 1, 10), []);
      });
    });

    describe("LocationService.GetLocationHistory", () => {
      let client: Client<typeof LocationService>;
      let h: LocationHistory;
      const cfg = testConfig();
      const token = (role: Role, sub = `${role}-1`) => mintToken(cfg.auth, { role, sub, restaurantId: role === "restaurant" ? "rst-1" : undefined });
      const call = async (role: Role | undefined, req: Parameters<Client<typeof LocationService>["getLocationHistory"]>[0]) =>
        client.getLocationHistory(req, role ? { headers: { authorization: `Bearer ${await token(role)}` } } : {});

      beforeEach(async () => {
        h = history();
        await h.ensurePartitions(new Date(NOW));
        const verifier = await createVerifier(cfg.auth);
        const impl = withMappedErrors(
          LocationService,
          { getLocationHistory: getLocationHistory(h) } as unknown as ServiceImpl<typeof LocationService>,
          logger,
        );
        const transport = createRouterTransport(({ service }) => service(LocationService, impl), {
          router: { interceptors: [authInterceptor(verifier)] },
        });
        client = createClient(LocationService, transport);
      });

      it("returns the trail as DriverPositions for ops and service, oldest first", async () => {
        await h.append([fix("gh", NOW + 2000), fix("gh", NOW), fix("gh", NOW + 1000, { accuracyM: 4, speedMps: 9.5, headingDeg: 45 })]);
        await h.flush();
        for (const role of ["ops", "service"] as const) {
          const res = await call(role, { driverId: "gh", from: timestampFromMs(NOW), to: timestampFromMs(NOW + 2000) });
          assert.deepEqual(res.points.map((p) => timestampMs(p.at!)), [NOW, NOW + 1000]);
          const p = res.points[1]!;
          assert.equal(p.driverId, "gh");
          assert.equal(p.accuracyM, 4);
          assert.equal(p.speedMps, 9.5);
          assert.equal(p.headingDeg, 45);
          assert.ok(Math.abs(p.location!.lat - 12.97) < 0.1 && p.location!.lng === 77.59);
        }
        const limited = await call("ops", { driverId: "gh", from: timestampFromMs(NOW), to: timestampFromMs(NOW + 3000), limit: 2 });
        assert.equal(limited.points.length, 2);
        // Sub-millisecond bounds: from is inclusive, to exclusive.
        const sub = await call("ops", {
          driverId: "gh",
          from: create(TimestampSchema, { seconds: BigInt(NOW / 1000), nanos: 500_000 }),
          to: create(TimestampSchema, { seconds: BigInt((NOW + 2000) / 1000), nanos: 500_000 }),
        });
        assert.deepEqual(sub.points.map((p) => timestampMs(p.at!)), [NOW + 1000, NOW + 2000]);
      });

      it("refuses other roles and anonymous callers", async () => {
        const req = { driverId: "gh", from: timestampFromMs(NOW), to: timestampFromMs(NOW + 1000) };
        for (const role of ["customer", "driver", "restaurant"] as const) await expectCode(call(role, req), Code.PermissionDenied);
        await expectCode(call(undefined, req), Code.Unauthenticated);
      });

      it("rejects bad requests with INVALID_ARGUMENT naming the field", async () => {
        const from = timestampFromMs(NOW);
        const to = timestampFromMs(NOW + 1000);
        const cases: [Parameters<typeof call>[1], RegExp][] = [
          [{ from, to }, /^driver_id: is required/],
          [{ driverId: "x".repeat(129), from, to }, /^driver_id: must be at most 128/],
          [{ driverId: "gh", to }, /^from: is required/],
          [{ driverId: "gh", from }, /^to: is required/],
          [{ driverId: "gh", from: to, to: from }, /^to: must be after from/],
          [{ driverId: "gh", from, to: from }, /^to: must be after from/],
          [{ driverId: "gh", from, to: timestampFromMs(NOW + 7 * DAY + 1) }, /^to: must be at most 7 days/],
          [{ driverId: "gh", from, to, limit: -1 }, /^limit: /],
          [{ driverId: "gh", from, to, limit: 10_001 }, /^limit: /],
          [{ driverId: "gh", from: create(TimestampSchema, { seconds: 1n, nanos: 1_000_000_000 }), to }, /^from: is not a valid timestamp/],
          [{ driverId: "gh", from, to: create(TimestampSchema, { seconds: 253_402_300_800n }) }, /^to: is not a valid timestamp/],
        ];
        for (const [req, msg] of cases) await expectCode(call("ops", req), Code.InvalidArgument, msg);
        // The edges are accepted.
        await call("ops", { driverId: "x".repeat(128), from, to: timestampFromMs(NOW + 7 * DAY), limit: 10_000 });
      });
    });
  });
}

/**
 * On Postgres, rows visible from another session while the flush is blocked (must be none: the
 * insert is one statement). PGlite has one session, so there is nothing to ask.
 */
async function countOutside(kind: "embedded" | "real", runDb: { url: string } | undefined): Promise<number | undefined> {
  if (kind !== "real") return undefined;
  const other = await openDb({ databaseUrl: runDb!.url, dataDir: "memory://", poolSize: 1 });
  try {
    // Reading the parent needs ACCESS SHARE, which SHARE mode does not block.
    return await count(other);
  } finally {
    await other.close();
  }
}
