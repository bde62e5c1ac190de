/**
 * Dispatch's Redis keys and channels. Driver ids sit in a hash tag ({id}) so that, on Redis
 * Cluster, a driver's lock and state live on one slot.
 */

/** The offer lock: `SET offer:driver:{id} <order>:<token> NX PX <ttl>`; one open offer per driver. */
export function offerLockKey(driverId: string): string {
  return `offer:driver:{${driverId}}`;
}

/** The lock's value: which order and which offer (token) hold the driver. */
export function offerLockValue(orderId: string, token: number): string {
  return `${orderId}:${token}`;
}

/** The lock's value while an accept of that offer is being made (a compare-and-swap from offerLockValue). */
export function acceptingValue(orderId: string, token: number): string {
  return `${orderId}:${token}:accepting`;
}

/** The monotonic fencing-token counter (INCR). */
export const TOKEN_KEY = "dispatch:token";

/**
 * A driver's shift and counters (hash): online "1"/"0", city, vehicle, online_at, idle_since (ms),
 * offers, accepts, declines, expiries, no_shows.
 */
export function driverStateKey(driverId: string): string {
  return `dispatch:driver:{${driverId}}`;
}

/** Orders a driver carries (hash: order id -> JSON CarriedOrder); its size is the driver's load. */
export function carryingKey(driverId: string): string {
  return `dispatch:carrying:{${driverId}}`;
}

/** Channel of a driver's offer stream (encoded StreamOffersResponse messages). */
export function offerChannel(driverId: string): string {
  return `dispatch:offers:${driverId}`;
}

/** Consumer group of dispatch on the order events. */
export const DISPATCH_ORDERS_GROUP = "dispatch";
