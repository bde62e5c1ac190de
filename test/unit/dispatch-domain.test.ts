import assert from "node:assert/strict";
import { mulberry32 } from "../../services/catalog/seed.js";
import fc from "fast-check";
import { defaultDispatchConfig, type DispatchConfig } from "../../services/platform/config.js";
import { EARTH_RADIUS_M } from "../../services/platform/redis.js";
import {
  acceptanceRate,
  bearingDeg,
  canStack,
  chooseDrivers,
  estimatedEarningsMinor,
  leadStartAtMs,
  nextRoundDelayMs,
  pickupDeadlineMs,
  radiusForAttempt,
  scoreCandidates,
  shouldFlag,
  travelSeconds,
  type Candidate,
  type CarriedOrder,
  type Point,
  type Scored,
} from "../../services/dispatch/domain.js";

const cfgWith = (over: Partial<DispatchConfig> = {}): DispatchConfig => ({ ...defaultDispatchConfig, ...over });
const MIN = 60_000;
const NOW = 1_700_000_000_000;
const PICKUP: Point = { lat: 12.97, lng: 77.59 };
/** Km per degree of latitude on Redis's sphere: points on one meridian are exactly this far apart. */
const KM_PER_DEG = (EARTH_RADIUS_M / 1000) * (Math.PI / 180);
const north = (p: Point, km: number): Point => ({ lat: p.lat + km / KM_PER_DEG, lng: p.lng });

function cand(over: Partial<Candidate> & { driverId: string }): Candidate {
  return {
    position: north(PICKUP, -1),
    distanceKm: 1,
    headingDeg: 0,
    speedMps: 0,
    vehicle: "car",
    offers: 0,
    carrying: [],
    accepts: 0,
    ...over,
  };
}

/** A rand that returns the given values in order and fails the test if asked for more. */
function scripted(...values: number[]): () => number {
  return () => {
    assert.ok(values.length > 0, "rand called more often than expected");
    return values.shift()!;
  };
}


const approx = (actual: number, expected: number, eps = 1e-9) =>
  assert.ok(Math.abs(actual - expected) <= eps, `expected ${expected}, got ${actual}`);

describe("dispatch domain: travel, acceptance, bearing", () => {
  it("travelSeconds is road km (straight km x detour) over the vehicle's speed", () => {
    const cfg = { speedMps: { bicycle: 5, scooter: 10, car: 8 }, detourFactor: 1.5 };
    assert.equal(travelSeconds(2, "bicycle", cfg), 600); // 3000 m at 5 m/s
    assert.equal(travelSeconds(2, "scooter", cfg), 300);
    assert.equal(travelSeconds(2, "car", cfg), 375);
    assert.equal(travelSeconds(0, "car", cfg), 0);
    approx(travelSeconds(1, "car", defaultDispatchConfig), 1300 / 7);
  });

  it("acceptanceRate is Laplace-smoothed: a new driver is at 0.5, never 0 or 1", () => {
    assert.equal(acceptanceRate(0, 0), 0.5);
    assert.equal(acceptanceRate(10, 10), 11 / 12);
    assert.equal(acceptanceRate(10, 0), 1 / 12);
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 10_000 }), fc.integer({ min: 0, max: 10_000 }), (a, b) => {
        const offers = Math.max(a, b);
        const accepts = Math.min(a, b);
        const r = acceptanceRate(offers, accepts);
        assert.ok(r > 0 && r < 1);
        if (accepts < offers) assert.ok(acceptanceRate(offers, accepts + 1) > r, "one more accept raises it");
      }),
    );
  });

  it("bearingDeg points clockwise from north", () => {
    const o = { lat: 0, lng: 0 };
    approx(bearingDeg(o, { lat: 1, lng: 0 }), 0);
    approx(bearingDeg(o, { lat: 0, lng: 1 }), 90);
    approx(bearingDeg(o, { lat: -1, lng: 0 }), 180);
    approx(bearingDeg(o, { lat: 0, lng: -1 }), 270);
    approx(bearingDeg(o, { lat: 1, lng: 1 }), 45, 0.01);
    // Great-circle, not flat: flying east from 60 N the initial bearing bends north of 90.
    assert.ok(bearingDeg({ lat: 60, lng: 0 }, { lat: 60, lng: 20 }) < 90);
  });

  it("bearingDeg always lands in [0, 360)", () => {
    const pt = fc.record({ lat: fc.double({ min: -89, max: 89, noNaN: true }), lng: fc.double({ min: -180, max: 180, noNaN: true }) });
    fc.assert(
      fc.property(pt, pt, (a, b) => {
        const d = bearingDeg(a, b);
        assert.ok(d >= 0 && d < 360, `bearing ${d}`);
      }),
    );
  });
});

