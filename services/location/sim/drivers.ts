/**
 * Simulated delivery drivers for tests, the simulate CLI and the benchmarks. Pure and
 * deterministic: the same seed gives the same trajectories (only elapsed time matters, not the
 * start time); no clock, no I/O, no Math.random.
 *
 * Model, per driver:
 *  - Streets: a grid of jittered intersections (blocks of ~110-200 m, rotated per fleet) laid over
 *    the city around its centre. A trip is a staircase of whole blocks with a few turns from the
 *    current intersection to a destination 1-5 km away inside the operating area.
 *  - Motion: a cruise speed of 7-15 m/s per leg, acceleration at most ACCEL_MPS2, braking planned
 *    with PLAN_BRAKE_MPS2 so a driver slows to 3-5 m/s before a turn and to 0 before a stop; stops
 *    at some intersections (lights, 5-45 s) and a dwell at each destination (pickup or drop-off).
 *    Integrated in substeps of at most 200 ms.
 *  - GPS: error per axis follows a first-order Gauss-Markov process (correlation time ~20 s, as
 *    real receivers drift rather than jump), sigma 2.5-4.5 m, with occasional degraded episodes
 *    (urban canyon: sigma up to 30 m for 10-60 s). The reported accuracy is the 68 % radius of the
 *    current error distribution (~1.5 sigma), so it rises and falls with the real error. Speed and
 *    heading come from the motion with small noise; heading is kept while stopped.
 *  - Device time is the simulated clock in whole ms (plus an optional fixed per-driver skew), strictly
 *    increasing per driver; sequence numbers increase by one per fix.
 */
import { create } from "@bufbuild/protobuf";
import { TimestampSchema, type Timestamp } from "@bufbuild/protobuf/wkt";
import type { City } from "../../platform/config.js";

/** The fields of a dabba.location.v1.Ping, as a message init (what the clients accept and `create(PingSchema, p)` takes). */
export interface SimPing {
  location: { lat: number; lng: number };
  accuracyM: number;
  speedMps: number;
  headingDeg: number;
  deviceTime: Timestamp;
  sequence: bigint;
}

export interface LatLng {
  lat: number;
  lng: number;
}

export type DriverState = "driving" | "stopped" | "dwelling" | "arrived";

/** What the driver really did (no GPS error): for tests and latency matching. */
export interface DriverTruth {
  lat: number;
  lng: number;
  speedMps: number;
  headingDeg: number;
  state: DriverState;
  /** Simulated time of this state, epoch ms. */
  atMs: number;
  /** Metres driven since the start. */
  odometerM: number;
}

/** Limits of the motion model (tests assert against them). */
export const SIM_LIMITS = Object.freeze({
  maxSpeedMps: 15,
  minCruiseMps: 7,
  turnSpeedMps: [3, 5] as const,
  /** Largest acceleration, m/s^2. */
  accelMps2: 2,
  /** Hardest braking the integrator may apply, m/s^2 (plans with less, so it rarely needs it). */
  maxBrakeMps2: 4.5,
  /** Largest standard deviation of the GPS error per axis, metres. */
  maxSigmaM: 30,
  /** Largest integration step, ms. */
  substepMs: 200,
});

const ACCEL_MPS2 = SIM_LIMITS.accelMps2;
const PLAN_BRAKE_MPS2 = 3;
const GPS_TAU_S = 20;
const ACCURACY_PER_SIGMA = 1.51; // 68 % radius of a circular 2-D gaussian
const M_PER_DEG_LAT = 111_320;

export interface FleetOptions {
  city: City;
  drivers: number;
  seed: number;
  /** Simulated clock at the start, epoch ms (default: Date.now() at creation; trajectories do not depend on it). */
  startMs?: number;
  /** Driver ids are `${idPrefix}${index}` (default `sim-<seed>-`). */
  idPrefix?: string;
  /** Drivers start and drive within this distance of the city centre, metres (default 8000; always inside the bounds). */
  radiusM?: number;
  /** Each driver's device clock is off by a fixed amount uniformly within +-this, ms (default 0). */
  clockSkewMs?: number;
  /** Average block length in metres (default 150). */
  blockM?: number;
}

