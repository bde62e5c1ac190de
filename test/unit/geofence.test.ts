import assert from "node:assert/strict";
import fc from "fast-check";
import { GeofenceKind } from "../../gen/dabba/events/v1/events_pb.js";
import { defaultGeofenceConfig, type GeofenceConfig } from "../../services/platform/config.js";
import { EARTH_RADIUS_M, haversineKm } from "../../services/platform/redis.js";
import {
  INSIDE,
  OUTSIDE,
  UNKNOWN,
  classify,
  decodeGeofence,
  encodeGeofence,
  initialGeofenceState,
  stepGeofence,
  type FenceFix,
  type FenceTargets,
  type GeofenceState,
} from "../../services/location/geofence.js";

// ---------------------------------------------------------------------------------------------
// Geometry and noise

const CFG: GeofenceConfig = { ...defaultGeofenceConfig }; // 60/150, 800/1200, 60/150, dwell 10 s
const PICKUP = { lat: 12.9716, lng: 77.5946 };
const DROP = { lat: 12.9901, lng: 77.6102 }; // ~2.6 km away
const { ARRIVED_RESTAURANT, LEFT_RESTAURANT, APPROACHING_CUSTOMER, ARRIVED_CUSTOMER } = GeofenceKind;

/** The point distanceM from centre at bearingDeg (flat-earth offset; fine at these distances). */
function offset(centre: { lat: number; lng: number }, distanceM: number, bearingDeg: number) {
  const b = (bearingDeg * Math.PI) / 180;
  const dLat = (distanceM * Math.cos(b)) / EARTH_RADIUS_M;
  const dLng = (distanceM * Math.sin(b)) / (EARTH_RADIUS_M * Math.cos((centre.lat * Math.PI) / 180));
  return { lat: centre.lat + (dLat * 180) / Math.PI, lng: centre.lng + (dLng * 180) / Math.PI };
}

function distM(a: { lat: number; lng: number }, b: { lat: number; lng: number }): number {
  return haversineKm(a.lng, a.lat, b.lng, b.lat) * 1000;
}

/** Deterministic PRNG (mulberry32) so a failing trace can be replayed. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function gaussian(rand: () => number): number {
  const u = Math.max(rand(), 1e-12);
  return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rand());
}

/**
 * A driver dawdling around `centre` at a true distance that wanders within [lo, hi] metres (a
 * slow random walk in distance and bearing, one fix a second), reported with gaussian GPS
 * noise of sigmaM per axis and the given accuracy.
 */
function wanderingTrace(seed: number, centre: { lat: number; lng: number }, lo: number, hi: number, minutes: number, sigmaM = 15, accuracyM = 10, startMs = 0): FenceFix[] {
  const rand = rng(seed);
  let d = (lo + hi) / 2;
  let bearing = rand() * 360;
  const out: FenceFix[] = [];
  for (let i = 0; i < minutes * 60; i++) {
    d = Math.min(hi, Math.max(lo, d + gaussian(rand) * 3));
    bearing += gaussian(rand) * 5;
    const truth = offset(centre, d, bearing);
    const noisy = offset(offset(truth, gaussian(rand) * sigmaM, 0), gaussian(rand) * sigmaM, 90);
    out.push({ ...noisy, accuracyM, deviceTimeMs: startMs + i * 1000 });
  }
  return out;
}

/** A straight drive from a to b at speedMps, one fix a second, with light noise. */
function drive(seed: number, a: { lat: number; lng: number }, b: { lat: number; lng: number }, startMs: number, speedMps = 8, sigmaM = 5, accuracyM = 8): FenceFix[] {
  const rand = rng(seed);
  const total = distM(a, b);
  const steps = Math.max(1, Math.ceil(total / speedMps));
  const out: FenceFix[] = [];
  for (let i = 0; i <= steps; i++) {
    const f = i / steps;
    const p = { lat: a.lat + (b.lat - a.lat) * f, lng: a.lng + (b.lng - a.lng) * f };
    const noisy = offset(offset(p, gaussian(rand) * sigmaM, 0), gaussian(rand) * sigmaM, 90);
    out.push({ ...noisy, accuracyM, deviceTimeMs: startMs + i * 1000 });
  }
  return out;
}