describe("dispatch domain: scoreCandidates", () => {
  it("adds up the four weighted terms", () => {
    // Scooter 2.1 km: 2730 m at 8 m/s = 341.25 s = 5.6875 min; rate (5+1)/(8+2) = 0.6;
    // idle 15 of 30 min = 0.5; moving north straight at the restaurant: cos = 1.
    const c = cand({
      driverId: "d1",
      position: north(PICKUP, -2.1),
      distanceKm: 2.1,
      headingDeg: 0,
      speedMps: 5,
      vehicle: "scooter",
      offers: 8,
      accepts: 5,
      idleSinceMs: NOW - 15 * MIN,
    });
    const cfg = cfgWith({ weights: { eta: 1, acceptance: 2, idle: 1, heading: 0.5 }, idleCapMs: 30 * MIN, speedMps: { bicycle: 4, scooter: 8, car: 7 }, detourFactor: 1.3 });
    const [s] = scoreCandidates(PICKUP, [c], cfg, NOW);
    approx(s.pickupEtaS, 341.25);
    approx(s.acceptanceRate, 0.6);
    approx(s.idleS, 900);
    approx(s.headingCos, 1);
    approx(s.score, -5.6875 + 2 * 0.6 + 1 * 0.5 + 0.5 * 1);
    assert.equal(s.driverId, "d1");
    assert.equal(s.distanceKm, 2.1);
  });

  it("each weight scales only its own term", () => {
    const c = cand({ driverId: "d", distanceKm: 1, offers: 2, accepts: 1, idleSinceMs: NOW - 6 * MIN, speedMps: 3, headingDeg: 0 });
    const only = (w: Partial<DispatchConfig["weights"]>) =>
      scoreCandidates(PICKUP, [c], cfgWith({ weights: { eta: 0, acceptance: 0, idle: 0, heading: 0, ...w }, idleCapMs: 30 * MIN }), NOW)[0].score;
    approx(only({ eta: 2 }), -2 * (1300 / 7 / 60));
    approx(only({ acceptance: 3 }), 3 * 0.5);
    approx(only({ idle: 4 }), 4 * 0.2);
    approx(only({ heading: 5 }), 5 * 1);
    approx(only({}), 0);
  });

  it("ranks a better driver first on each single criterion", () => {
    const cfg = cfgWith();
    const rank = (a: Candidate, b: Candidate) => scoreCandidates(PICKUP, [b, a], cfg, NOW).map((s) => s.driverId);
    assert.deepEqual(rank(cand({ driverId: "near", distanceKm: 1 }), cand({ driverId: "far", distanceKm: 3 })), ["near", "far"]);
    assert.deepEqual(rank(cand({ driverId: "reliable", offers: 10, accepts: 9 }), cand({ driverId: "flaky", offers: 10, accepts: 1 })), ["reliable", "flaky"]);
    assert.deepEqual(rank(cand({ driverId: "waited", idleSinceMs: NOW - 20 * MIN }), cand({ driverId: "fresh", idleSinceMs: NOW - MIN })), ["waited", "fresh"]);
    assert.deepEqual(
      rank(cand({ driverId: "towards", speedMps: 6, headingDeg: 0 }), cand({ driverId: "away", speedMps: 6, headingDeg: 180 })),
      ["towards", "away"],
    );
  });

  it("caps idle time and treats unknown or future idle-since as zero", () => {
    const cfg = cfgWith({ weights: { eta: 0, acceptance: 0, idle: 1, heading: 0 }, idleCapMs: 30 * MIN });
    const [capped, atCap, unknown, future] = ["capped", "atCap", "unknown", "future"].map(
      (id) =>
        scoreCandidates(
          PICKUP,
          [cand({ driverId: id, idleSinceMs: { capped: NOW - 120 * MIN, atCap: NOW - 30 * MIN, unknown: undefined, future: NOW + MIN }[id] })],
          cfg,
          NOW,
        )[0],
    );
    assert.equal(capped.score, 1);
    assert.equal(atCap.score, 1);
    assert.equal(capped.idleS, 7200, "idleS itself is not capped");
    assert.equal(unknown.score, 0);
    assert.equal(unknown.idleS, 0);
    assert.equal(future.score, 0);
    assert.equal(future.idleS, 0);
  });

  it("uses heading only for moving drivers, as the cosine to the restaurant's bearing", () => {
    const cfg = cfgWith();
    // The driver is due south of the restaurant, so the bearing to it is 0 (north).
    const h = (headingDeg: number, speedMps: number) => scoreCandidates(PICKUP, [cand({ driverId: "d", headingDeg, speedMps })], cfg, NOW)[0].headingCos;
    approx(h(0, 5), 1);
    approx(h(180, 5), -1);
    approx(h(90, 5), 0, 1e-9);
    approx(h(60, 5), 0.5, 1e-9);
    approx(h(300, 5), 0.5, 1e-9);
    assert.equal(h(180, 0.9), 0, "slower than 1 m/s: heading is noise");
    assert.equal(h(180, 1), -1, "1 m/s counts as moving");
    assert.equal(h(Number.NaN, 5), 0, "unknown heading");
    const atDoor = scoreCandidates(PICKUP, [cand({ driverId: "d", position: PICKUP, distanceKm: 0, headingDeg: 180, speedMps: 5 })], cfg, NOW)[0];
    assert.equal(atDoor.headingCos, 0, "at the restaurant there is no direction to face");
  });

  it("breaks score ties by smaller distance, then by driverId", () => {
    // eta weight 0: distance does not change the score, only the tie-break.
    const cfg = cfgWith({ weights: { eta: 0, acceptance: 1, idle: 0, heading: 0 } });
    const out = scoreCandidates(
      PICKUP,
      [cand({ driverId: "b", distanceKm: 2 }), cand({ driverId: "c", distanceKm: 1 }), cand({ driverId: "a", distanceKm: 2 }), cand({ driverId: "B", distanceKm: 2 })],
      cfg,
      NOW,
    );
    assert.deepEqual(
      out.map((s) => s.driverId),
      ["c", "B", "a", "b"],
    );
  });

  it("degraded mode ranks nearest first by -distanceKm and still fills every field", () => {
    const cfg = cfgWith();
    const out = scoreCandidates(
      PICKUP,
      [
        cand({ driverId: "great-but-far", distanceKm: 3, offers: 100, accepts: 100, idleSinceMs: NOW - 60 * MIN, speedMps: 5 }),
        cand({ driverId: "poor-but-near", distanceKm: 0.5, offers: 100, accepts: 0 }),
      ],
      cfg,
      NOW,
      true,
    );
    assert.deepEqual(
      out.map((s) => [s.driverId, s.score]),
      [
        ["poor-but-near", -0.5],
        ["great-but-far", -3],
      ],
    );
    approx(out[1].pickupEtaS, (3 * 1300) / 7);
    approx(out[1].acceptanceRate, 101 / 102);
    assert.equal(out[1].idleS, 3600);
    approx(out[1].headingCos, 1);
  });

  it("always returns every candidate sorted best first", () => {
    const c = fc.record({
      driverId: fc.string({ maxLength: 3 }),
      distanceKm: fc.double({ min: 0, max: 10, noNaN: true }),
      headingDeg: fc.double({ min: 0, max: 360, noNaN: true }),
      speedMps: fc.double({ min: 0, max: 20, noNaN: true }),
      vehicle: fc.constantFrom("bicycle" as const, "scooter" as const, "car" as const),
      offers: fc.integer({ min: 0, max: 50 }),
      accepts: fc.integer({ min: 0, max: 50 }),
      idleMin: fc.option(fc.integer({ min: -5, max: 90 })),
      south: fc.double({ min: -10, max: 10, noNaN: true }),
    });
    fc.assert(
      fc.property(fc.array(c, { maxLength: 12 }), fc.boolean(), (cs, degraded) => {
        const cands = cs.map((x) =>
          cand({ ...x, position: north(PICKUP, x.south), idleSinceMs: x.idleMin === null ? undefined : NOW - x.idleMin * MIN }),
        );
        const out = scoreCandidates(PICKUP, cands, cfgWith(), NOW, degraded);
        assert.equal(out.length, cands.length);
        for (const s of out) assert.ok(Number.isFinite(s.score));
        for (let i = 1; i < out.length; i++) {
          const [a, b] = [out[i - 1], out[i]];
          assert.ok(a.score > b.score || (a.score === b.score && (a.distanceKm < b.distanceKm || (a.distanceKm === b.distanceKm && a.driverId <= b.driverId))));
        }
      }),
    );
  });
});