export interface Fleet {
  readonly city: City;
  readonly drivers: readonly SimDriver[];
  /** The fleet's simulated clock, epoch ms. */
  readonly nowMs: number;
  /** Advances the clock by dtMs and returns one fix per driver, taken at the new time. */
  step(dtMs: number): SimPing[];
}

/** A local east/north metric frame around a city centre (equirectangular; fine at city scale). */
class Frame {
  readonly mPerDegLng: number;
  constructor(readonly origin: LatLng) {
    this.mPerDegLng = M_PER_DEG_LAT * Math.cos((origin.lat * Math.PI) / 180);
  }
  toLatLng(x: number, y: number): LatLng {
    return { lat: this.origin.lat + y / M_PER_DEG_LAT, lng: this.origin.lng + x / this.mPerDegLng };
  }
  toXY(p: LatLng): { x: number; y: number } {
    return { x: (p.lng - this.origin.lng) * this.mPerDegLng, y: (p.lat - this.origin.lat) * M_PER_DEG_LAT };
  }
}

/** Streets: jittered intersections of a rotated grid. */
class StreetGrid {
  private readonly cos: number;
  private readonly sin: number;
  constructor(
    readonly frame: Frame,
    readonly blockM: number,
    angleRad: number,
    private readonly salt: number,
    /** Operating area in the local frame: intersections are kept inside it. */
    readonly area: { minX: number; maxX: number; minY: number; maxY: number; radius: number },
  ) {
    this.cos = Math.cos(angleRad);
    this.sin = Math.sin(angleRad);
  }
  /** Position of intersection (i, j) in the local frame; jitter up to 20 % of a block, fixed per intersection. */
  node(i: number, j: number): { x: number; y: number } {
    const jx = (hash01(i, j, this.salt) - 0.5) * 0.4 * this.blockM;
    const jy = (hash01(j, i, this.salt ^ 0x5bd1e995) - 0.5) * 0.4 * this.blockM;
    const gx = i * this.blockM + jx;
    const gy = j * this.blockM + jy;
    return { x: gx * this.cos - gy * this.sin, y: gx * this.sin + gy * this.cos };
  }
  /** Nearest grid indices of a local point (before jitter). */
  nearest(x: number, y: number): { i: number; j: number } {
    const gx = x * this.cos + y * this.sin;
    const gy = -x * this.sin + y * this.cos;
    return { i: Math.round(gx / this.blockM), j: Math.round(gy / this.blockM) };
  }
  inside(i: number, j: number): boolean {
    const p = this.node(i, j);
    return this.contains(p.x, p.y);
  }
  contains(x: number, y: number): boolean {
    const a = this.area;
    return x >= a.minX && x <= a.maxX && y >= a.minY && y <= a.maxY && Math.hypot(x, y) <= a.radius;
  }
}

/** Deterministic hash of two integers and a salt to [0, 1). */
function hash01(a: number, b: number, salt: number): number {
  let h = Math.imul(a | 0, 0x9e3779b1) ^ Math.imul(b | 0, 0x85ebca77) ^ salt;
  h = Math.imul(h ^ (h >>> 16), 0x7feb352d);
  h = Math.imul(h ^ (h >>> 15), 0x846ca68b);
  h ^= h >>> 16;
  return (h >>> 0) / 4294967296;
}

/** mulberry32 with a gaussian on the side (Box-Muller, both values used). */
class Rng {
  private a: number;
  private spare: number | undefined;
  constructor(seed: number) {
    this.a = seed >>> 0;
  }
  next(): number {
    this.a = (this.a + 0x6d2b79f5) >>> 0;
    let t = this.a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  }
  range(lo: number, hi: number): number {
    return lo + (hi - lo) * this.next();
  }
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.next() * (hi - lo + 1));
  }
  gauss(): number {
    if (this.spare !== undefined) {
      const s = this.spare;
      this.spare = undefined;
      return s;
    }
    let u = 0;
    while (u === 0) u = this.next();
    const v = this.next();
    const r = Math.sqrt(-2 * Math.log(u));
    this.spare = r * Math.sin(2 * Math.PI * v);
    return r * Math.cos(2 * Math.PI * v);
  }
}