/** A standstill at a point for seconds, one fix a second, with light noise. */
function stay(seed: number, p: { lat: number; lng: number }, startMs: number, seconds: number, sigmaM = 4, accuracyM = 6): FenceFix[] {
  const rand = rng(seed);
  const out: FenceFix[] = [];
  for (let i = 0; i < seconds; i++) {
    const noisy = offset(offset(p, gaussian(rand) * sigmaM, 0), gaussian(rand) * sigmaM, 90);
    out.push({ ...noisy, accuracyM, deviceTimeMs: startMs + i * 1000 });
  }
  return out;
}

function targets(status: string): FenceTargets {
  return { status, pickup: PICKUP, dropoff: DROP };
}

interface Run {
  events: GeofenceKind[];
  /** Changes of the confirmed side per fence ("restaurant:1>2"). */
  transitions: string[];
}

function run(state: GeofenceState, status: string | ((i: number) => string), fixes: FenceFix[], cfg = CFG): Run {
  const events: GeofenceKind[] = [];
  const transitions: string[] = [];
  fixes.forEach((fix, i) => {
    const before = [state.restaurant.side, state.approach.side, state.arrive.side];
    const r = stepGeofence(state, targets(typeof status === "string" ? status : status(i)), fix, cfg);
    events.push(...r.events);
    const after = [state.restaurant.side, state.approach.side, state.arrive.side];
    ["restaurant", "approach", "arrive"].forEach((name, k) => {
      if (before[k] !== after[k]) transitions.push(`${name}:${before[k]}>${after[k]}`);
    });
  });
  return { events, transitions };
}

/** Crossings a naive fence (one radius, no dwell, accuracy ignored) would report on the same fixes. */
function naiveCrossings(fixes: FenceFix[], centre: { lat: number; lng: number }, radiusM: number): number {
  let inside: boolean | undefined;
  let n = 0;
  for (const f of fixes) {
    const now = distM(f, centre) <= radiusM;
    if (inside !== undefined && now !== inside) n++;
    inside = now;
  }
  return n;
}

/** The customer-side crossings (the restaurant, 2+ km away, is left once after pickup as well). */
const customerSide = (events: GeofenceKind[]) => {
  assert.equal(count(events, LEFT_RESTAURANT), 1, "left the restaurant once");
  return events.filter((e) => e !== LEFT_RESTAURANT);
};

const count = (events: GeofenceKind[], kind: GeofenceKind) => events.filter((e) => e === kind).length;

// ---------------------------------------------------------------------------------------------

describe("geofence: classify", () => {
  it("needs distance + accuracy within the enter radius to be inside and distance - accuracy beyond the exit radius to be outside", () => {
    assert.equal(classify(40, 20, 60, 150), INSIDE);
    assert.equal(classify(41, 20, 60, 150), UNKNOWN);
    assert.equal(classify(100, 10, 60, 150), UNKNOWN); // between the radii
    assert.equal(classify(170, 20, 60, 150), OUTSIDE);
    assert.equal(classify(169, 20, 60, 150), UNKNOWN);
  });

  it("lets a fix whose accuracy exceeds the enter radius decide nothing, even far away", () => {
    assert.equal(classify(0, 61, 60, 150), UNKNOWN);
    assert.equal(classify(5000, 61, 60, 150), UNKNOWN);
    assert.equal(classify(5000, 60, 60, 150), OUTSIDE);
    assert.equal(classify(Number.NaN, 5, 60, 150), UNKNOWN);
    assert.equal(classify(10, Number.NaN, 60, 150), UNKNOWN);
  });
});