describe("dispatch domain: chooseDrivers", () => {
  const s = (id: string): Scored => ({ driverId: id, score: 0, distanceKm: 0, pickupEtaS: 0, acceptanceRate: 0.5, idleS: 0, headingCos: 0, carrying: [] });
  const five = ["s0", "s1", "s2", "s3", "s4"].map(s);
  const ids = (xs: Scored[]) => xs.map((x) => x.driverId);

  it("takes the first n without exploration, and does not draw rand when the share is 0", () => {
    assert.deepEqual(ids(chooseDrivers(five, 2, 0, scripted())), ["s0", "s1"]);
    assert.deepEqual(ids(chooseDrivers(five, 9, 0, scripted())), ["s0", "s1", "s2", "s3", "s4"]);
    assert.deepEqual(ids(chooseDrivers(five, 0, 0.5, scripted())), []);
    assert.deepEqual(ids(chooseDrivers([], 3, 0.5, scripted())), []);
  });

  it("does not explore when rand() >= share", () => {
    assert.deepEqual(ids(chooseDrivers(five, 3, 0.3, scripted(0.3))), ["s0", "s1", "s2"]);
    assert.deepEqual(ids(chooseDrivers(five, 3, 0.3, scripted(0.99))), ["s0", "s1", "s2"]);
  });

  it("explores by putting a uniformly drawn one of the top 3 first, keeping the rest in order", () => {
    assert.deepEqual(ids(chooseDrivers(five, 3, 0.3, scripted(0.1, 0.7))), ["s2", "s0", "s1"]);
    assert.deepEqual(ids(chooseDrivers(five, 3, 0.3, scripted(0.1, 0.4))), ["s1", "s0", "s2"]);
    assert.deepEqual(ids(chooseDrivers(five, 3, 0.3, scripted(0.1, 0))), ["s0", "s1", "s2"]);
    assert.deepEqual(ids(chooseDrivers(five, 1, 0.3, scripted(0.1, 0.7))), ["s2"]);
    assert.deepEqual(ids(chooseDrivers(five, 4, 1, scripted(0.5, 0.99))), ["s2", "s0", "s1", "s3"]);
  });

  it("explores among fewer than 3 when fewer are scored", () => {
    const two = [s("a"), s("b")];
    assert.deepEqual(ids(chooseDrivers(two, 2, 0.5, scripted(0.1, 0.99))), ["b", "a"]);
    assert.deepEqual(ids(chooseDrivers(two, 2, 0.5, scripted(0.1, 0.49))), ["a", "b"]);
    assert.deepEqual(ids(chooseDrivers([s("only")], 3, 1, scripted(0, 0.99))), ["only"]);
  });

  it("never offers one driver twice", () => {
    const dup = [s("a"), s("a"), s("b"), s("c")];
    assert.deepEqual(ids(chooseDrivers(dup, 3, 0, scripted())), ["a", "b", "c"]);
    assert.deepEqual(ids(chooseDrivers(dup, 3, 1, scripted(0, 0.5))), ["b", "a", "c"]);
  });

  it("explores at the configured share, spread evenly over the top 3 (seeded)", () => {
    const rand = mulberry32(1234);
    const firsts = new Map<string, number>();
    const runs = 30_000;
    for (let i = 0; i < runs; i++) {
      const [first] = chooseDrivers(five, 1, 0.3, rand);
      firsts.set(first.driverId, (firsts.get(first.driverId) ?? 0) + 1);
    }
    // Best first: 70% plus a third of the 30% exploring; s1 and s2 a tenth each; never s3/s4.
    approx(firsts.get("s0")! / runs, 0.8, 0.01);
    approx(firsts.get("s1")! / runs, 0.1, 0.01);
    approx(firsts.get("s2")! / runs, 0.1, 0.01);
    assert.equal(firsts.get("s3"), undefined);
    assert.equal(firsts.get("s4"), undefined);
  });
});

