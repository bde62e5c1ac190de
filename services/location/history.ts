import { sql, type Kysely, type Transaction } from "kysely";
import { cityAt, type LocationConfig } from "../platform/config.js";
import type { Db } from "../platform/db.js";
import type { Logger } from "../platform/logger.js";
import type { LocationTables } from "./db/tables.js";
import type { AcceptedFix, HistorySink } from "./types.js";

/**
 * Driver location history in Postgres: a buffered, downsampled sink for accepted fixes, written
 * as one multi-row insert per flush into day partitions of location_history, plus the partition
 * and retention jobs and the trail query behind GetLocationHistory.
 */
export interface LocationHistory extends HistorySink {
  /** Points of a driver between fromMs (incl.) and toMs (excl.), time order, at most limit. */
  trail(driverId: string, fromMs: number, toMs: number, limit: number): Promise<AcceptedFix[]>;
  /** Creates the day partitions needed around now (idempotent, safe across processes). */
  ensurePartitions(now?: Date): Promise<void>;
  /** Drops whole day partitions older than historyRetentionDays; returns the dropped table names. */
  enforceRetention(now?: Date): Promise<string[]>;
  /** Rows written, rows dropped by downsampling, rows dropped on overflow, flushes, failures. */
  stats(): { written: number; downsampled: number; dropped: number; flushes: number; failures: number };
}

export const HISTORY_TABLE = "location_history";
const DAY_MS = 86_400_000;
/** Partition maintenance (ahead-of-time creation and retention) runs at start and this often. */
const MAINTENANCE_MS = 3_600_000;
/** How often the downsampling state is swept of idle drivers. */
const IDLE_SWEEP_MS = 60_000;
/** Upper bound of the retry delay after failed flushes. */
const MAX_BACKOFF_MS = 30_000;
/** Least time between two warnings about dropped rows. */
const DROP_LOG_MS = 5_000;
/**
 * pg_advisory_xact_lock key serialising partition DDL across every process sharing the database:
 * two concurrent `create table if not exists ... partition of` for the same day can otherwise both
 * pass the existence check and one fails on the catalog's unique index.
 */
const PARTITION_LOCK_KEY = 0x64616262_0003n; // "dabb", issue 3

/** location_history_pYYYYMMDD of the UTC day containing ms. */
export function partitionName(ms: number): string {
  const d = new Date(dayStart(ms));
  const p = (n: number, w: number) => String(n).padStart(w, "0");
  return `${HISTORY_TABLE}_p${p(d.getUTCFullYear(), 4)}${p(d.getUTCMonth() + 1, 2)}${p(d.getUTCDate(), 2)}`;
}

/** Start (epoch ms) of the UTC day named by a partition, or undefined for names that are not ours. */
export function partitionDay(name: string): number | undefined {
  const m = /^location_history_p(\d{4})(\d{2})(\d{2})$/.exec(name);
  if (!m) return undefined;
  const ms = Date.UTC(Number(m[1]), Number(m[2]) - 1, Number(m[3]));
  return partitionName(ms) === name ? ms : undefined;
}

function dayStart(ms: number): number {
  return Math.floor(ms / DAY_MS) * DAY_MS;
}

/** Postgres reports a row outside every partition as check_violation "no partition of relation ... found for row". */
function isMissingPartition(err: unknown): boolean {
  const e = err as { code?: unknown; message?: unknown } | undefined;
  return e?.code === "23514" && typeof e.message === "string" && /no partition of relation/i.test(e.message);
}

interface Deferred {
  promise: Promise<void>;
  resolve(): void;
}