describe("geofence: noisy traces around a fence edge", () => {
  // Each trace: 30 minutes, one fix a second, sigma 15 m per axis. Several seeds each.
  const SEEDS = [1, 2, 3, 4, 5, 6, 7, 8];

  it("around the restaurant enter radius (60 m) before pickup: one ARRIVED_RESTAURANT, the fence never flaps", () => {
    for (const seed of SEEDS) {
      const fixes = wanderingTrace(seed, PICKUP, 30, 90, 30);
      assert.ok(naiveCrossings(fixes, PICKUP, CFG.restaurantEnterM) > 50, `seed ${seed}: the trace does cross the edge`);
      const r = run(initialGeofenceState(), "READY_FOR_PICKUP", fixes);
      assert.deepEqual(r.events, [ARRIVED_RESTAURANT], `seed ${seed}`);
      assert.deepEqual(r.transitions.filter((t) => t.startsWith("restaurant")), ["restaurant:0>1"], `seed ${seed}`);
    }
  });

  it("around the restaurant exit radius (150 m) after pickup: one LEFT_RESTAURANT, never back inside", () => {
    for (const seed of SEEDS) {
      const state = initialGeofenceState();
      const atRestaurant = stay(seed, PICKUP, 0, 30);
      const wander = wanderingTrace(seed, PICKUP, 110, 190, 30, 15, 10, 30_000);
      assert.ok(naiveCrossings(wander, PICKUP, CFG.restaurantExitM) > 50, `seed ${seed}: the trace does cross the edge`);
      const r = run(state, "PICKED_UP", [...atRestaurant, ...wander]);
      assert.deepEqual(r.events, [LEFT_RESTAURANT], `seed ${seed}`);
      assert.deepEqual(r.transitions.filter((t) => t.startsWith("restaurant")), ["restaurant:0>1", "restaurant:1>2"], `seed ${seed}`);
    }
  });

  it("around the approach radius (800 m) after pickup: one APPROACHING_CUSTOMER", () => {
    for (const seed of SEEDS) {
      const fixes = wanderingTrace(seed, DROP, 740, 860, 30);
      assert.ok(naiveCrossings(fixes, DROP, CFG.customerApproachEnterM) > 50, `seed ${seed}: the trace does cross the edge`);
      const r = run(initialGeofenceState(), "EN_ROUTE", fixes);
      assert.deepEqual(customerSide(r.events), [APPROACHING_CUSTOMER], `seed ${seed}`);
      assert.deepEqual(r.transitions.filter((t) => t.startsWith("approach")), ["approach:0>1"], `seed ${seed}`);
    }
  });

  it("around the approach exit radius (1200 m) after approaching: APPROACHING once, the fence never re-enters", () => {
    for (const seed of SEEDS) {
      const state = initialGeofenceState();
      const near = stay(seed, offset(DROP, 500, 45), 0, 20);
      const wander = wanderingTrace(seed, DROP, 1140, 1260, 30, 15, 10, 20_000);
      assert.ok(naiveCrossings(wander, DROP, CFG.customerApproachExitM) > 50, `seed ${seed}: the trace does cross the edge`);
      const r = run(state, "EN_ROUTE", [...near, ...wander]);
      assert.deepEqual(customerSide(r.events), [APPROACHING_CUSTOMER], `seed ${seed}`);
      // It may confirm outside once (the driver did go beyond 1200 m) but never re-enters.
      const approach = r.transitions.filter((t) => t.startsWith("approach"));
      assert.ok(approach.length <= 2 && approach[0] === "approach:0>1" && (approach[1] ?? "approach:1>2") === "approach:1>2", `seed ${seed}: ${approach}`);
    }
  });

  it("around the arrive radius (60 m) at the customer: one APPROACHING then one ARRIVED_CUSTOMER", () => {
    for (const seed of SEEDS) {
      const fixes = wanderingTrace(seed, DROP, 30, 90, 30);
      assert.ok(naiveCrossings(fixes, DROP, CFG.customerArriveEnterM) > 50, `seed ${seed}: the trace does cross the edge`);
      const r = run(initialGeofenceState(), "EN_ROUTE", fixes);
      assert.deepEqual(customerSide(r.events), [APPROACHING_CUSTOMER, ARRIVED_CUSTOMER], `seed ${seed}`);
      assert.deepEqual(r.transitions.filter((t) => t.startsWith("arrive")), ["arrive:0>1"], `seed ${seed}`);
    }
  });

  it("a fence without hysteresis (enter = exit) does flap on the same traces: the radii are what prevents it", () => {
    const flat: GeofenceConfig = { ...CFG, restaurantExitM: CFG.restaurantEnterM, dwellMs: 0 };
    const r = run(initialGeofenceState(), "READY_FOR_PICKUP", wanderingTrace(1, PICKUP, 30, 90, 30, 15, 0), flat);
    assert.ok(r.transitions.length > 20, `${r.transitions.length} transitions`);
    assert.equal(count(r.events, ARRIVED_RESTAURANT), 1, "and still fires once per assignment");
  });
});

