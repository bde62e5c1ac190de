import type { DispatchConfig } from "../platform/config.js";
import { haversineKm } from "../platform/redis.js";

// Pure dispatch rules: no I/O, no clock, no hidden randomness. The engine passes time and rand in,
// so every decision here can be replayed in a test.

export type Vehicle = "bicycle" | "scooter" | "car";

export interface Point {
  lat: number;
  lng: number;
}

/** A driver found near the restaurant, with what dispatch knows about them. */
export interface Candidate {
  driverId: string;
  position: Point;
  /** Straight-line distance to the restaurant in km (from GEOSEARCH). */
  distanceKm: number;
  /** Device heading, 0..360 degrees clockwise from north. */
  headingDeg: number;
  speedMps: number;
  vehicle: Vehicle;
  /** Offers received so far (lifetime counter). */
  offers: number;
  /** Offers accepted so far (lifetime counter). */
  accepts: number;
  /** When the driver became idle (ms epoch); undefined = unknown (treat as idle 0). */
  idleSinceMs?: number;
  /** Orders the driver carried when chosen (its lock is refused if it carries others by then). */
  carrying: readonly string[];
}

export interface Scored {
  driverId: string;
  /** Higher is better. */
  score: number;
  distanceKm: number;
  /** travelSeconds(distanceKm, vehicle). */
  pickupEtaS: number;
  /** acceptanceRate(offers, accepts). */
  acceptanceRate: number;
  idleS: number;
  /** cos(angle between heading and bearing to pickup); 0 when speed < 1 m/s. */
  headingCos: number;
  /** Candidate.carrying. */
  carrying: readonly string[];
}

/** Below this speed a device heading is noise (a parked phone still reports one). */
const MIN_HEADING_SPEED_MPS = 1;
/** Closer than this the bearing to the pickup is meaningless, so heading cannot help or hurt. */
const SAME_PLACE_KM = 0.001;
/** How many of the best candidates exploration draws from. */
const EXPLORE_TOP = 3;

/** Travel time: distanceKm * detourFactor / speedMps[vehicle], in seconds. */
export function travelSeconds(
  distanceKm: number,
  vehicle: Vehicle,
  cfg: Pick<DispatchConfig, "speedMps" | "detourFactor">,
): number {
  return (distanceKm * 1000 * cfg.detourFactor) / cfg.speedMps[vehicle];
}

/** Laplace-smoothed: (accepts + 1) / (offers + 2), so a new driver starts at 0.5, not 0 or 1. */
export function acceptanceRate(offers: number, accepts: number): number {
  return (accepts + 1) / (offers + 2);
}

/** Initial bearing from a to b in degrees clockwise from north, [0, 360). */
export function bearingDeg(a: Point, b: Point): number {
  const rad = Math.PI / 180;
  const phi1 = a.lat * rad;
  const phi2 = b.lat * rad;
  const dLambda = (b.lng - a.lng) * rad;
  const y = Math.sin(dLambda) * Math.cos(phi2);
  const x = Math.cos(phi1) * Math.sin(phi2) - Math.sin(phi1) * Math.cos(phi2) * Math.cos(dLambda);
  const deg = Math.atan2(y, x) / rad;
  // Twice modulo: -1e-15 + 360 rounds to exactly 360, which must come out as 0.
  return ((deg % 360) + 360) % 360;
}

/**
 * score = -w.eta * etaMinutes + w.acceptance * rate + w.idle * min(idleMs, idleCapMs)/idleCapMs
 *         + w.heading * headingCos. Sorted best first; ties: smaller distance, then driverId.
 * degraded=true: score = -distanceKm only (nearest first), other fields still filled.
 */
export function scoreCandidates(
  pickup: Point,
  cands: Candidate[],
  cfg: DispatchConfig,
  nowMs: number,
  degraded = false,
): Scored[] {
  const w = cfg.weights;
  const out: Scored[] = cands.map((c) => {
    const pickupEtaS = travelSeconds(c.distanceKm, c.vehicle, cfg);
    const rate = acceptanceRate(c.offers, c.accepts);
    // A clock skew between workers can put idleSince in the future; that is not negative idleness.
    const idleMs = c.idleSinceMs === undefined ? 0 : Math.max(0, nowMs - c.idleSinceMs);
    const headingCos = headingCosine(c, pickup);
    const score = degraded
      ? -c.distanceKm
      : -w.eta * (pickupEtaS / 60) +
        w.acceptance * rate +
        w.idle * (Math.min(idleMs, cfg.idleCapMs) / cfg.idleCapMs) +
        w.heading * headingCos;
    return { driverId: c.driverId, score, distanceKm: c.distanceKm, pickupEtaS, acceptanceRate: rate, idleS: idleMs / 1000, headingCos, carrying: c.carrying };
  });
  return out.sort(compareScored);
}