function deferred(): Deferred {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

interface LastKept {
  /** Device time of the driver's last kept point. */
  t: number;
  /** Server time the driver was last seen (kept or not), for forgetting idle drivers. */
  seen: number;
}

export function createLocationHistory(opts: { db: Db; config: LocationConfig; logger: Logger }): LocationHistory {
  const { db, config } = opts;
  const k = db.kysely as Kysely<LocationTables>;
  const log = opts.logger.child({ component: "location-history" });
  const interval = config.historyMinIntervalMs;
  const mark = config.historyMaxBuffered;
  const cap = 2 * mark;
  // A driver unseen this long would have its next fix kept anyway (device time is bounded by
  // maxPastMs / maxFutureMs around receive time), so forgetting it changes nothing.
  const idleMs = interval + config.maxPastMs + config.maxFutureMs;

  const lastKept = new Map<string, LastKept>();
  let lastSweep = Date.now();

  let buffer: AcceptedFix[] = [];
  /** Rows taken by the flush in progress (still in memory until it commits). */
  let inFlight = 0;
  /** Resolved when the next flush to start (the one that will carry rows buffered now) completes. */
  let nextFlush: Deferred | undefined;
  /** Serialises flushes: at most one insert at a time, in buffer order. */
  let chain: Promise<void> = Promise.resolve();
  let kickQueued = false;
  let consecutiveFailures = 0;

  let started = false;
  let stopped = false;
  let flushTimer: NodeJS.Timeout | undefined;
  let maintenanceTimer: NodeJS.Timeout | undefined;
  let maintenance: Promise<void> | undefined;

  const counters = { written: 0, downsampled: 0, dropped: 0, flushes: 0, failures: 0 };

  // -------------------------------------------------------------------------------------------
  // Partitions

  async function listPartitions(q: Kysely<any>): Promise<string[]> {
    const { rows } = await sql<{ name: string }>`
      select c.relname as name
      from pg_inherits i join pg_class c on c.oid = i.inhrelid
      where i.inhparent = ${HISTORY_TABLE}::regclass`.execute(q);
    return rows.map((r) => r.name);
  }

  async function withPartitionLock<T>(f: (trx: Transaction<any>) => Promise<T>): Promise<T> {
    return db.kysely.transaction().execute(async (trx) => {
      await sql`select pg_advisory_xact_lock(${sql.lit(PARTITION_LOCK_KEY.toString())}::bigint)`.execute(trx);
      return f(trx);
    });
  }

  /** Creates the partitions of the given days that do not exist yet; returns the created names. */
  async function createDays(dayStarts: readonly number[]): Promise<string[]> {
    const wanted = [...new Set(dayStarts.map(dayStart))].sort((a, b) => a - b);
    // Fast path without the lock: CREATE ... PARTITION OF locks the parent against inserts, so
    // DDL is issued only for days that are really missing (about once a day).
    const have = new Set(await listPartitions(db.kysely));
    if (wanted.every((d) => have.has(partitionName(d)))) return [];
    const created = await withPartitionLock(async (trx) => {
      const existing = new Set(await listPartitions(trx));
      const made: string[] = [];
      for (const d of wanted) {
        const name = partitionName(d);
        if (existing.has(name)) continue;
        const from = new Date(d).toISOString();
        const to = new Date(d + DAY_MS).toISOString();
        await sql`create table if not exists ${sql.table(name)} partition of ${sql.table(HISTORY_TABLE)}
          for values from (${sql.lit(from)}) to (${sql.lit(to)})`.execute(trx);
        made.push(name);
      }
      return made;
    });
    if (created.length > 0) log.info({ partitions: created }, "location history partitions created");
    return created;
  }

  async function ensurePartitions(now: Date = new Date()): Promise<void> {
    const t = now.getTime();
    if (!Number.isFinite(t)) throw new Error("ensurePartitions: invalid date");
    const first = dayStart(t - config.maxPastMs);
    const last = Math.max(dayStart(t + config.maxFutureMs), dayStart(t) + DAY_MS);
    const days: number[] = [];
    for (let d = first; d <= last; d += DAY_MS) days.push(d);
    await createDays(days);
  }

  async function enforceRetention(now: Date = new Date()): Promise<string[]> {
    const t = now.getTime();
    if (!Number.isFinite(t)) throw new Error("enforceRetention: invalid date");
    const cutoff = t - config.historyRetentionDays * DAY_MS;
    const expired = (names: string[]) =>
      names
        .filter((n) => {
          const d = partitionDay(n);
          // Only whole days: a day is dropped once its last instant is older than the cutoff.
          return d !== undefined && d + DAY_MS <= cutoff;
        })
        .sort();
    if (expired(await listPartitions(db.kysely)).length === 0) return [];
    const dropped = await withPartitionLock(async (trx) => {
      const names = expired(await listPartitions(trx));
      for (const name of names) await sql`drop table if exists ${sql.table(name)}`.execute(trx);
      return names;
    });
    if (dropped.length > 0) {
      log.info({ partitions: dropped, retentionDays: config.historyRetentionDays }, "location history partitions dropped (retention)");
    }
    return dropped;
  }

  function runMaintenance(): Promise<void> {
    maintenance ??= (async () => {
      try {
        await ensurePartitions();
        await enforceRetention();
      } catch (err) {
        log.error({ err }, "location history partition maintenance failed; retrying at the next run");
      } finally {
        maintenance = undefined;
      }
    })();
    return maintenance;
  }

  // -------------------------------------------------------------------------------------------
  // Writes

  async function insert(rows: readonly AcceptedFix[]): Promise<void> {
    const n = rows.length;
    const driverIds = new Array<string>(n);
    const recorded = new Array<number>(n);
    const lat = new Array<number>(n);
    const lng = new Array<number>(n);
    const acc = new Array<number>(n);
    const speed = new Array<number>(n);
    const heading = new Array<number>(n);
    const received = new Array<number>(n);
    for (let i = 0; i < n; i++) {
      const f = rows[i]!;
      driverIds[i] = f.driverId;
      recorded[i] = f.deviceTimeMs;
      lat[i] = f.lat;
      lng[i] = f.lng;
      acc[i] = f.accuracyM;
      speed[i] = f.speedMps;
      heading[i] = f.headingDeg;
      received[i] = f.receivedAtMs;
    }
    // One statement whatever the batch size: eight array parameters unnested into rows. Times
    // travel as epoch ms (float8), cheaper to serialise than timestamps; to_timestamp keeps
    // microseconds, so whole milliseconds survive exactly.
    await sql`
      insert into location_history (driver_id, recorded_at, lat, lng, accuracy_m, speed_mps, heading_deg, received_at)
      select u.d, to_timestamp(u.r / 1000.0), u.la, u.ln, u.a, u.s, u.h, to_timestamp(u.rc / 1000.0)
      from unnest(${driverIds}::text[], ${recorded}::float8[], ${lat}::float8[], ${lng}::float8[],
                  ${acc}::real[], ${speed}::real[], ${heading}::real[], ${received}::float8[])
        as u(d, r, la, ln, a, s, h, rc)`.execute(db.kysely);
  }

  async function insertCreatingPartitions(rows: readonly AcceptedFix[]): Promise<void> {
    try {
      await insert(rows);
    } catch (err) {
      if (!isMissingPartition(err)) throw err;
      // A day nobody created ahead (clock jump, maintenance failing): create it and retry once.
      const created = await createDays(rows.map((r) => r.deviceTimeMs));
      log.warn({ created }, "location history insert hit a missing partition; created it and retrying");
      await insert(rows);
    }
  }

  let droppedUnlogged = 0;
  let lastDropLog = 0;

  /** Counts dropped rows; warns at most every DROP_LOG_MS so an outage does not flood the log. */
  function noteDropped(n: number, why: string): void {
    counters.dropped += n;
    droppedUnlogged += n;
    const now = Date.now();
    if (now - lastDropLog < DROP_LOG_MS) return;
    lastDropLog = now;
    log.warn({ dropped: droppedUnlogged, droppedTotal: counters.dropped, cap }, why);
    droppedUnlogged = 0;
  }

  /** Drops the oldest buffered rows beyond 2 x historyMaxBuffered. */
  function trimToCap(): void {
    const excess = buffer.length + inFlight - cap;
    if (excess <= 0) return;
    const n = Math.min(excess, buffer.length);
    buffer.splice(0, n);
    noteDropped(n, "location history buffer full: oldest rows dropped");
  }

  async function doFlush(): Promise<void> {
    kickQueued = false;
    const done = nextFlush;
    nextFlush = undefined;
    if (buffer.length === 0) {
      done?.resolve();
      return;
    }
    const rows = buffer;
    buffer = [];
    inFlight = rows.length;
    try {
      await insertCreatingPartitions(rows);
      counters.written += rows.length;
      counters.flushes++;
      consecutiveFailures = 0;
    } catch (err) {
      counters.failures++;
      consecutiveFailures++;
      // Keep the rows, oldest first, for the next attempt; the cap bounds memory during an outage.
      buffer = rows.concat(buffer);
      inFlight = 0;
      trimToCap();
      log.warn({ err, rows: rows.length, buffered: buffer.length, retryInMs: backoffMs() }, "location history flush failed; rows kept for retry");
      throw err;
    } finally {
      inFlight = 0;
      // Waiters are released after every attempt, failed or not: during an outage ingestion then
      // proceeds at one batch per backoff interval, with memory bounded by the cap.
      done?.resolve();
      if (nextFlush && buffer.length >= mark) kick();
    }
  }

  function flushSerial(): Promise<void> {
    const p = chain.then(doFlush);
    chain = p.catch(() => {});
    return p;
  }

  /** Flushes as soon as the running flush is done, unless failures put us in backoff (the timer retries). */
  function kick(): void {
    if (kickQueued) return;
    if (consecutiveFailures > 0 && started && !stopped) return;
    kickQueued = true;
    flushSerial().catch(() => {});
  }

  function backoffMs(): number {
    if (consecutiveFailures === 0) return config.historyFlushMs;
    return Math.min(config.historyFlushMs * 2 ** Math.min(consecutiveFailures, 16), MAX_BACKOFF_MS);
  }

  function sweepIdle(now: number): void {
    if (now - lastSweep < IDLE_SWEEP_MS) return;
    lastSweep = now;
    for (const [driverId, s] of lastKept) if (now - s.seen >= idleMs) lastKept.delete(driverId);
  }

  function schedule(): void {
    if (stopped || !started) return;
    flushTimer = setTimeout(tick, backoffMs());
    flushTimer.unref();
  }

  async function tick(): Promise<void> {
    flushTimer = undefined;
    try {
      await flushSerial();
    } catch {
      // logged in doFlush
    }
    sweepIdle(Date.now());
    schedule();
  }

  return {
    async append(fixes) {
      const now = Date.now();
      for (const f of fixes) {
        // Ingestion validates fixes; a row Postgres would refuse must still never wedge the batch.
        if (!Number.isFinite(f.deviceTimeMs) || !Number.isFinite(f.receivedAtMs) || !Number.isFinite(f.lat) || !Number.isFinite(f.lng)) {
          noteDropped(1, "location history: fix with a non-finite time or position dropped");
          continue;
        }
        if (interval > 0) {
          const last = lastKept.get(f.driverId);
          if (last) {
            last.seen = now;
            if (f.deviceTimeMs < last.t + interval) {
              counters.downsampled++;
              continue;
            }
            last.t = f.deviceTimeMs;
          } else {
            lastKept.set(f.driverId, { t: f.deviceTimeMs, seen: now });
          }
        }
        buffer.push(f);
      }
      trimToCap();
      if (buffer.length + inFlight < mark) return;
      const wait = (nextFlush ??= deferred()).promise;
      kick();
      await wait;
    },

    flush: flushSerial,

    start() {
      if (started) return;
      started = true;
      stopped = false;
      schedule();
      void runMaintenance();
      maintenanceTimer = setInterval(() => void runMaintenance(), MAINTENANCE_MS);
      maintenanceTimer.unref();
    },

    async stop() {
      stopped = true;
      started = false;
      clearTimeout(flushTimer);
      clearInterval(maintenanceTimer);
      flushTimer = maintenanceTimer = undefined;
      await maintenance;
      try {
        await flushSerial();
      } catch (err) {
        log.error({ err, lost: buffer.length }, "location history: final flush failed; buffered rows are lost");
      }
    },

    async trail(driverId, fromMs, toMs, limit) {
      if (limit <= 0 || !(fromMs < toMs)) return [];
      const rows = await k
        .selectFrom("location_history")
        .selectAll()
        .where("driver_id", "=", driverId)
        .where("recorded_at", ">=", new Date(fromMs))
        .where("recorded_at", "<", new Date(toMs))
        .orderBy("recorded_at")
        .orderBy("received_at")
        .limit(limit)
        .execute();
      return rows.map((r) => ({
        driverId: r.driver_id,
        city: cityAt(config.cities, r.lat, r.lng)?.name ?? "",
        lat: r.lat,
        lng: r.lng,
        accuracyM: r.accuracy_m,
        speedMps: r.speed_mps,
        headingDeg: r.heading_deg,
        deviceTimeMs: r.recorded_at.getTime(),
        receivedAtMs: r.received_at.getTime(),
        // Not stored: sequence numbers are per stream and mean nothing in a trail.
        sequence: 0n,
      }));
    },

    ensurePartitions,
    enforceRetention,

    stats: () => ({ ...counters }),
  };
}