/** A point on a path and what happens there. */
interface PathNode {
  x: number;
  y: number;
  /** Speed the driver may have when passing this node (0: stops here). */
  passMps: number;
  /** Stop duration here, ms (0: drives through). */
  stopMs: number;
  /** The trip ends here (dwell, then a new trip or, in route mode, the next leg / arrival). */
  end: boolean;
}

/** Driver behaviour (fleet: endless trips on the grid; route: given waypoints, then parked). */
interface Planner {
  /** The next path from (x, y), or undefined when the driver stays parked for good. */
  nextTrip(x: number, y: number, rng: Rng): PathNode[] | undefined;
  /** Dwell at a trip's end, ms. */
  dwellMs(rng: Rng): number;
}

/** One simulated driver: its device produces fixes on demand at increasing times. */
export class SimDriver {
  readonly id: string;
  private readonly frame: Frame;
  private readonly rng: Rng;
  private readonly planner: Planner;
  private readonly skewMs: number;
  // Motion state (local frame, metres).
  private x: number;
  private y: number;
  private v = 0;
  private heading: number;
  private cruise: number;
  private path: PathNode[] = [];
  /** Index of the node the driver is heading to. */
  private target = 0;
  private stopLeftMs = 0;
  private stopKind: "stopped" | "dwelling" | "arrived" | undefined;
  private odometer = 0;
  private simMs: number;
  // GPS error state.
  private ex = 0;
  private ey = 0;
  private baseSigma: number;
  private sigma: number;
  private sigmaTarget: number;
  private degradedLeftMs = 0;
  private seq = 0n;
  private lastDeviceMs = -Infinity;

  /** @internal use createFleet / createRouteDriver */
  constructor(opts: { id: string; frame: Frame; seed: number; startMs: number; start: { x: number; y: number }; planner: Planner; skewMs: number; startParkedMs?: number }) {
    this.id = opts.id;
    this.frame = opts.frame;
    this.rng = new Rng(opts.seed);
    this.planner = opts.planner;
    this.skewMs = opts.skewMs;
    this.simMs = opts.startMs;
    this.x = opts.start.x;
    this.y = opts.start.y;
    this.heading = this.rng.range(0, 360);
    this.cruise = this.rng.range(SIM_LIMITS.minCruiseMps, SIM_LIMITS.maxSpeedMps);
    this.baseSigma = this.rng.range(2.5, 4.5);
    this.sigma = this.sigmaTarget = this.baseSigma;
    // Start with the error already in its stationary distribution.
    this.ex = this.sigma * this.rng.gauss();
    this.ey = this.sigma * this.rng.gauss();
    if (opts.startParkedMs && opts.startParkedMs > 0) {
      this.stopKind = "dwelling";
      this.stopLeftMs = opts.startParkedMs;
    } else this.beginTrip();
  }

  /** The last sequence number used (0 before the first fix). */
  get sequence(): bigint {
    return this.seq;
  }

  /** Takes the next sequence number without producing a fix (bad-ping generators share the counter). */
  takeSequence(): bigint {
    return ++this.seq;
  }

  /** Device time of the last fix, epoch ms (-Infinity before the first). */
  get lastDeviceTimeMs(): number {
    return this.lastDeviceMs;
  }

  /** The simulated clock of this driver, epoch ms. */
  get nowMs(): number {
    return this.simMs;
  }

  truth(): DriverTruth {
    const p = this.frame.toLatLng(this.x, this.y);
    return { lat: p.lat, lng: p.lng, speedMps: this.v, headingDeg: this.heading, state: this.stopKind ?? "driving", atMs: this.simMs, odometerM: this.odometer };
  }

  /** True once a route driver has reached its last waypoint (never for fleet drivers). */
  get arrived(): boolean {
    return this.stopKind === "arrived";
  }