describe("dispatch domain: rounds, radius, flag", () => {
  it("widens the radius every roundsPerRadius rounds and stays at the widest", () => {
    const cfg = { radiiKm: [5, 10], roundsPerRadius: 3 };
    assert.deepEqual(
      [0, 1, 2, 3, 4, 5, 6, 50].map((a) => radiusForAttempt(a, cfg)),
      [5, 5, 5, 10, 10, 10, 10, 10],
    );
    const three = { radiiKm: [2, 5, 10], roundsPerRadius: 2 };
    assert.deepEqual(
      [0, 1, 2, 3, 4, 5, 1000].map((a) => radiusForAttempt(a, three)),
      [2, 2, 5, 5, 10, 10, 10],
    );
    assert.equal(radiusForAttempt(7, { radiiKm: [3], roundsPerRadius: 1 }), 3);
  });

  it("retries slowly once flagged", () => {
    const cfg = { retryMs: 2_000, slowRetryMs: 30_000 };
    assert.equal(nextRoundDelayMs(false, cfg), 2_000);
    assert.equal(nextRoundDelayMs(true, cfg), 30_000);
  });

  it("flags exactly when flagAfterMs has passed since confirmation", () => {
    const cfg = { flagAfterMs: 5 * MIN };
    assert.equal(shouldFlag(NOW, NOW, cfg), false);
    assert.equal(shouldFlag(NOW, NOW + 5 * MIN - 1, cfg), false);
    assert.equal(shouldFlag(NOW, NOW + 5 * MIN, cfg), true);
    assert.equal(shouldFlag(NOW, NOW + 60 * MIN, cfg), true);
  });
});

