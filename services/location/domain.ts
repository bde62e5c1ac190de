import { cityAt, type LocationConfig } from "../platform/config.js";
import { haversineKm } from "../platform/redis.js";
import type { AcceptedFix } from "./types.js";

/**
 * GPS ping validation: pure rules, no I/O. The ingestion layer (ingest.ts) keeps the state these
 * rules read and advance (a driver's last accepted fix and token bucket, a stream's last
 * sequence number); the handler counts the reasons.
 */

/**
 * Why a ping was dropped. These strings are the keys of ReportLocationsResponse.rejected_by_reason.
 * Listed in the order the checks run: a ping failing several is counted under the first.
 */
export const REJECT_REASONS = [
  "missing_field",
  "invalid_coordinates",
  "invalid_value",
  "low_accuracy",
  "too_far_in_future",
  "too_old",
  "duplicate_sequence",
  "out_of_order",
  "outside_service_area",
  "impossible_speed",
  "rate_limited",
  "batch_too_large",
] as const;
export type RejectReason = (typeof REJECT_REASONS)[number];

/** Index of each reason in REJECT_REASONS, for array-backed counters. */
export const REASON_INDEX: Readonly<Record<RejectReason, number>> = Object.freeze(
  Object.fromEntries(REJECT_REASONS.map((r, i) => [r, i])) as Record<RejectReason, number>,
);

/** The shape of a location.v1.Ping the rules read (the generated message satisfies it). */
export interface PingLike {
  location?: { lat: number; lng: number };
  accuracyM: number;
  speedMps: number;
  headingDeg: number;
  deviceTime?: { seconds: bigint; nanos: number };
  sequence: bigint;
}

/** The last accepted fix of a driver, as far as the rules need it. */
export interface LastFix {
  lat: number;
  lng: number;
  accuracyM: number;
  deviceTimeMs: number;
  city: string;
}

/** Token bucket: refills at maxPingsPerSecond up to pingBurst tokens. */
export interface TokenBucket {
  tokens: number;
  updatedAtMs: number;
}

/** Per-driver state shared by all of the driver's streams in one process. */
export interface DriverTrack {
  driverId: string;
  last: LastFix | undefined;
  bucket: TokenBucket;
}

/** Per-stream state. */
export interface StreamTrack {
  driver: DriverTrack;
  /** Highest sequence number seen on this stream (any well-formed ping), undefined before the first. */
  lastSequence: bigint | undefined;
}

export function newDriverTrack(driverId: string, nowMs: number, cfg: Pick<LocationConfig, "pingBurst">): DriverTrack {
  return { driverId, last: undefined, bucket: { tokens: cfg.pingBurst, updatedAtMs: nowMs } };
}

/** Takes one token when available (refilling first); false when the bucket is empty. */
export function takeToken(b: TokenBucket, nowMs: number, cfg: Pick<LocationConfig, "maxPingsPerSecond" | "pingBurst">): boolean {
  const elapsed = nowMs - b.updatedAtMs;
  if (elapsed > 0) {
    b.tokens = Math.min(cfg.pingBurst, b.tokens + (elapsed * cfg.maxPingsPerSecond) / 1000);
    b.updatedAtMs = nowMs;
  }
  if (b.tokens < 1) return false;
  b.tokens -= 1;
  return true;
}

/** Milliseconds an untouched bucket takes to refill completely: after that a fresh bucket is the same. */
export function bucketRefillMs(cfg: Pick<LocationConfig, "maxPingsPerSecond" | "pingBurst">): number {
  return Math.ceil((cfg.pingBurst / cfg.maxPingsPerSecond) * 1000);
}

/** Device time of a ping in epoch ms; NaN for nanos out of range. */
export function timestampMs(t: { seconds: bigint; nanos: number }): number {
  if (!(t.nanos >= 0 && t.nanos <= 999_999_999)) return NaN;
  return Number(t.seconds) * 1000 + Math.floor(t.nanos / 1_000_000);
}

