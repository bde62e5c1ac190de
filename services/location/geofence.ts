import { GeofenceKind } from "../../gen/dabba/events/v1/events_pb.js";
import type { GeofenceConfig } from "../platform/config.js";
import { haversineKm } from "../platform/redis.js";

/**
 * Geofences of one assignment (driver, order): pure state, no I/O. Fed with the driver's fixes
 * in device-time order; returns the crossings to emit.
 *
 * Three circular fences: the restaurant (pickup) and two around the customer (approach, arrive).
 * Each has an enter radius and a larger exit radius (hysteresis): a fix is "inside" only when
 * distance + accuracy <= enter radius, "outside" only when distance - accuracy >= exit radius,
 * and decides nothing in between or when its accuracy exceeds the enter radius. A side change
 * counts only after the fixes have stayed on the new side for dwellMs (a fix back on the
 * confirmed side resets the wait).
 *
 * Events are derived from the confirmed sides and the order status, each at most once per
 * assignment:
 * - ARRIVED_RESTAURANT: restaurant fence inside while the food is not yet picked up.
 * - LEFT_RESTAURANT: restaurant fence outside once the order is PICKED_UP (or EN_ROUTE), whether
 *   it went out from inside or was first confirmed outside after pickup. Leaving before pickup
 *   is not the event: it would use up the once-per-assignment crossing, and the real departure
 *   with the food, which moves the order to EN_ROUTE, would never be reported.
 * - APPROACHING_CUSTOMER / ARRIVED_CUSTOMER: approach / arrive fence inside after pickup.
 *   Arriving implies approaching; if both are confirmed by the same fix, APPROACHING comes first.
 */

/** Side of a fence: not yet known, inside, outside. */
export const UNKNOWN = 0;
export const INSIDE = 1;
export const OUTSIDE = 2;
export type Side = typeof UNKNOWN | typeof INSIDE | typeof OUTSIDE;

export interface FenceState {
  /** Confirmed side. */
  side: Side;
  /** Side the recent fixes are on, waiting for the dwell to pass (UNKNOWN when none). */
  pending: Side;
  /** Device time of the first fix on the pending side. */
  pendingSinceMs: number;
}

export interface GeofenceState {
  restaurant: FenceState;
  approach: FenceState;
  arrive: FenceState;
  /** Bit (1 << kind) for every GeofenceKind already emitted in this assignment. */
  fired: number;
  /** Device time of the newest fix evaluated; older fixes are ignored. */
  lastFixMs: number;
}

/** What the fences are built from: the assignment as the location service knows it. */
export interface FenceTargets {
  /** Order status name without prefix, e.g. "PICKED_UP". */
  status: string;
  pickup: { lat: number; lng: number };
  dropoff: { lat: number; lng: number };
}

export interface FenceFix {
  lat: number;
  lng: number;
  accuracyM: number;
  deviceTimeMs: number;
}

export interface StepResult {
  /** Crossings to emit, in order (empty almost always). */
  events: GeofenceKind[];
  /** A confirmed side or the fired set changed: worth persisting (pending dwell is not). */
  durable: boolean;
}

const PRE_PICKUP = new Set(["PAYMENT_PENDING", "PLACED", "CONFIRMED", "PREPARING", "READY_FOR_PICKUP"]);
const POST_PICKUP = new Set(["PICKED_UP", "EN_ROUTE"]);
const NO_EVENTS: GeofenceKind[] = [];

function fence(): FenceState {
  return { side: UNKNOWN, pending: UNKNOWN, pendingSinceMs: 0 };
}

/** The state at the start of an assignment: every side unknown, nothing fired. */
export function initialGeofenceState(): GeofenceState {
  return { restaurant: fence(), approach: fence(), arrive: fence(), fired: 0, lastFixMs: -Infinity };
}

export function hasFired(state: GeofenceState, kind: GeofenceKind): boolean {
  return (state.fired & (1 << kind)) !== 0;
}

