/**
 * Travel time on a routing port. The default adapter is haversine distance with a detour
 * factor and time-of-day speeds; CachedRouting memoizes any adapter (a real router is an HTTP
 * call) by geohash pair and time bucket, bounded in size and age. Pure apart from the clock
 * the cache is given.
 */
import { haversineKm } from "../platform/redis.js";

export interface LatLng {
  lat: number;
  lng: number;
}

/** Seconds to drive from `from` to `to` when leaving at `atMs` (epoch ms). */
export interface RoutingPort {
  travelSeconds(from: LatLng, to: LatLng, atMs: number): number;
}

const BASE32 = "0123456789bcdefghjkmnpqrstuvwxyz";

/** Standard geohash of a point, `precision` characters (6 is a cell of about 1.2 x 0.6 km). */
export function geohash(lat: number, lng: number, precision = 6): string {
  let latLo = -90;
  let latHi = 90;
  let lngLo = -180;
  let lngHi = 180;
  let out = "";
  let bits = 0;
  let ch = 0;
  let even = true; // geohash interleaves bits starting with longitude
  while (out.length < precision) {
    if (even) {
      const mid = (lngLo + lngHi) / 2;
      if (lng >= mid) {
        ch = (ch << 1) | 1;
        lngLo = mid;
      } else {
        ch <<= 1;
        lngHi = mid;
      }
    } else {
      const mid = (latLo + latHi) / 2;
      if (lat >= mid) {
        ch = (ch << 1) | 1;
        latLo = mid;
      } else {
        ch <<= 1;
        latHi = mid;
      }
    }
    even = !even;
    if (++bits === 5) {
      out += BASE32[ch];
      bits = 0;
      ch = 0;
    }
  }
  return out;
}

/** Speed in [fromHour, toHour) local time; hours may be fractional (19.5 = 19:30). */
export interface SpeedBand {
  fromHour: number;
  toHour: number;
  kmh: number;
}

export interface HaversineRoutingConfig {
  /** Road distance / straight-line distance. */
  detourFactor: number;
  /** Speed outside every band. */
  baseKmh: number;
  /** Slower bands (lunch and dinner traffic); the first band containing the hour wins. */
  bands: readonly SpeedBand[];
  /** The city's offset from UTC, so bands are in local time. */
  utcOffsetMinutes: number;
}

export const DEFAULT_HAVERSINE_ROUTING: Readonly<HaversineRoutingConfig> = Object.freeze({
  detourFactor: 1.35,
  baseKmh: 22,
  bands: Object.freeze([
    { fromHour: 8, toHour: 10, kmh: 17 },
    { fromHour: 12, toHour: 14, kmh: 17 },
    { fromHour: 17.5, toHour: 21, kmh: 15 },
  ]),
  utcOffsetMinutes: 0,
});

/** Driving speed at an instant under `cfg`. */
export function speedKmhAt(cfg: HaversineRoutingConfig, atMs: number): number {
  const dayMs = 86_400_000;
  const local = (((atMs + cfg.utcOffsetMinutes * 60_000) % dayMs) + dayMs) % dayMs;
  const hour = local / 3_600_000;
  for (const b of cfg.bands) if (hour >= b.fromHour && hour < b.toHour) return b.kmh;
  return cfg.baseKmh;
}

/** The default adapter: straight-line km x detour factor at the time-of-day speed. */
export function haversineRouting(cfg: HaversineRoutingConfig = DEFAULT_HAVERSINE_ROUTING): RoutingPort {
  if (!(cfg.detourFactor >= 1)) throw new RangeError("detourFactor must be >= 1");
  if (!(cfg.baseKmh > 0) || cfg.bands.some((b) => !(b.kmh > 0))) throw new RangeError("speeds must be > 0");
  return {
    travelSeconds(from, to, atMs) {
      const km = haversineKm(from.lng, from.lat, to.lng, to.lat);
      return ((km * cfg.detourFactor) / speedKmhAt(cfg, atMs)) * 3600;
    },
  };
}

export interface RouteCacheConfig {
  geohashPrecision: number;
  bucketMs: number;
  ttlMs: number;
  maxEntries: number;
}

export const DEFAULT_ROUTE_CACHE: Readonly<RouteCacheConfig> = Object.freeze({
  geohashPrecision: 6,
  bucketMs: 15 * 60_000,
  ttlMs: 30 * 60_000,
  maxEntries: 50_000,
});

/** Below this straight-line distance a per-km rate is meaningless; such legs go to the adapter. */
const MIN_CACHE_KM = 0.05;

interface Entry {
  secondsPerKm: number;
  storedAtMs: number;
}

/**
 * Caches an adapter's answer per (geohash(from), geohash(to), time bucket) as seconds per
 * straight-line km, and answers a hit with that rate x this leg's own haversine distance.
 * Caching the seconds themselves would freeze a moving driver's ETA until they left a
 * ~1 km cell and make two customers in one cell share one number; the rate keeps the detour
 * and speed the adapter saw for that pair and bucket while the distance stays exact.
 * Least-recently-used eviction past maxEntries; entries older than ttlMs are misses.
 */
export class CachedRouting implements RoutingPort {
  readonly stats = { hits: 0, misses: 0, evictions: 0, expired: 0 };
  private readonly entries = new Map<string, Entry>();

  constructor(
    private readonly inner: RoutingPort,
    private readonly cfg: RouteCacheConfig = DEFAULT_ROUTE_CACHE,
    private readonly nowMs: () => number = Date.now,
  ) {
    if (!(cfg.maxEntries >= 1) || !(cfg.bucketMs > 0) || !(cfg.ttlMs > 0)) throw new RangeError("invalid route cache config");
  }

  get size(): number {
    return this.entries.size;
  }

  key(from: LatLng, to: LatLng, atMs: number): string {
    const p = this.cfg.geohashPrecision;
    return `${geohash(from.lat, from.lng, p)}:${geohash(to.lat, to.lng, p)}:${Math.floor(atMs / this.cfg.bucketMs)}`;
  }

  travelSeconds(from: LatLng, to: LatLng, atMs: number): number {
    const km = haversineKm(from.lng, from.lat, to.lng, to.lat);
    if (km < MIN_CACHE_KM) return this.inner.travelSeconds(from, to, atMs);
    const k = this.key(from, to, atMs);
    const now = this.nowMs();
    const hit = this.entries.get(k);
    if (hit) {
      this.entries.delete(k);
      if (now - hit.storedAtMs <= this.cfg.ttlMs) {
        this.entries.set(k, hit); // re-insert: Map order is the recency order
        this.stats.hits++;
        return hit.secondsPerKm * km;
      }
      this.stats.expired++;
    }
    this.stats.misses++;
    const seconds = this.inner.travelSeconds(from, to, atMs);
    this.entries.set(k, { secondsPerKm: seconds / km, storedAtMs: now });
    while (this.entries.size > this.cfg.maxEntries) {
      const oldest = this.entries.keys().next().value as string;
      this.entries.delete(oldest);
      this.stats.evictions++;
    }
    return seconds;
  }
}