describe("geofence: a delivery", () => {
  it("assigned -> restaurant -> pickup -> customer emits each crossing once, in order", () => {
    const state = initialGeofenceState();
    const start = offset(PICKUP, 2000, 200);
    let t = 0;
    const toRestaurant = drive(11, start, PICKUP, t);
    t = toRestaurant.at(-1)!.deviceTimeMs + 1000;
    const wait = stay(12, PICKUP, t, 300);
    t = wait.at(-1)!.deviceTimeMs + 1000;
    const pickedUpAt = t;
    const waitAfterPickup = stay(13, PICKUP, t, 20);
    t = waitAfterPickup.at(-1)!.deviceTimeMs + 1000;
    const toCustomer = drive(14, PICKUP, DROP, t);
    t = toCustomer.at(-1)!.deviceTimeMs + 1000;
    const atDoor = stay(15, DROP, t, 120);
    const fixes = [...toRestaurant, ...wait, ...waitAfterPickup, ...toCustomer, ...atDoor];
    const kinds: { kind: GeofenceKind; at: number }[] = [];
    for (const f of fixes) {
      const r = stepGeofence(state, targets(f.deviceTimeMs < pickedUpAt ? "READY_FOR_PICKUP" : "PICKED_UP"), f, CFG);
      for (const kind of r.events) kinds.push({ kind, at: f.deviceTimeMs });
    }
    assert.deepEqual(
      kinds.map((k) => k.kind),
      [ARRIVED_RESTAURANT, LEFT_RESTAURANT, APPROACHING_CUSTOMER, ARRIVED_CUSTOMER],
    );
    // Each crossing comes after the driver has been on the new side for the dwell time, not before.
    const arrivedAt = kinds[0]!.at;
    const firstInside = toRestaurant.find((f) => distM(f, PICKUP) + f.accuracyM <= CFG.restaurantEnterM)!.deviceTimeMs;
    assert.ok(arrivedAt - firstInside >= CFG.dwellMs, `arrived ${arrivedAt - firstInside} ms after first inside fix`);
    assert.ok(kinds[1]!.at > pickedUpAt);
    const firstBeyond = toCustomer.find((f) => distM(f, PICKUP) - f.accuracyM >= CFG.restaurantExitM)!.deviceTimeMs;
    assert.ok(kinds[1]!.at - firstBeyond >= CFG.dwellMs);
  });

  it("leaving the restaurant before pickup is not LEFT_RESTAURANT; leaving with the food is, once", () => {
    const state = initialGeofenceState();
    const away = offset(PICKUP, 600, 90);
    let t = 0;
    const a = stay(21, PICKUP, t, 60);
    t = 60_000;
    const b = drive(22, PICKUP, away, t); // round the block before the food is ready
    t = b.at(-1)!.deviceTimeMs + 1000;
    const c = drive(23, away, PICKUP, t);
    t = c.at(-1)!.deviceTimeMs + 1000;
    const d = stay(24, PICKUP, t, 60);
    const before = run(state, "READY_FOR_PICKUP", [...a, ...b, ...c, ...d]);
    assert.deepEqual(before.events, [ARRIVED_RESTAURANT]);
    t = d.at(-1)!.deviceTimeMs + 1000;
    const after = run(state, "PICKED_UP", drive(25, PICKUP, away, t));
    assert.deepEqual(after.events, [LEFT_RESTAURANT]);
  });

  it("first confirmed outside after pickup is LEFT_RESTAURANT (pickup confirmed before the first fix)", () => {
    const r = run(initialGeofenceState(), "PICKED_UP", stay(31, offset(PICKUP, 900, 10), 0, 30));
    assert.deepEqual(r.events, [LEFT_RESTAURANT]);
  });

  it("emits nothing for customer fences before pickup, and approach/arrive when the order is picked up there", () => {
    const state = initialGeofenceState();
    const near = offset(DROP, 20, 0);
    const pre = run(state, "PREPARING", stay(41, near, 0, 60));
    assert.deepEqual(pre.events, []);
    assert.equal(state.arrive.side, INSIDE, "the fence state is tracked all along");
    const post = run(state, "PICKED_UP", stay(42, near, 60_000, 5));
    assert.deepEqual(post.events, [LEFT_RESTAURANT, APPROACHING_CUSTOMER, ARRIVED_CUSTOMER]);
  });
});

