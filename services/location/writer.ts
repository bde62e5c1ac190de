import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { DriverPositionSchema } from "../../gen/dabba/location/v1/location_pb.js";
import type { LocationConfig } from "../platform/config.js";
import type { Logger } from "../platform/logger.js";
import type { BatchOp, RedisPorts } from "../platform/redis.js";
import { encodePosition, trackingChannel } from "../tracking/channel.js";
import { cityGeoKey, driverFixKey, fixHashFields } from "./keys.js";
import type { AcceptedFix, ActiveOrders, HistorySink } from "./types.js";

/** Collects accepted fixes from every stream and writes them to Redis once per tick. */
export interface TickWriter {
  /**
   * Queues fixes (in device-time order per driver) for the next tick. Resolves once that
   * tick's Redis batch and history append are done (or failed and were logged): a stream
   * awaits this before reading its next message, which is the backpressure.
   */
  submit(fixes: readonly AcceptedFix[]): Promise<void>;
  /** The city whose geo set holds the driver as far as this process knows (after a reconnect, from its fix hash). */
  seedCity(driverId: string, city: string): void;
  /** Forgets a driver that stopped streaming to this process (bounds the city map). */
  forget(driverId: string): void;
  readonly stats: WriterStats;
  start(): void;
  /** Writes what is queued and stops; later submits resolve at once without writing. */
  stop(): Promise<void>;
}

export interface WriterStats {
  /** Batches written to Redis. */
  batches: number;
  /** Batches Redis failed (their fixes were lost from live state; history and geofences still saw them). */
  failedBatches: number;
  /** Fixes in failed batches. */
  lostFixes: number;
  /** Fixes written (all of them, before per-driver coalescing). */
  fixes: number;
}

interface Tick {
  fixes: AcceptedFix[];
  /** Newest fix per driver in this tick (Redis only needs the latest state). */
  latest: Map<string, AcceptedFix>;
  done: Promise<void>;
  resolve: () => void;
}

const FAILURE_LOG_INTERVAL_MS = 5000;

export function createTickWriter(opts: {
  redis: RedisPorts;
  config: LocationConfig;
  logger: Logger;
  history: HistorySink;
  activeOrders: ActiveOrders;
}): TickWriter {
  const { redis, config, logger, history, activeOrders } = opts;
  const stats: WriterStats = { batches: 0, failedBatches: 0, lostFixes: 0, fixes: 0 };
  /** Last city each driver was written under, to move a driver out of the previous city's geo set. */
  const cityOf = new Map<string, string>();
  let current: Tick | undefined;
  let timer: NodeJS.Timeout | undefined;
  let inFlight: Promise<void> | undefined;
  let flushWhenDone = false;
  let stopped = false;
  let failuresSinceLog = 0;
  let lastFailureLogAt = 0;

  const newTick = (): Tick => {
    let resolve!: () => void;
    const done = new Promise<void>((r) => (resolve = r));
    return { fixes: [], latest: new Map(), done, resolve };
  };

  const schedule = () => {
    if (timer || stopped) return;
    timer = setTimeout(onTimer, config.tickMs);
  };

  function onTimer(): void {
    timer = undefined;
    if (inFlight) {
      // One batch in flight at a time; this tick goes as soon as the previous one is written.
      flushWhenDone = true;
      return;
    }
    flush();
  }

  function flush(): void {
    const tick = current;
    current = undefined;
    if (!tick) return;
    inFlight = write(tick).finally(() => {
      tick.resolve();
      inFlight = undefined;
      if (flushWhenDone || (stopped && current)) {
        flushWhenDone = false;
        flush();
      }
    });
  }

  function buildOps(tick: Tick): BatchOp[] {
    const ops: BatchOp[] = [];
    const removals = new Map<string, string[]>();
    const fixes: BatchOp[] = [];
    const publishes: BatchOp[] = [];
    const ttlMs = config.fixTtlMs;
    for (const f of tick.latest.values()) {
      const id = f.driverId;
      const prevCity = cityOf.get(id);
      if (prevCity !== undefined && prevCity !== f.city) {
        let rm = removals.get(prevCity);
        if (!rm) removals.set(prevCity, (rm = []));
        rm.push(id);
      }
      cityOf.set(id, f.city);
      // Written only if newer than what the hash holds: another process streaming the same
      // driver (a reconnect that landed elsewhere) may have written a newer fix meanwhile.
      fixes.push({
        op: "fix",
        key: driverFixKey(id),
        fields: fixHashFields(f),
        ttlMs,
        orderField: "at",
        geoKey: cityGeoKey(f.city),
        member: id,
        lng: f.lng,
        lat: f.lat,
      });
      // The newest fix of each driver goes to every order it carries: one encoding, at most
      // dispatch.stackSize publishes per driver and tick.
      const carried = activeOrders.get(id);
      if (carried.length > 0) {
        const data = encodePosition(
          create(DriverPositionSchema, {
            driverId: id,
            location: { lat: f.lat, lng: f.lng },
            headingDeg: f.headingDeg,
            speedMps: f.speedMps,
            accuracyM: f.accuracyM,
            at: timestampFromMs(f.deviceTimeMs),
          }),
        );
        for (const a of carried) publishes.push({ op: "publish", channel: trackingChannel(a.orderId), data });
      }
    }
    for (const [city, members] of removals) ops.push({ op: "georemove", key: cityGeoKey(city), members });
    for (const op of fixes) ops.push(op);
    // Positions go out after the state they describe is readable.
    for (const op of publishes) ops.push(op);
    return ops;
  }

  async function write(tick: Tick): Promise<void> {
    // Geofences first: they only queue work, and see fixes in order even if Redis is down.
    try {
      activeOrders.observe(tick.fixes);
    } catch (err) {
      logger.error({ err }, "geofence observer failed");
    }
    let ops: BatchOp[];
    try {
      ops = buildOps(tick);
    } catch (err) {
      logger.error({ err }, "building the location batch failed");
      ops = [];
    }
    const redisDone = redis.batch(ops).then(
      () => {
        stats.batches++;
        stats.fixes += tick.fixes.length;
      },
      (err: unknown) => {
        stats.failedBatches++;
        stats.lostFixes += tick.fixes.length;
        // The live positions of this tick are lost (the next ping of each driver rewrites
        // them); the streams go on. Logged at most every few seconds, with a count.
        failuresSinceLog++;
        const now = Date.now();
        if (now - lastFailureLogAt >= FAILURE_LOG_INTERVAL_MS) {
          logger.warn({ err, failedBatches: failuresSinceLog, lostFixesTotal: stats.lostFixes }, "location batch to Redis failed");
          lastFailureLogAt = now;
          failuresSinceLog = 0;
        }
      },
    );
    const historyDone = history.append(tick.fixes).catch((err: unknown) => {
      logger.error({ err }, "location history append failed");
    });
    await Promise.all([redisDone, historyDone]);
  }

  return {
    stats,
    submit(fixes) {
      if (stopped || fixes.length === 0) return Promise.resolve();
      const tick = (current ??= newTick());
      for (const f of fixes) {
        tick.fixes.push(f);
        // Within a driver, later fixes are newer (validation guarantees it).
        tick.latest.set(f.driverId, f);
      }
      schedule();
      return tick.done;
    },
    seedCity(driverId, city) {
      if (!cityOf.has(driverId)) cityOf.set(driverId, city);
    },
    forget(driverId) {
      cityOf.delete(driverId);
    },
    start() {
      stopped = false;
    },
    async stop() {
      stopped = true;
      clearTimeout(timer);
      timer = undefined;
      if (!inFlight) flush();
      while (inFlight) await inFlight;
    },
  };
}