function headingCosine(c: Candidate, pickup: Point): number {
  if (!(c.speedMps >= MIN_HEADING_SPEED_MPS) || !Number.isFinite(c.headingDeg)) return 0;
  if (haversineKm(c.position.lng, c.position.lat, pickup.lng, pickup.lat) < SAME_PLACE_KM) return 0;
  const diff = ((c.headingDeg - bearingDeg(c.position, pickup)) * Math.PI) / 180;
  return Math.cos(diff);
}

function compareScored(a: Scored, b: Scored): number {
  if (a.score !== b.score) return b.score - a.score;
  if (a.distanceKm !== b.distanceKm) return a.distanceKm - b.distanceKm;
  // Code-unit order, not localeCompare: the same on every worker whatever its locale.
  return a.driverId < b.driverId ? -1 : a.driverId > b.driverId ? 1 : 0;
}

/**
 * The drivers to offer this round: the first n of `scored`, except that with probability
 * explorationShare (rand() < share) the first pick is a uniformly random one of the top 3 (or fewer)
 * instead (exploration); no driver twice.
 */
export function chooseDrivers(scored: Scored[], n: number, explorationShare: number, rand: () => number): Scored[] {
  const unique: Scored[] = [];
  const seen = new Set<string>();
  for (const s of scored) {
    if (seen.has(s.driverId)) continue;
    seen.add(s.driverId);
    unique.push(s);
  }
  const want = Math.min(Math.max(0, Math.floor(n)), unique.length);
  if (want === 0) return [];
  // rand is only consumed when exploration is on, so a share of 0 replays exactly like no exploration.
  if (explorationShare > 0 && rand() < explorationShare) {
    const top = Math.min(EXPLORE_TOP, unique.length);
    const pick = Math.min(top - 1, Math.floor(rand() * top));
    const first = unique[pick];
    return [first, ...unique.filter((_, i) => i !== pick).slice(0, want - 1)];
  }
  return unique.slice(0, want);
}

/** radiiKm[min(floor(attempt / roundsPerRadius), radiiKm.length - 1)]; attempt counts rounds done, from 0. */
export function radiusForAttempt(attempt: number, cfg: Pick<DispatchConfig, "radiiKm" | "roundsPerRadius">): number {
  const step = Math.floor(Math.max(0, attempt) / Math.max(1, cfg.roundsPerRadius));
  return cfg.radiiKm[Math.min(step, cfg.radiiKm.length - 1)];
}

/** The pause before the next round: slowRetryMs when flagged, else retryMs. */
export function nextRoundDelayMs(flagged: boolean, cfg: Pick<DispatchConfig, "retryMs" | "slowRetryMs">): number {
  return flagged ? cfg.slowRetryMs : cfg.retryMs;
}

/** True once nowMs - confirmedAtMs >= flagAfterMs. */
export function shouldFlag(confirmedAtMs: number, nowMs: number, cfg: Pick<DispatchConfig, "flagAfterMs">): boolean {
  return nowMs - confirmedAtMs >= cfg.flagAfterMs;
}

/**
 * Lead time: when dispatch for an order should start, given when the food will be ready and the
 * best driver's travel time: readyAtMs - travelS*1000 - leadBufferMs; when leadBufferMs is 0 (lead
 * time disabled) returns nowMs (start now). Never earlier than nowMs. Whole ms, rounded down
 * (starting a fraction early is harmless; timestamps are integers).
 */
export function leadStartAtMs(readyAtMs: number, travelS: number, nowMs: number, cfg: Pick<DispatchConfig, "leadBufferMs">): number {
  if (cfg.leadBufferMs <= 0) return nowMs;
  return Math.max(nowMs, Math.floor(readyAtMs - travelS * 1000 - cfg.leadBufferMs));
}

/**
 * max(assignedAtMs + travelS*1000, readyAtMs) + pickupGraceMs. Whole ms, rounded up (a deadline
 * must never fire before the estimate it is built on).
 */
export function pickupDeadlineMs(
  assignedAtMs: number,
  travelS: number,
  readyAtMs: number,
  cfg: Pick<DispatchConfig, "pickupGraceMs">,
): number {
  return Math.ceil(Math.max(assignedAtMs + travelS * 1000, readyAtMs) + cfg.pickupGraceMs);
}

