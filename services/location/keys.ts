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

/**
 * Hash of the order a driver is carrying (written from order events by the location service's
 * consumer group): orderId, customerId, restaurantId, status, pickupLat, pickupLng, dropLat,
 * dropLng, plus the geofence state. Missing when the driver has no active order.
 */
export function driverActiveKey(driverId: string): string {
  return `driver-active:${driverId}`;
}

/** Broadcast channel: a driver's active order changed (payload: the driver id, UTF-8). Every location process listens. */
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