describe("dispatch domain: lead time, pickup deadline, earnings", () => {
  it("starts dispatch so the driver arrives leadBufferMs before the food is ready", () => {
    const cfg = { leadBufferMs: 2 * MIN };
    // Ready in 20 min, driver 5 min away, 2 min buffer: start in 13 min.
    assert.equal(leadStartAtMs(NOW + 20 * MIN, 300, NOW, cfg), NOW + 13 * MIN);
    // Too late for that already: start now, never in the past.
    assert.equal(leadStartAtMs(NOW + 6 * MIN, 300, NOW, cfg), NOW);
    assert.equal(leadStartAtMs(NOW - 10 * MIN, 0, NOW, cfg), NOW);
    // Whole milliseconds, rounded towards starting earlier.
    assert.equal(leadStartAtMs(NOW + 20 * MIN, 300.0005, NOW, cfg), NOW + 13 * MIN - 1);
  });

  it("starts at once when lead time is disabled (leadBufferMs 0)", () => {
    assert.equal(leadStartAtMs(NOW + 60 * MIN, 60, NOW, { leadBufferMs: 0 }), NOW);
  });

  it("sets the pickup deadline from the later of arrival and food ready, plus grace", () => {
    const cfg = { pickupGraceMs: 10 * MIN };
    // Driver 10 min away, food ready in 5: arrival decides.
    assert.equal(pickupDeadlineMs(NOW, 600, NOW + 5 * MIN, cfg), NOW + 20 * MIN);
    // Driver 2 min away, food ready in 15: the kitchen decides.
    assert.equal(pickupDeadlineMs(NOW, 120, NOW + 15 * MIN, cfg), NOW + 25 * MIN);
    // Fractional travel rounds later, never earlier.
    assert.equal(pickupDeadlineMs(NOW, 0.0004, NOW - MIN, cfg), NOW + 10 * MIN + 1);
  });

  it("estimates earnings as fee + tip + 20 minor units per km, rounded", () => {
    assert.equal(estimatedEarningsMinor(4000, 500, 1.2, 3.3), 4000 + 500 + 90);
    assert.equal(estimatedEarningsMinor(0, 0, 0, 0), 0);
    assert.equal(estimatedEarningsMinor(100, 0, 0.02, 0), 100); // 0.4 rounds down
    assert.equal(estimatedEarningsMinor(100, 0, 0.03, 0), 101); // 0.6 rounds up
  });
});

