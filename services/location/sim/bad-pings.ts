/**
 * Bad GPS fixes, each with the reason ReportLocations must reject it under (the keys of
 * ReportLocationsResponse.rejected_by_reason). Every bad ping is built from a driver's last good
 * fix and breaks exactly one rule, so the expected reason does not depend on the order the checks
 * run in. Pure and deterministic with a seed.
 */
import type { City, LocationConfig } from "../../platform/config.js";
import { cityAt } from "../../platform/config.js";
import { distanceM, timestampOf, timestampToMs, type SimDriver, type SimPing } from "./drivers.js";

/** The kinds of bad fix the generator makes. */
export const BAD_KINDS = [
  "teleport",
  "stale",
  "future",
  "out_of_order",
  "repeated_sequence",
  "nan_coordinates",
  "out_of_range_coordinates",
  "nan_accuracy",
  "negative_speed",
  "heading_out_of_range",
  "low_accuracy",
  "outside_city",
  "missing_location",
  "missing_time",
] as const;
export type BadKind = (typeof BAD_KINDS)[number];

/** The rejection reason each kind must get. */
export const EXPECTED_REASON: Readonly<Record<BadKind, string>> = Object.freeze({
  teleport: "impossible_speed",
  stale: "too_old",
  future: "too_far_in_future",
  out_of_order: "out_of_order",
  repeated_sequence: "duplicate_sequence",
  nan_coordinates: "invalid_coordinates",
  out_of_range_coordinates: "invalid_coordinates",
  nan_accuracy: "invalid_value",
  negative_speed: "invalid_value",
  heading_out_of_range: "invalid_value",
  low_accuracy: "low_accuracy",
  outside_city: "outside_service_area",
  missing_location: "missing_field",
  missing_time: "missing_field",
});

/** A ping as sent; location or device time may be missing in the missing_* cases. */
export interface BadPingInit {
  location?: { lat: number; lng: number };
  accuracyM: number;
  speedMps: number;
  headingDeg: number;
  deviceTime?: SimPing["deviceTime"];
  sequence: bigint;
}

export interface BadPing {
  kind: BadKind;
  reason: string;
  ping: BadPingInit;
}

export interface BadContext {
  /** The driver's last fix that was (or will be) accepted; the bad ping is built around it. */
  last: SimPing;
  /** Server time the ping will be judged at, epoch ms (device time of the bad ping is derived from it). */
  nowMs: number;
  cfg: Pick<LocationConfig, "cities" | "maxAccuracyM" | "maxFutureMs" | "maxPastMs" | "maxSpeedMps">;
  /** The stream's next unused sequence number (consumed by every kind except repeated_sequence). */
  nextSequence: () => bigint;
}

const M_PER_DEG_LAT = 111_320;

/** Moves a point by metres north and east. */
function offset(p: { lat: number; lng: number }, north: number, east: number): { lat: number; lng: number } {
  return { lat: p.lat + north / M_PER_DEG_LAT, lng: p.lng + east / (M_PER_DEG_LAT * Math.cos((p.lat * Math.PI) / 180)) };
}

/** Device time for a bad ping that must not trip the time rules: after the last fix, not in the future. */
function freshTimeMs(ctx: BadContext): number {
  const lastMs = Math.floor(timestampToMs(ctx.last.deviceTime));
  return Math.max(lastMs + 1, Math.floor(ctx.nowMs));
}

/**
 * A point in the same city at least `minM` away from p, as far as the city allows: the
 * corner of the city bounds (less 1 km) farthest from p.
 */
function farPointInCity(city: City, p: { lat: number; lng: number }): { lat: number; lng: number } {
  const b = city.bounds;
  const dLat = 1000 / M_PER_DEG_LAT;
  const dLng = 1000 / (M_PER_DEG_LAT * Math.cos((p.lat * Math.PI) / 180));
  const corners = [
    { lat: b.south + dLat, lng: b.west + dLng },
    { lat: b.south + dLat, lng: b.east - dLng },
    { lat: b.north - dLat, lng: b.west + dLng },
    { lat: b.north - dLat, lng: b.east - dLng },
  ];
  let best = corners[0]!;
  for (const c of corners) if (distanceM(p, c) > distanceM(p, best)) best = c;
  return best;
}

/** A point outside every configured city, near the edge of the city containing p (or far away if p is in none). */
function pointOutsideCities(cities: readonly City[], p: { lat: number; lng: number }): { lat: number; lng: number } {
  const city = cityAt(cities, p.lat, p.lng);
  const candidates: { lat: number; lng: number }[] = [];
  if (city) {
    const b = city.bounds;
    const d = 0.05; // ~5 km beyond the edge
    candidates.push({ lat: b.north + d, lng: p.lng }, { lat: b.south - d, lng: p.lng }, { lat: p.lat, lng: b.east + d }, { lat: p.lat, lng: b.west - d });
    candidates.sort((x, y) => distanceM(p, x) - distanceM(p, y));
  }
  candidates.push({ lat: 0.5, lng: -160.5 }, { lat: -45.5, lng: 10.5 }, { lat: 70.5, lng: 100.5 });
  for (const c of candidates) {
    if (c.lat >= -90 && c.lat <= 90 && c.lng >= -180 && c.lng <= 180 && !cityAt(cities, c.lat, c.lng)) return c;
  }
  throw new Error("bad pings: no point outside the configured cities");
}

