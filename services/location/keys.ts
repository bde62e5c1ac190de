import type { AcceptedFix } from "./types.js";

/**
 * Redis names owned by the location service. Every process of every service that reads them
 * goes through these functions, so a key's shape lives in one place.
 */

/** Sorted set (Redis GEO) of the drivers whose latest fix lies in the city. */
export function cityGeoKey(city: string): string {
  return `geo:drivers:${city}`;
}

/**
 * Hash of a driver's last accepted fix, with a TTL (LocationConfig.fixTtlMs): lat, lng, acc,
 * speed, heading, at (device time, ms), seq, city, recv (server receive time, ms).
 * A driver whose hash expired is treated as offline by matching even if still in a geo set.
 */
export function driverFixKey(driverId: string): string {
  return `driver-fix:${driverId}`;
}

/** A driver's last fix as read back from driverFixKey. */
export interface StoredFix {
  lat: number;
  lng: number;
  accuracyM: number;
  speedMps: number;
  headingDeg: number;
  /** Device time, epoch ms. */
  atMs: number;
  /** Configured city the fix was indexed under ("" if absent). */
  city: string;
}

/** The fields of driverFixKey for an accepted fix: the one writer of the hash's shape. */
export function fixHashFields(f: AcceptedFix): Record<string, string> {
  return {
    lat: String(f.lat),
    lng: String(f.lng),
    acc: String(f.accuracyM),
    speed: String(f.speedMps),
    heading: String(f.headingDeg),
    at: String(f.deviceTimeMs),
    seq: String(f.sequence),
    city: f.city,
    recv: String(f.receivedAtMs),
  };
}

/** Reads a driverFixKey hash; undefined when it is missing (expired) or lacks a usable position and time. */
export function readFixHash(h: Record<string, string>): StoredFix | undefined {
  if (h.lat === undefined || h.lng === undefined || h.at === undefined) return undefined;
  const lat = Number(h.lat);
  const lng = Number(h.lng);
  const atMs = Number(h.at);
  if (!Number.isFinite(lat) || !Number.isFinite(lng) || !Number.isFinite(atMs)) return undefined;
  return {
    lat,
    lng,
    atMs,
    accuracyM: Number(h.acc) || 0,
    speedMps: Number(h.speed) || 0,
    headingDeg: Number(h.heading) || 0,
    city: h.city ?? "",
  };
}

/**
 * Hash of the orders a driver is carrying (written from order events by the location service's
 * consumer group; several when dispatch stacks orders): per order, "o:<orderId>" (the order's
 * customer, restaurant, status, pickup and drop-off, JSON) and "f:<orderId>" (its geofence
 * state). The layout is private to services/location/active-orders.ts. Missing when the driver
 * carries nothing.
 */
export function driverActiveKey(driverId: string): string {
  return `driver-active:${driverId}`;
}

/** Broadcast channel: a driver's active orders changed (payload: the driver id, UTF-8). Every location process listens. */
export const DRIVER_ACTIVE_CHANNEL = "location:driver-active";

/** Counter of pings rejected as suspected spoofing (impossible speed) for a driver. */
export function spoofCountKey(driverId: string): string {
  return `spoof-suspect:${driverId}`;
}

/** Event-log stream for geofence crossings (dabba.events.v1.Event with the geofence payload). */
export const LOCATION_EVENTS_STREAM = "events:location";

/**
 * Hash of a driver's public profile as customers see it while tracking: name, vehicle (a short
 * description such as "red scooter"). Written by dispatch; missing fields read as empty.
 */
export function driverProfileKey(driverId: string): string {
  return `driver-profile:${driverId}`;
}