/** Which side one fix puts the driver on for a fence, taking its accuracy into account. */
export function classify(distanceM: number, accuracyM: number, enterM: number, exitM: number): Side {
  // NaN (distance or accuracy) fails every comparison below and decides nothing.
  const acc = accuracyM < 0 ? 0 : accuracyM;
  if (!(acc <= enterM)) return UNKNOWN;
  if (distanceM + acc <= enterM) return INSIDE;
  if (distanceM - acc >= exitM) return OUTSIDE;
  return UNKNOWN;
}

/** Applies one observation to a fence; returns whether the confirmed side changed. */
function advance(f: FenceState, observed: Side, atMs: number, dwellMs: number): boolean {
  if (observed === UNKNOWN) return false;
  if (observed === f.side) {
    f.pending = UNKNOWN;
    return false;
  }
  if (f.pending !== observed) {
    f.pending = observed;
    f.pendingSinceMs = atMs;
  }
  if (atMs - f.pendingSinceMs >= dwellMs) {
    f.side = observed;
    f.pending = UNKNOWN;
    return true;
  }
  return false;
}

/**
 * Feeds one fix to the assignment's fences (mutating state) and returns the crossings to emit.
 * Fixes older than the newest one seen are ignored.
 */
export function stepGeofence(state: GeofenceState, target: FenceTargets, fix: FenceFix, cfg: GeofenceConfig): StepResult {
  const t = fix.deviceTimeMs;
  if (!(t >= state.lastFixMs)) return { events: NO_EVENTS, durable: false };
  state.lastFixMs = t;

  const toPickupM = haversineKm(fix.lng, fix.lat, target.pickup.lng, target.pickup.lat) * 1000;
  const toDropM = haversineKm(fix.lng, fix.lat, target.dropoff.lng, target.dropoff.lat) * 1000;
  let durable = false;
  durable = advance(state.restaurant, classify(toPickupM, fix.accuracyM, cfg.restaurantEnterM, cfg.restaurantExitM), t, cfg.dwellMs) || durable;
  durable = advance(state.approach, classify(toDropM, fix.accuracyM, cfg.customerApproachEnterM, cfg.customerApproachExitM), t, cfg.dwellMs) || durable;
  durable = advance(state.arrive, classify(toDropM, fix.accuracyM, cfg.customerArriveEnterM, cfg.customerArriveExitM), t, cfg.dwellMs) || durable;

  let events = NO_EVENTS;
  const fire = (kind: GeofenceKind) => {
    if (hasFired(state, kind)) return;
    state.fired |= 1 << kind;
    if (events === NO_EVENTS) events = [];
    events.push(kind);
  };
  if (PRE_PICKUP.has(target.status)) {
    if (state.restaurant.side === INSIDE) fire(GeofenceKind.ARRIVED_RESTAURANT);
  } else if (POST_PICKUP.has(target.status)) {
    if (state.restaurant.side === OUTSIDE) fire(GeofenceKind.LEFT_RESTAURANT);
    if (state.approach.side === INSIDE || state.arrive.side === INSIDE) fire(GeofenceKind.APPROACHING_CUSTOMER);
    if (state.arrive.side === INSIDE) fire(GeofenceKind.ARRIVED_CUSTOMER);
  }
  return { events, durable: durable || events.length > 0 };
}

/**
 * The durable part of the state as a short string ("<r><a><c>:<fired>", e.g. "210:6"): the
 * confirmed sides and the fired set. The pending dwell is not kept; after a restore it starts
 * again, which can only delay a crossing, never repeat one.
 */
export function encodeGeofence(state: GeofenceState): string {
  return `${state.restaurant.side}${state.approach.side}${state.arrive.side}:${state.fired}`;
}

/** Inverse of encodeGeofence; undefined for anything malformed. */
export function decodeGeofence(s: string): GeofenceState | undefined {
  const m = /^([012])([012])([012]):(\d{1,4})$/.exec(s);
  if (!m) return undefined;
  const st = initialGeofenceState();
  st.restaurant.side = Number(m[1]) as Side;
  st.approach.side = Number(m[2]) as Side;
  st.arrive.side = Number(m[3]) as Side;
  st.fired = Number(m[4]);
  return st;
}
