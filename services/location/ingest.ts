import type { LocationConfig } from "../platform/config.js";
import type { Logger } from "../platform/logger.js";
import type { RedisPorts } from "../platform/redis.js";
import { bucketRefillMs, newDriverTrack, type DriverTrack, type LastFix, type StreamTrack } from "./domain.js";
import { driverFixKey, readFixHash, spoofCountKey } from "./keys.js";
import type { ActiveOrders } from "./types.js";
import type { TickWriter } from "./writer.js";

/**
 * Per-driver in-process ingestion state: the last accepted fix and the token bucket, shared by
 * all of a driver's streams to this process. A driver's state is kept while it streams and for
 * as long as its bucket takes to refill after its last stream ends (after that a fresh state
 * is equivalent: a full bucket, and the last fix is read back from Redis), so memory follows
 * the number of connected drivers.
 */
export interface Ingest {
  /** A stream of driverId starts: attach its active order, load its last fix (so a reconnect cannot go back in time). */
  open(driverId: string): Promise<StreamTrack>;
  /** The stream ended (idempotent per stream). */
  close(stream: StreamTrack): void;
  /** Counts a suspected spoof against the driver (INCR, in the background). */
  suspectSpoof(driverId: string): void;
  /** Drivers with state in this process (streaming or recently streamed). */
  size(): number;
  start(): void;
  stop(): void;
}

interface Entry {
  track: DriverTrack;
  streams: number;
  idleSinceMs: number;
}

const SWEEP_MIN_MS = 1000;

export function createIngest(opts: {
  redis: RedisPorts;
  config: LocationConfig;
  logger: Logger;
  activeOrders: ActiveOrders;
  writer: TickWriter;
}): Ingest {
  const { redis, config, logger, activeOrders, writer } = opts;
  const entries = new Map<string, Entry>();
  const closed = new WeakSet<StreamTrack>();
  const keepIdleMs = bucketRefillMs(config);
  let sweeper: NodeJS.Timeout | undefined;

  function sweep(): void {
    const now = Date.now();
    for (const [id, e] of entries) {
      if (e.streams === 0 && now - e.idleSinceMs >= keepIdleMs) {
        entries.delete(id);
        writer.forget(id);
      }
    }
  }

  function close(stream: StreamTrack): void {
    if (closed.has(stream)) return;
    closed.add(stream);
    const id = stream.driver.driverId;
    const e = entries.get(id);
    if (!e || e.track !== stream.driver) return;
    e.streams--;
    if (e.streams === 0) {
      e.idleSinceMs = Date.now();
      activeOrders.detach(id);
    }
  }

  async function loadLastFix(driverId: string): Promise<LastFix | undefined> {
    try {
      const h = await redis.kv.hgetall(driverFixKey(driverId));
      const fix = parseLastFix(h);
      return fix;
    } catch (err) {
      // Without Redis the in-process state (if any) still guards this process; go on.
      logger.warn({ err, driverId }, "could not load the driver's last fix");
      return undefined;
    }
  }

  return {
    async open(driverId) {
      let e = entries.get(driverId);
      if (!e) {
        e = { track: newDriverTrack(driverId, Date.now(), config), streams: 0, idleSinceMs: 0 };
        entries.set(driverId, e);
      }
      e.streams++;
      const entry = e;
      const stream: StreamTrack = { driver: entry.track, lastSequence: undefined };
      try {
        const [stored] = await Promise.all([
          loadLastFix(driverId),
          activeOrders.attach(driverId).catch((err: unknown) => {
            logger.warn({ err, driverId }, "could not attach the driver's active order");
          }),
        ]);
        const mine = entry.track.last;
        if (stored && (!mine || stored.deviceTimeMs > mine.deviceTimeMs)) {
          entry.track.last = stored;
          writer.seedCity(driverId, stored.city);
        }
      } catch (err) {
        close(stream);
        throw err;
      }
      return stream;
    },
    close,
    suspectSpoof(driverId) {
      redis.kv.incr(spoofCountKey(driverId)).catch((err: unknown) => {
        logger.warn({ err, driverId }, "could not count a suspected spoof");
      });
    },
    size: () => entries.size,
    start() {
      sweeper ??= setInterval(sweep, Math.max(SWEEP_MIN_MS, Math.min(keepIdleMs, 30_000)));
      sweeper.unref();
    },
    stop() {
      clearInterval(sweeper);
      sweeper = undefined;
    },
  };
}

/** The rules' view of a driver-fix hash; undefined when missing or malformed. */
export function parseLastFix(h: Record<string, string>): LastFix | undefined {
  const f = readFixHash(h);
  if (!f || h.city === undefined) return undefined;
  return { lat: f.lat, lng: f.lng, accuracyM: f.accuracyM, deviceTimeMs: f.atMs, city: f.city };
}