  /** Advances the simulation to nowMs (no fix taken). Times before the driver's clock are ignored. */
  advanceTo(nowMs: number): void {
    let left = nowMs - this.simMs;
    while (left > 0) {
      const dt = left > SIM_LIMITS.substepMs ? SIM_LIMITS.substepMs : left;
      this.tick(dt);
      left -= dt;
    }
    if (nowMs > this.simMs) this.simMs = nowMs;
  }

  /**
   * Advances to nowMs and takes a fix: the true position plus GPS error, device time nowMs
   * (plus the driver's clock skew; never earlier than the previous fix), the next sequence number.
   */
  next(nowMs: number): SimPing {
    this.advanceTo(nowMs);
    const rng = this.rng;
    const p = this.frame.toLatLng(this.x + this.ex, this.y + this.ey);
    const accuracyM = Math.round(ACCURACY_PER_SIGMA * this.sigma * rng.range(0.85, 1.15) * 10) / 10;
    const moving = this.v > 0.3;
    const speedMps = moving ? Math.max(0, this.v + 0.25 * rng.gauss()) : 0;
    let headingDeg = moving ? this.heading + 2 * rng.gauss() : this.heading;
    headingDeg = Math.round((((headingDeg % 360) + 360) % 360) * 10) / 10;
    if (!(headingDeg < 360)) headingDeg = 0; // 359.96 rounds to 360, which is out of range
    // Whole milliseconds, as phones report them; strictly increasing so no fix repeats a device time.
    let deviceMs = Math.floor(this.simMs + this.skewMs);
    if (deviceMs <= this.lastDeviceMs) deviceMs = this.lastDeviceMs + 1;
    this.lastDeviceMs = deviceMs;
    return {
      location: p,
      accuracyM,
      speedMps: Math.round(speedMps * 100) / 100,
      headingDeg,
      deviceTime: timestampOf(deviceMs),
      sequence: ++this.seq,
    };
  }

  private beginTrip(): void {
    const trip = this.planner.nextTrip(this.x, this.y, this.rng);
    if (!trip || trip.length === 0) {
      this.stopKind = "arrived";
      this.stopLeftMs = Infinity;
      this.v = 0;
      return;
    }
    this.path = trip;
    this.target = 0;
    this.stopKind = undefined;
    this.cruise = this.rng.range(SIM_LIMITS.minCruiseMps, SIM_LIMITS.maxSpeedMps);
  }

  private tick(dtMs: number): void {
    this.gps(dtMs);
    if (this.stopKind) {
      this.v = 0;
      this.stopLeftMs -= dtMs;
      if (this.stopLeftMs > 0) return;
      const wasDwelling = this.stopKind === "dwelling";
      this.stopKind = undefined;
      if (wasDwelling || this.target >= this.path.length) {
        this.beginTrip();
        return;
      }
      this.cruise = this.rng.range(SIM_LIMITS.minCruiseMps, SIM_LIMITS.maxSpeedMps);
    }
    const dt = dtMs / 1000;
    // Speed limit from the nodes ahead: reach each node no faster than its pass speed.
    let limit = this.cruise;
    // Plan from where this substep will end at the current speed, so the profile is met, not overshot.
    let dist = -this.v * dt;
    let px = this.x;
    let py = this.y;
    for (let k = this.target; k < this.path.length && dist < 80; k++) {
      const n = this.path[k]!;
      dist += Math.hypot(n.x - px, n.y - py);
      px = n.x;
      py = n.y;
      const v = Math.sqrt(n.passMps * n.passMps + 2 * PLAN_BRAKE_MPS2 * Math.max(0, dist));
      if (v < limit) limit = v;
      if (n.passMps === 0) break;
    }
    if (limit < 0.5) limit = 0.5; // creep the last centimetres instead of approaching forever
    if (this.v < limit) this.v = Math.min(limit, this.v + ACCEL_MPS2 * dt);
    else this.v = Math.max(limit, this.v - SIM_LIMITS.maxBrakeMps2 * dt);

    let travel = this.v * dt;
    while (travel > 0 && this.target < this.path.length) {
      const n = this.path[this.target]!;
      const dx = n.x - this.x;
      const dy = n.y - this.y;
      const d = Math.hypot(dx, dy);
      if (d > 1e-9) this.heading = bearingDeg(dx, dy);
      if (travel < d) {
        this.x += (dx / d) * travel;
        this.y += (dy / d) * travel;
        this.odometer += travel;
        return;
      }
      this.x = n.x;
      this.y = n.y;
      this.odometer += d;
      travel -= d;
      this.target++;
      if (n.end) {
        this.v = 0;
        this.stopKind = "dwelling";
        this.stopLeftMs = this.planner.dwellMs(this.rng);
        if (!Number.isFinite(this.stopLeftMs)) this.stopKind = "arrived";
        return;
      }
      if (n.stopMs > 0) {
        this.v = 0;
        this.stopKind = "stopped";
        this.stopLeftMs = n.stopMs;
        return;
      }
      if (n.passMps < this.v) this.v = n.passMps;
    }
    if (this.target >= this.path.length && !this.stopKind) {
      this.v = 0;
      this.beginTrip();
    }
  }