/** Builds one bad ping of the given kind around the driver's last good fix. */
export function badPing(kind: BadKind, ctx: BadContext): BadPing {
  const last = ctx.last;
  const lastLoc = last.location;
  const lastMs = Math.floor(timestampToMs(last.deviceTime));
  const base = (): BadPingInit => ({
    location: { ...lastLoc },
    accuracyM: last.accuracyM,
    speedMps: last.speedMps,
    headingDeg: last.headingDeg,
    deviceTime: timestampOf(freshTimeMs(ctx)),
    sequence: 0n,
  });
  const p = base();
  switch (kind) {
    case "teleport": {
      // A jump across the city in at most a second: far beyond maxSpeedMps even after both accuracy radii.
      const city = cityAt(ctx.cfg.cities, lastLoc.lat, lastLoc.lng);
      if (!city) throw new Error("bad pings: the last fix is outside every configured city");
      const t = Math.min(freshTimeMs(ctx), lastMs + 1000);
      const to = farPointInCity(city, lastLoc);
      const dt = (t - lastMs) / 1000;
      const needed = ctx.cfg.maxSpeedMps * dt * 2 + last.accuracyM * 2 + 100;
      if (distanceM(lastLoc, to) < needed) throw new Error("bad pings: the city is too small for a teleport from here");
      p.location = to;
      p.deviceTime = timestampOf(t);
      break;
    }
    case "stale":
      p.deviceTime = timestampOf(ctx.nowMs - ctx.cfg.maxPastMs - 60_000);
      break;
    case "future":
      p.deviceTime = timestampOf(ctx.nowMs + ctx.cfg.maxFutureMs + 60_000);
      break;
    case "out_of_order":
      // An older fix (but within maxPastMs) at the same place: the phone resent something from its buffer.
      p.deviceTime = timestampOf(Math.max(lastMs - 2000, Math.floor(ctx.nowMs) - ctx.cfg.maxPastMs + 1000));
      if (timestampToMs(p.deviceTime) > lastMs) throw new Error("bad pings: no room for an out-of-order time");
      break;
    case "repeated_sequence":
      p.sequence = last.sequence;
      return { kind, reason: EXPECTED_REASON[kind], ping: p };
    case "nan_coordinates":
      p.location = { lat: Number.NaN, lng: lastLoc.lng };
      break;
    case "out_of_range_coordinates":
      p.location = { lat: lastLoc.lat, lng: 181.5 };
      break;
    case "nan_accuracy":
      p.accuracyM = Number.NaN;
      break;
    case "negative_speed":
      p.speedMps = -3;
      break;
    case "heading_out_of_range":
      p.headingDeg = 360;
      break;
    case "low_accuracy":
      p.accuracyM = ctx.cfg.maxAccuracyM + 50;
      break;
    case "outside_city":
      p.location = pointOutsideCities(ctx.cfg.cities, lastLoc);
      break;
    case "missing_location":
      delete p.location;
      break;
    case "missing_time":
      delete p.deviceTime;
      break;
  }
  p.sequence = ctx.nextSequence();
  return { kind, reason: EXPECTED_REASON[kind], ping: p };
}

/** One message worth of a mixed stream: a good fix, or a bad one with the reason it must be rejected for. */
export type MixedPing = { good: true; ping: SimPing } | ({ good: false } & BadPing);

/**
 * A driver's fixes with bad ones mixed in at `ratio` (0..1): good fixes come from the simulated
 * driver; each bad one is built around the driver's last good fix and takes the next sequence
 * number, so the good fixes after it are still accepted. The first fix is always good.
 */
export function mixBadPings(
  driver: SimDriver,
  opts: { ratio: number; seed: number; cfg: BadContext["cfg"]; kinds?: readonly BadKind[] },
): { next(nowMs: number): MixedPing } {
  if (!(opts.ratio >= 0 && opts.ratio <= 1)) throw new Error("mixBadPings: ratio must be within 0..1");
  const kinds = opts.kinds ?? BAD_KINDS;
  let a = opts.seed >>> 0;
  const rand = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  let last: SimPing | undefined;
  return {
    next(nowMs) {
      if (last === undefined || rand() >= opts.ratio) {
        last = driver.next(nowMs);
        return { good: true, ping: last };
      }
      const kind = kinds[Math.floor(rand() * kinds.length)]!;
      return { good: false, ...badPing(kind, { last, nowMs, cfg: opts.cfg, nextSequence: () => driver.takeSequence() }) };
    },
  };
}