describe("geofence: dwell", () => {
  const inside = (t: number): FenceFix => ({ ...PICKUP, accuracyM: 5, deviceTimeMs: t });
  const band = (t: number): FenceFix => ({ ...offset(PICKUP, 100, 0), accuracyM: 5, deviceTimeMs: t });
  const outside = (t: number): FenceFix => ({ ...offset(PICKUP, 400, 0), accuracyM: 5, deviceTimeMs: t });

  it("a crossing counts only after dwellMs on the new side", () => {
    const state = initialGeofenceState();
    assert.deepEqual(run(state, "CONFIRMED", [outside(0), outside(11_000)]).events, []);
    assert.equal(state.restaurant.side, OUTSIDE);
    assert.deepEqual(run(state, "CONFIRMED", [inside(20_000), inside(25_000), inside(29_999)]).events, []);
    assert.deepEqual(run(state, "CONFIRMED", [inside(30_000)]).events, [ARRIVED_RESTAURANT]);
  });

  it("a fix back on the old side resets the wait", () => {
    const state = initialGeofenceState();
    run(state, "CONFIRMED", [outside(0), outside(10_000)]);
    assert.equal(state.restaurant.side, OUTSIDE);
    // 9 s inside, one fix outside, 9 s inside again: never 10 s in a row.
    const r1 = run(state, "CONFIRMED", [inside(20_000), inside(29_000), outside(29_500), inside(30_000), inside(39_000)]);
    assert.deepEqual(r1.events, []);
    assert.equal(state.restaurant.side, OUTSIDE);
    assert.deepEqual(run(state, "CONFIRMED", [inside(40_000)]).events, [ARRIVED_RESTAURANT]);
  });

  it("fixes between the radii neither confirm nor reset the wait", () => {
    const state = initialGeofenceState();
    run(state, "CONFIRMED", [outside(0), outside(10_000)]);
    const r = run(state, "CONFIRMED", [inside(20_000), band(22_000), band(26_000), band(29_000)]);
    assert.deepEqual(r.events, []);
    assert.deepEqual(run(state, "CONFIRMED", [inside(30_000)]).events, [ARRIVED_RESTAURANT]);
  });

  it("ignores fixes older than the newest one seen", () => {
    const state = initialGeofenceState();
    run(state, "CONFIRMED", [inside(50_000)]);
    assert.deepEqual(run(state, "CONFIRMED", [inside(10_000), inside(70_000)]).events, [ARRIVED_RESTAURANT]);
    const s2 = initialGeofenceState();
    run(s2, "CONFIRMED", [inside(50_000)]);
    // A stale fix 40 s earlier must not make the dwell look satisfied or move the clock back.
    assert.deepEqual(run(s2, "CONFIRMED", [inside(0), inside(55_000)]).events, []);
  });
});

describe("geofence: accuracy", () => {
  it("low-accuracy fixes (accuracy beyond the enter radius) decide nothing, however long", () => {
    const state = initialGeofenceState();
    const fixes = stay(51, PICKUP, 0, 600, 4, 70); // at the door, but accuracy 70 m > 60 m
    assert.deepEqual(run(state, "READY_FOR_PICKUP", fixes).events, []);
    assert.equal(state.restaurant.side, UNKNOWN);
    // The same spot with good fixes arrives.
    assert.deepEqual(run(state, "READY_FOR_PICKUP", stay(52, PICKUP, 600_000, 15, 4, 8)).events, [ARRIVED_RESTAURANT]);
  });

  it("an inaccurate fix far away does not take the driver out of the restaurant fence", () => {
    const state = initialGeofenceState();
    run(state, "PICKED_UP", stay(53, PICKUP, 0, 15));
    assert.equal(state.restaurant.side, INSIDE);
    const far = offset(PICKUP, 3000, 0);
    assert.deepEqual(run(state, "PICKED_UP", stay(54, far, 20_000, 300, 4, 80)).events, []);
    assert.equal(state.restaurant.side, INSIDE);
    // 160 m with accuracy 20 m could still be 140 m: not outside.
    assert.deepEqual(run(state, "PICKED_UP", stay(55, offset(PICKUP, 160, 0), 400_000, 60, 0, 20)).events, []);
    assert.deepEqual(run(state, "PICKED_UP", stay(56, offset(PICKUP, 200, 0), 500_000, 15, 0, 20)).events, [LEFT_RESTAURANT]);
  });
});