  /** GPS error: Gauss-Markov drift around zero with a sigma that eases towards its target. */
  private gps(dtMs: number): void {
    const rng = this.rng;
    if (this.degradedLeftMs > 0) {
      this.degradedLeftMs -= dtMs;
      if (this.degradedLeftMs <= 0) this.sigmaTarget = this.baseSigma;
    } else if (rng.next() < dtMs / 240_000) {
      // About one degraded episode per 4 minutes of driving time.
      this.degradedLeftMs = rng.range(10_000, 60_000);
      this.sigmaTarget = rng.range(10, SIM_LIMITS.maxSigmaM);
    }
    const ease = 1 - Math.exp(-dtMs / 3000);
    this.sigma += (this.sigmaTarget - this.sigma) * ease;
    const a = Math.exp(-dtMs / 1000 / GPS_TAU_S);
    const s = this.sigma * Math.sqrt(1 - a * a);
    this.ex = a * this.ex + s * rng.gauss();
    this.ey = a * this.ey + s * rng.gauss();
  }
}

/** Degrees clockwise from north of a local displacement. */
function bearingDeg(dx: number, dy: number): number {
  const d = (Math.atan2(dx, dy) * 180) / Math.PI;
  return d < 0 ? d + 360 : d;
}

/** A Timestamp for epoch ms with sub-millisecond precision (timestampFromMs would produce fractional nanos). */
export function timestampOf(ms: number): Timestamp {
  const seconds = Math.floor(ms / 1000);
  let nanos = Math.round((ms - seconds * 1000) * 1e6);
  if (nanos > 999_999_999) nanos = 999_999_999;
  return create(TimestampSchema, { seconds: BigInt(seconds), nanos });
}

/** Epoch ms of a Timestamp, keeping sub-millisecond precision. */
export function timestampToMs(t: { seconds: bigint; nanos: number }): number {
  return Number(t.seconds) * 1000 + t.nanos / 1e6;
}

/** Staircase path over grid nodes from one intersection to another: whole blocks, a few turns, stops at some intersections. */
function gridPath(grid: StreetGrid, from: { i: number; j: number }, to: { i: number; j: number }, rng: Rng, stopChance: number): PathNode[] {
  const nodes: PathNode[] = [];
  let { i, j } = from;
  let alongI = rng.next() < 0.5;
  let turns = 0;
  while (i !== to.i || j !== to.j) {
    const remI = to.i - i;
    const remJ = to.j - j;
    if (remI === 0) alongI = false;
    else if (remJ === 0) alongI = true;
    const rem = alongI ? remI : remJ;
    const other = alongI ? remJ : remI;
    // Leave some of the run for later unless this is the last chance to turn.
    const n = other === 0 || turns >= 3 ? Math.abs(rem) : rng.int(1, Math.abs(rem));
    const step = Math.sign(rem);
    for (let k = 0; k < n; k++) {
      if (alongI) i += step;
      else j += step;
      const p = grid.node(i, j);
      const stop = rng.next() < stopChance;
      nodes.push({ x: p.x, y: p.y, passMps: stop ? 0 : 15, stopMs: stop ? rng.range(5_000, 45_000) : 0, end: false });
    }
    alongI = !alongI;
    turns++;
    const last = nodes[nodes.length - 1];
    // A corner: the last node of a run, unless it is the destination (marked below).
    if (last && (i !== to.i || j !== to.j) && last.stopMs === 0) last.passMps = rng.range(SIM_LIMITS.turnSpeedMps[0], SIM_LIMITS.turnSpeedMps[1]);
  }
  if (nodes.length > 0) {
    const last = nodes[nodes.length - 1]!;
    last.passMps = 0;
    last.stopMs = 0;
    last.end = true;
  }
  return nodes;
}