describe("dispatch domain: canStack", () => {
  const R: Point = { lat: 12.95, lng: 77.6 };
  // car, 1.3 detour, 7 m/s: one straight km is 1300/7 s.
  const cfg = cfgWith({ stackSize: 2, stackReadyWindowMs: 5 * MIN, stackMaxDelayMs: 10 * MIN, speedMps: { bicycle: 4, scooter: 8, car: 7 }, detourFactor: 1.3 });
  const kmMs = (1300 / 7) * 1000;
  const first = (over: Partial<CarriedOrder> = {}): CarriedOrder => ({
    orderId: "o1",
    restaurantId: "r1",
    readyAtMs: NOW,
    pickup: R,
    dropoff: north(R, 5),
    pickedUp: false,
    ...over,
  });
  const next = (over: Partial<{ restaurantId: string; readyAtMs: number; dropoff: Point }> = {}) => ({
    restaurantId: "r1",
    readyAtMs: NOW + 3 * MIN,
    pickup: R,
    dropoff: north(R, 1),
    ...over,
  });

  it("allows a plain single offer when nothing is carried", () => {
    assert.deepEqual(canStack([], next(), "car", cfgWith({ stackSize: 1 })), { ok: true, reason: "ok", delayMs: 0 });
  });

  it("refuses a full stack", () => {
    const r = canStack([first()], next(), "car", cfgWith({ stackSize: 1 }));
    assert.equal(r.ok, false);
    assert.equal(r.reason, "stack full");
    const three = canStack([first(), first({ orderId: "o2" })], next(), "car", cfgWith({ stackSize: 3 }));
    assert.equal(three.ok, true, "a third order fits a stack of 3");
    assert.equal(canStack([first(), first({ orderId: "o2" })], next(), "car", cfg).reason, "stack full");
  });

  it("refuses an order from another restaurant, even if only one carried order differs", () => {
    assert.equal(canStack([first({ restaurantId: "r2" })], next(), "car", cfg).reason, "different restaurant");
    const r = canStack([first(), first({ orderId: "o2", restaurantId: "r2" })], next(), "car", cfgWith({ stackSize: 3 }));
    assert.deepEqual([r.ok, r.reason], [false, "different restaurant"]);
  });

  it("refuses once a carried order has been picked up", () => {
    const r = canStack([first({ pickedUp: true })], next(), "car", cfg);
    assert.deepEqual([r.ok, r.reason], [false, "already picked up"]);
  });

  it("refuses an order not ready within the window of the first, on either side", () => {
    assert.equal(canStack([first()], next({ readyAtMs: NOW + 5 * MIN }), "car", cfg).ok, true, "exactly the window");
    const late = canStack([first()], next({ readyAtMs: NOW + 5 * MIN + 1 }), "car", cfg);
    assert.deepEqual([late.ok, late.reason], [false, "not ready within window"]);
    assert.equal(late.delayMs, 5 * MIN + 1, "the delay is still reported");
    const early = canStack([first()], next({ readyAtMs: NOW - 5 * MIN - 1 }), "car", cfg);
    assert.deepEqual([early.ok, early.reason], [false, "not ready within window"]);
  });

  it("delays the first order only by the wait when its dropoff comes first", () => {
    // next's dropoff is 8 km south, first's 5 km north: cheaper to drop the first order first.
    const r = canStack([first()], next({ dropoff: north(R, -8) }), "car", cfg);
    assert.deepEqual(r, { ok: true, reason: "ok", delayMs: 3 * MIN });
    // Ready before the first order: no wait at all.
    assert.equal(canStack([first()], next({ readyAtMs: NOW - MIN, dropoff: north(R, -8) }), "car", cfg).delayMs, 0);
  });

  it("adds no detour when the second dropoff lies on the way", () => {
    // 1 km north on the way to 5 km north: dropping next first costs the first order nothing extra.
    const r = canStack([first()], next(), "car", cfg);
    assert.equal(r.ok, true);
    approx(r.delayMs, 3 * MIN, 1);
  });

  it("adds the detour when the nearer second dropoff lies off the way", () => {
    // next 1 km south, first 5 km north: next first is cheaper (1 + 6 km vs 5 + 6 km), and
    // costs the first order 1 + 6 - 5 = 2 km of driving on top of the 3 min wait.
    const expected = 3 * MIN + 2 * kmMs;
    const r = canStack([first()], next({ dropoff: north(R, -1) }), "car", cfg);
    assert.equal(r.ok, true);
    approx(r.delayMs, expected, 1);
    const tight = canStack([first()], next({ dropoff: north(R, -1) }), "car", { ...cfg, stackMaxDelayMs: 9 * MIN });
    assert.deepEqual([tight.ok, tight.reason], [false, "delays first delivery"]);
    approx(tight.delayMs, expected, 1);
    // A bicycle takes longer over the same detour: 2 km at 4 m/s x 1.3 = 650 s.
    approx(canStack([first()], next({ dropoff: north(R, -1) }), "bicycle", cfg).delayMs, 3 * MIN + 650_000, 1);
  });

  it("refuses a wait longer than the allowed delay even inside the ready window", () => {
    const r = canStack([first()], next({ readyAtMs: NOW + 4 * MIN, dropoff: north(R, -8) }), "car", { ...cfg, stackMaxDelayMs: 3 * MIN });
    assert.deepEqual(r, { ok: false, reason: "delays first delivery", delayMs: 4 * MIN });
  });
});