describe("geofence: persisted state", () => {
  it("encodes sides and fired crossings, and a restored state never fires them again", () => {
    const state = initialGeofenceState();
    run(state, "PICKED_UP", stay(61, offset(DROP, 10, 0), 0, 30));
    const s = encodeGeofence(state);
    const restored = decodeGeofence(s)!;
    assert.equal(restored.restaurant.side, state.restaurant.side);
    assert.equal(restored.approach.side, state.approach.side);
    assert.equal(restored.arrive.side, state.arrive.side);
    assert.equal(restored.fired, state.fired);
    assert.deepEqual(run(restored, "EN_ROUTE", stay(62, offset(DROP, 10, 0), 100_000, 60)).events, []);
    for (const bad of ["", "x", "123:1", "0000:1", "000:", "000:-1", "012:99999"]) assert.equal(decodeGeofence(bad), undefined, bad);
  });
});

// ---------------------------------------------------------------------------------------------
// Property: whatever the fixes and however the order moves along its lifecycle, no crossing
// fires twice per assignment, crossings respect the status, and a side only changes on a fix
// that is clearly on the new side.

const STATUS_PATH = ["CONFIRMED", "PREPARING", "READY_FOR_PICKUP", "PICKED_UP", "EN_ROUTE"];

const arbStep = fc.record({
  around: fc.constantFrom("pickup", "drop"),
  distanceM: fc.oneof(fc.double({ min: 0, max: 250, noNaN: true }), fc.double({ min: 600, max: 1400, noNaN: true }), fc.double({ min: 0, max: 4000, noNaN: true })),
  bearing: fc.double({ min: 0, max: 360, noNaN: true }),
  accuracyM: fc.oneof(fc.double({ min: 0, max: 30, noNaN: true }), fc.double({ min: 0, max: 1000, noNaN: true })),
  dtMs: fc.oneof(fc.integer({ min: 0, max: 3000 }), fc.integer({ min: -2000, max: 30_000 })),
  advanceStatus: fc.boolean(),
  restore: fc.integer({ min: 0, max: 40 }),
});

describe("geofence: properties", () => {
  it("no crossing fires twice per assignment (also across persist/restore), and each respects the status and the radii", () => {
    fc.assert(
      fc.property(fc.array(arbStep, { minLength: 1, maxLength: 400 }), fc.integer({ min: 0, max: 20_000 }), (steps, dwellMs) => {
        const cfg = { ...CFG, dwellMs };
        let state = initialGeofenceState();
        let statusIdx = 0;
        let t = 0;
        const seen = new Set<GeofenceKind>();
        for (const s of steps) {
          if (s.advanceStatus && statusIdx < STATUS_PATH.length - 1 && (s.restore & 7) === 0) statusIdx++;
          // A process restart: only the persisted part survives.
          if (s.restore === 0) state = decodeGeofence(encodeGeofence(state))!;
          t += s.dtMs;
          const loc = offset(s.around === "pickup" ? PICKUP : DROP, s.distanceM, s.bearing);
          const fix = { ...loc, accuracyM: s.accuracyM, deviceTimeMs: t };
          const status = STATUS_PATH[statusIdx]!;
          const before = { r: state.restaurant.side, a: state.approach.side, c: state.arrive.side };
          const r = stepGeofence(state, targets(status), fix, cfg);
          for (const kind of r.events) {
            assert.ok(!seen.has(kind), `${GeofenceKind[kind]} fired twice`);
            seen.add(kind);
            if (kind === ARRIVED_RESTAURANT) assert.ok(statusIdx < 3);
            else assert.ok(statusIdx >= 3);
          }
          if (seen.has(ARRIVED_CUSTOMER)) assert.ok(seen.has(APPROACHING_CUSTOMER));
          const dP = distM(fix, PICKUP);
          const dD = distM(fix, DROP);
          const acc = s.accuracyM;
          const check = (was: number, now: number, d: number, enter: number, exit: number, name: string) => {
            if (was === now) return;
            if (now === INSIDE) assert.ok(d + acc <= enter + 0.01 && acc <= enter, `${name} entered on a fix at ${d} m +- ${acc}`);
            if (now === OUTSIDE) assert.ok(d - acc >= exit - 0.01 && acc <= enter, `${name} left on a fix at ${d} m +- ${acc}`);
          };
          check(before.r, state.restaurant.side, dP, cfg.restaurantEnterM, cfg.restaurantExitM, "restaurant");
          check(before.a, state.approach.side, dD, cfg.customerApproachEnterM, cfg.customerApproachExitM, "approach");
          check(before.c, state.arrive.side, dD, cfg.customerArriveEnterM, cfg.customerArriveExitM, "arrive");
        }
      }),
      { numRuns: 300 },
    );
  });
});