/** The operating area of a city in its local frame: inside the bounds (less a margin) and within radiusM of the centre. */
function operatingArea(frame: Frame, city: City, radiusM: number) {
  const sw = frame.toXY({ lat: city.bounds.south, lng: city.bounds.west });
  const ne = frame.toXY({ lat: city.bounds.north, lng: city.bounds.east });
  const margin = 500;
  return { minX: sw.x + margin, maxX: ne.x - margin, minY: sw.y + margin, maxY: ne.y - margin, radius: radiusM };
}

/** A fleet of drivers making endless trips (pickup -> drop-off -> next pickup) in a city. */
export function createFleet(opts: FleetOptions): Fleet {
  const { city, seed } = opts;
  if (!Number.isInteger(opts.drivers) || opts.drivers < 0) throw new Error("createFleet: drivers must be a non-negative integer");
  const startMs = opts.startMs ?? Date.now();
  const rng = new Rng(seed ^ 0x2545f491);
  const frame = new Frame(city.centre);
  const area = operatingArea(frame, city, opts.radiusM ?? 8000);
  const grid = new StreetGrid(frame, opts.blockM ?? 150, rng.range(0, Math.PI / 2), (seed * 2654435761) | 0, area);
  const planner: Planner = {
    nextTrip(x, y, r) {
      const from = grid.nearest(x, y);
      // A destination 1-5 km away whose whole path stays inside the area (a staircase on the
      // rotated grid can cut a corner of it); in a small city, shorter trips; else wait and retry.
      for (let attempt = 0; attempt < 60; attempt++) {
        const dist = attempt < 30 ? r.range(1000, 5000) : r.range(300, 1500);
        const ang = r.range(0, 2 * Math.PI);
        const to = grid.nearest(x + dist * Math.sin(ang), y + dist * Math.cos(ang));
        if (to.i === from.i && to.j === from.j) continue;
        const path = gridPath(grid, from, to, r, 0.12);
        if (path.every((n) => grid.contains(n.x, n.y))) return path;
      }
      return [{ x, y, passMps: 0, stopMs: 0, end: true }];
    },
    dwellMs: (r) => r.range(30_000, 240_000),
  };
  const skew = opts.clockSkewMs ?? 0;
  const prefix = opts.idPrefix ?? `sim-${seed}-`;
  const drivers: SimDriver[] = [];
  for (let k = 0; k < opts.drivers; k++) {
    // Start at a random intersection inside the area; a third start parked (waiting at a restaurant).
    let start = { i: 0, j: 0 };
    for (let attempt = 0; attempt < 50; attempt++) {
      const rr = area.radius * Math.sqrt(rng.next());
      const ang = rng.range(0, 2 * Math.PI);
      const c = grid.nearest(rr * Math.sin(ang), rr * Math.cos(ang));
      if (grid.inside(c.i, c.j)) {
        start = c;
        break;
      }
    }
    const parked = rng.next() < 1 / 3 ? rng.range(1_000, 120_000) : 0;
    drivers.push(
      new SimDriver({
        id: `${prefix}${k}`,
        frame,
        seed: (seed * 1_000_003 + k * 7919) | 0,
        startMs,
        start: grid.node(start.i, start.j),
        planner,
        skewMs: skew ? rng.range(-skew, skew) : 0,
        startParkedMs: parked,
      }),
    );
  }
  let now = startMs;
  return {
    city,
    drivers,
    get nowMs() {
      return now;
    },
    step(dtMs: number): SimPing[] {
      if (!(dtMs > 0)) throw new Error("Fleet.step: dtMs must be positive");
      now += dtMs;
      return drivers.map((d) => d.next(now));
    },
  };
}