/**
 * Speed implied by moving from a to b, in m/s, giving GPS the benefit of the doubt: both
 * accuracy radii are subtracted from the distance, so jitter between close, imprecise fixes
 * never looks like a teleport. dtMs must be > 0.
 */
export function impliedSpeedMps(a: LastFix, b: { lat: number; lng: number; accuracyM: number }, dtMs: number): number {
  const distM = haversineKm(a.lng, a.lat, b.lng, b.lat) * 1000;
  const beyondNoise = distM - a.accuracyM - b.accuracyM;
  return beyondNoise <= 0 ? 0 : beyondNoise / (dtMs / 1000);
}

/**
 * Validates one ping of a stream. Accepted: returns the fix and advances the state (the
 * driver's last fix, its token bucket, the stream's sequence). Rejected: returns the reason;
 * only the stream's last sequence may advance (a well-formed ping's sequence counts as seen,
 * so a resent copy of a dropped ping is a duplicate too).
 */
export function validatePing(
  stream: StreamTrack,
  ping: PingLike,
  nowMs: number,
  cfg: LocationConfig,
): AcceptedFix | RejectReason {
  const loc = ping.location;
  const dt = ping.deviceTime;
  if (loc === undefined || dt === undefined) return "missing_field";
  const lat = loc.lat;
  const lng = loc.lng;
  if (!(lat >= -90 && lat <= 90 && lng >= -180 && lng <= 180)) return "invalid_coordinates"; // NaN fails every comparison
  const acc = ping.accuracyM;
  const speed = ping.speedMps;
  const heading = ping.headingDeg;
  if (!(acc >= 0 && acc < Infinity && speed >= 0 && speed < Infinity && heading >= 0 && heading < 360)) return "invalid_value";
  const t = timestampMs(dt);
  if (!Number.isFinite(t)) return "invalid_value";
  if (acc > cfg.maxAccuracyM) return "low_accuracy";
  if (t > nowMs + cfg.maxFutureMs) return "too_far_in_future";
  if (t < nowMs - cfg.maxPastMs) return "too_old";
  const seq = ping.sequence;
  if (stream.lastSequence !== undefined && seq <= stream.lastSequence) return "duplicate_sequence";
  stream.lastSequence = seq;
  const driver = stream.driver;
  const last = driver.last;
  if (last !== undefined && t <= last.deviceTimeMs) return "out_of_order";
  const city = cityAt(cfg.cities, lat, lng);
  if (city === undefined) return "outside_service_area";
  if (last !== undefined && impliedSpeedMps(last, { lat, lng, accuracyM: acc }, t - last.deviceTimeMs) > cfg.maxSpeedMps) {
    return "impossible_speed";
  }
  if (!takeToken(driver.bucket, nowMs, cfg)) return "rate_limited";
  driver.last = { lat, lng, accuracyM: acc, deviceTimeMs: t, city: city.name };
  return {
    driverId: driver.driverId,
    city: city.name,
    lat,
    lng,
    accuracyM: acc,
    speedMps: speed,
    headingDeg: heading,
    deviceTimeMs: t,
    receivedAtMs: nowMs,
    sequence: seq,
  };
}

/** Per-stream counters of accepted and rejected pings, array-backed (no allocation per ping). */
export class PingCounts {
  accepted = 0;
  rejected = 0;
  readonly byReason = new Array<number>(REJECT_REASONS.length).fill(0);

  reject(reason: RejectReason, n = 1): void {
    this.rejected += n;
    this.byReason[REASON_INDEX[reason]]! += n;
  }

  /** The reasons with a non-zero count, as in ReportLocationsResponse.rejected_by_reason. */
  reasons(): Record<string, bigint> {
    const out: Record<string, bigint> = {};
    for (let i = 0; i < REJECT_REASONS.length; i++) if (this.byReason[i]! > 0) out[REJECT_REASONS[i]!] = BigInt(this.byReason[i]!);
    return out;
  }
}