/** Driver's per-km share of the delivery fee, in minor units per km driven (pickup + delivery legs). */
export const EARNINGS_PER_KM_MINOR = 20;

/** What the driver is expected to earn: deliveryFeeMinor + tipMinor + round(20 * (pickupKm + deliveryKm)) minor units. */
export function estimatedEarningsMinor(deliveryFeeMinor: number, tipMinor: number, pickupKm: number, deliveryKm: number): number {
  return deliveryFeeMinor + tipMinor + Math.round(EARNINGS_PER_KM_MINOR * (pickupKm + deliveryKm));
}

/** An order a driver already carries (for stacking). */
export interface CarriedOrder {
  orderId: string;
  restaurantId: string;
  readyAtMs: number;
  pickup: Point;
  dropoff: Point;
  pickedUp: boolean;
}

export interface StackCheck {
  ok: boolean;
  /** "ok" or why the stack is refused. */
  reason: string;
  /** How much the first carried order's delivery would be delayed, in whole ms (0 with nothing carried). */
  delayMs: number;
}

/**
 * Whether a driver carrying `carried` may be offered `next` as well:
 *  - carried.length + 1 <= stackSize, else "stack full";
 *  - every carried order is from next.restaurantId, else "different restaurant", and none is picked
 *    up, else "already picked up";
 *  - |next.readyAtMs - first carried readyAtMs| <= stackReadyWindowMs, else "not ready within window";
 *  - delay of the first order's delivery <= stackMaxDelayMs, else "delays first delivery".
 *
 * The delay is the wait for the second dish, max(0, next.readyAtMs - firstReadyAtMs), plus a detour
 * when the driver drops `next` first: travel(restaurant -> next.dropoff -> first.dropoff) minus
 * travel(restaurant -> first.dropoff). The driver is assumed to drive the cheaper of the two drop
 * orders (shorter total travel); when both are equally long, the one with the smaller delay.
 * delayMs is reported with every answer, refusals included. With nothing carried the offer is an
 * ordinary single one: ok, delay 0.
 */
export function canStack(
  carried: CarriedOrder[],
  next: { restaurantId: string; readyAtMs: number; pickup: Point; dropoff: Point },
  vehicle: Vehicle,
  cfg: DispatchConfig,
): StackCheck {
  if (carried.length === 0) {
    return carried.length + 1 > cfg.stackSize ? refuse("stack full", 0) : { ok: true, reason: "ok", delayMs: 0 };
  }
  // Computed before the other checks so every refusal still says what the stack would have cost.
  const delayMs = firstDeliveryDelayMs(carried[0], next, vehicle, cfg);
  if (carried.length + 1 > cfg.stackSize) return refuse("stack full", delayMs);
  if (carried.some((o) => o.restaurantId !== next.restaurantId)) return refuse("different restaurant", delayMs);
  if (carried.some((o) => o.pickedUp)) return refuse("already picked up", delayMs);
  if (Math.abs(next.readyAtMs - carried[0].readyAtMs) > cfg.stackReadyWindowMs) return refuse("not ready within window", delayMs);
  if (delayMs > cfg.stackMaxDelayMs) return refuse("delays first delivery", delayMs);
  return { ok: true, reason: "ok", delayMs };
}

/** See canStack: wait for the second dish plus the detour when the cheaper drop order delivers `next` first. */
export function firstDeliveryDelayMs(
  first: CarriedOrder,
  next: { readyAtMs: number; pickup: Point; dropoff: Point },
  vehicle: Vehicle,
  cfg: Pick<DispatchConfig, "speedMps" | "detourFactor">,
): number {
  const waitMs = Math.max(0, next.readyAtMs - first.readyAtMs);
  const legMs = (a: Point, b: Point) => travelSeconds(haversineKm(a.lng, a.lat, b.lng, b.lat), vehicle, cfg) * 1000;
  const restaurant = next.pickup;
  const toFirst = legMs(restaurant, first.dropoff);
  const toNext = legMs(restaurant, next.dropoff);
  const between = legMs(next.dropoff, first.dropoff);
  // Both drop orders share the leg between the two dropoffs, so the cheaper route starts with the
  // nearer dropoff; on a tie the driver can just as well deliver the first order first.
  const detourMs = toNext < toFirst ? Math.max(0, toNext + between - toFirst) : 0;
  return Math.round(waitMs + detourMs);
}

function refuse(reason: string, delayMs: number): StackCheck {
  return { ok: false, reason, delayMs };
}