export interface RouteOptions {
  /** Where the driver starts (e.g. the restaurant). */
  from: LatLng;
  /** Places to drive to in order (e.g. [customer] or [restaurant, customer]); the driver parks at the last. */
  to: LatLng | LatLng[];
  seed: number;
  /** Simulated clock at the start, epoch ms (default Date.now()). */
  startMs?: number;
  id?: string;
  /** Stay parked at `from` this long before setting off, ms (default 0). */
  waitAtStartMs?: number;
  /** Dwell at each intermediate waypoint, ms (default 60 s). */
  dwellMs?: number;
  /** Stop at intersections (lights) on the way (default false: a predictable trip for tests). */
  stopAtLights?: boolean;
  blockM?: number;
}

/**
 * A driver who drives from A to B (and on through further waypoints) along streets, then stays
 * parked at the last one, still sending noisy fixes. The path snaps to a street grid around
 * the points, with the first and last metres straight to the exact points.
 */
export function createRouteDriver(opts: RouteOptions): SimDriver {
  const frame = new Frame(opts.from);
  const rng = new Rng(opts.seed ^ 0x68e31da4);
  const blockM = opts.blockM ?? 150;
  const area = { minX: -Infinity, maxX: Infinity, minY: -Infinity, maxY: Infinity, radius: Infinity };
  const grid = new StreetGrid(frame, blockM, rng.range(0, Math.PI / 2), opts.seed | 0, area);
  const legs = Array.isArray(opts.to) ? [...opts.to] : [opts.to];
  const dwell = opts.dwellMs ?? 60_000;
  const stopChance = opts.stopAtLights ? 0.12 : 0;
  let leg = 0;
  const planner: Planner = {
    nextTrip(x, y, r) {
      if (leg >= legs.length) return undefined;
      const goal = frame.toXY(legs[leg++]!);
      const a = grid.nearest(x, y);
      const b = grid.nearest(goal.x, goal.y);
      const nodes: PathNode[] = [];
      const corner = r.range(SIM_LIMITS.turnSpeedMps[0], SIM_LIMITS.turnSpeedMps[1]);
      if (a.i === b.i && a.j === b.j) {
        nodes.push({ x: goal.x, y: goal.y, passMps: 0, stopMs: 0, end: true });
        return nodes;
      }
      const start = grid.node(a.i, a.j);
      nodes.push({ x: start.x, y: start.y, passMps: corner, stopMs: 0, end: false });
      const mid = gridPath(grid, a, b, r, stopChance);
      const last = mid[mid.length - 1]!;
      last.end = false;
      last.passMps = corner;
      nodes.push(...mid, { x: goal.x, y: goal.y, passMps: 0, stopMs: 0, end: true });
      return nodes;
    },
    dwellMs: () => (leg >= legs.length ? Infinity : dwell),
  };
  return new SimDriver({
    id: opts.id ?? `route-${opts.seed}`,
    frame,
    seed: opts.seed,
    startMs: opts.startMs ?? Date.now(),
    start: { x: 0, y: 0 },
    planner,
    skewMs: 0,
    startParkedMs: opts.waitAtStartMs ?? 0,
  });
}

/** Great-circle distance in metres (haversine). */
export function distanceM(a: LatLng, b: LatLng): number {
  const R = 6_371_008.8;
  const rad = Math.PI / 180;
  const dLat = (b.lat - a.lat) * rad;
  const dLng = (b.lng - a.lng) * rad;
  const h = Math.sin(dLat / 2) ** 2 + Math.cos(a.lat * rad) * Math.cos(b.lat * rad) * Math.sin(dLng / 2) ** 2;
  return 2 * R * Math.asin(Math.min(1, Math.sqrt(h)));
}
