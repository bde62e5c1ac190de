import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { PingSchema } from "../../gen/dabba/location/v1/location_pb.js";
import { newDriverTrack, validatePing, type StreamTrack } from "../../services/location/domain.js";
import { BAD_KINDS, EXPECTED_REASON, badPing, mixBadPings } from "../../services/location/sim/bad-pings.js";
import { SIM_LIMITS, createFleet, createRouteDriver, distanceM, timestampToMs, type SimPing } from "../../services/location/sim/drivers.js";
import { BENGALURU, cityAt, defaultLocationConfig, type City, type LocationConfig } from "../../services/platform/config.js";

const cfg: LocationConfig = { ...defaultLocationConfig, maxPingsPerSecond: 1000, pingBurst: 1000 };
const START = Date.UTC(2026, 0, 5, 9, 0, 0);

function stream(driverId: string, nowMs: number): StreamTrack {
  return { driver: newDriverTrack(driverId, nowMs, cfg), lastSequence: undefined };
}

/** Bearing in degrees clockwise from north from a to b. */
function bearing(a: { lat: number; lng: number }, b: { lat: number; lng: number }): number {
  const dy = (b.lat - a.lat) * 111_320;
  const dx = (b.lng - a.lng) * 111_320 * Math.cos((a.lat * Math.PI) / 180);
  const d = (Math.atan2(dx, dy) * 180) / Math.PI;
  return d < 0 ? d + 360 : d;
}
const angleDiff = (a: number, b: number) => Math.abs(((a - b + 540) % 360) - 180);

describe("location simulator: driver physics", () => {
  it("40 drivers over two simulated hours move like vehicles: speed, acceleration, heading, stops, GPS error", () => {
    const fleet = createFleet({ city: BENGALURU, drivers: 40, seed: 11, startMs: START });
    const dtMs = 1000;
    const prev = fleet.drivers.map((d) => d.truth());
    const prevPing: (SimPing | undefined)[] = fleet.drivers.map(() => undefined);
    let fixes = 0;
    let moving = 0;
    let stopped = 0;
    let headingChecked = 0;
    let degraded = 0;
    let maxErr = 0;
    const errOverAcc: number[] = [];
    for (let s = 0; s < 7200; s++) {
      const pings = fleet.step(dtMs);
      for (let k = 0; k < pings.length; k++) {
        const d = fleet.drivers[k]!;
        const p = pings[k]!;
        const t = d.truth();
        const before = prev[k]!;
        fixes++;
        // Speeds within the model's bounds; acceleration limited (braking a little harder than accelerating).
        assert.ok(t.speedMps >= 0 && t.speedMps <= SIM_LIMITS.maxSpeedMps + 1e-9, `speed ${t.speedMps}`);
        const accel = (t.speedMps - before.speedMps) / (dtMs / 1000);
        assert.ok(accel <= SIM_LIMITS.accelMps2 + 1e-6, `acceleration ${accel} m/s2`);
        assert.ok(accel >= -(SIM_LIMITS.maxBrakeMps2 + 1e-6), `deceleration ${accel} m/s2`);
        // A step never covers more ground than the top speed allows, and the odometer agrees with the displacement.
        const step = distanceM(before, t);
        assert.ok(step <= SIM_LIMITS.maxSpeedMps * (dtMs / 1000) + 0.01, `step ${step} m`);
        assert.ok(step <= t.odometerM - before.odometerM + 0.01, "displacement within the distance driven");
        if (t.speedMps > 0) moving++;
        else stopped++;
        // Reported heading follows the direction of travel within one street segment (no corner crossed).
        if (step > 8 && angleDiff(before.headingDeg, t.headingDeg) < 0.01) {
          assert.ok(angleDiff(p.headingDeg, bearing(before, t)) < 10, `heading ${p.headingDeg} vs travel ${bearing(before, t)}`);
          headingChecked++;
        }
        // Reported speed close to the true speed; values in range.
        assert.ok(Math.abs(p.speedMps - t.speedMps) < 1.5, `reported speed ${p.speedMps} vs ${t.speedMps}`);
        assert.ok(p.headingDeg >= 0 && p.headingDeg < 360);
        assert.ok(p.accuracyM > 0 && p.accuracyM <= 1.51 * 1.15 * SIM_LIMITS.maxSigmaM + 0.1, `accuracy ${p.accuracyM}`);
        if (p.accuracyM > 15) degraded++;
        // Fixes stay in the city; the error is of the size the accuracy claims.
        assert.ok(cityAt([BENGALURU], p.location.lat, p.location.lng), "fix inside the city");
        const err = distanceM(p.location, t);
        maxErr = Math.max(maxErr, err);
        errOverAcc.push(err / p.accuracyM);
        // Device time is the simulated clock, sequences count up.
        const pp = prevPing[k];
        assert.equal(timestampToMs(p.deviceTime), fleet.nowMs);
        if (pp) {
          assert.equal(p.sequence, pp.sequence + 1n);
          assert.ok(timestampToMs(p.deviceTime) > timestampToMs(pp.deviceTime));
        }
        prevPing[k] = p;
        prev[k] = t;
      }
    }
    assert.equal(fixes, 40 * 7200);
    // Plausible mix: drivers spend most time driving but do stop (lights, pickups, drop-offs).
    assert.ok(moving / fixes > 0.4 && moving / fixes < 0.95, `moving share ${moving / fixes}`);
    assert.ok(stopped / fixes > 0.05, `stopped share ${stopped / fixes}`);
    assert.ok(headingChecked > 1000, `heading checked ${headingChecked} times`);
    assert.ok(degraded > 0, "some fixes have degraded accuracy");
    // About 68 % of errors within the reported accuracy radius (it is a 68 % radius), none absurd.
    const within = errOverAcc.filter((r) => r <= 1).length / errOverAcc.length;
    assert.ok(within > 0.55 && within < 0.8, `share within accuracy ${within}`);
    assert.ok(maxErr < 200, `largest GPS error ${maxErr} m`);
  });

  it("is deterministic: the same seed gives the same fixes whatever the start time", () => {
    const run = (startMs: number) => {
      const f = createFleet({ city: BENGALURU, drivers: 5, seed: 3, startMs });
      const out: string[] = [];
      for (let i = 0; i < 300; i++) for (const p of f.step(1000)) out.push(`${p.location.lat.toFixed(7)},${p.location.lng.toFixed(7)},${p.accuracyM},${p.speedMps},${p.headingDeg}`);
      return out;
    };
    assert.deepEqual(run(START), run(START + 86_400_000));
    const other = createFleet({ city: BENGALURU, drivers: 5, seed: 4, startMs: START }).step(1000);
    assert.notEqual(other[0]!.location.lat, createFleet({ city: BENGALURU, drivers: 5, seed: 3, startMs: START }).step(1000)[0]!.location.lat);
  });

  it("keeps drivers inside a small configured city", () => {
    const small: City = { name: "tiny", centre: { lat: 12.3, lng: 76.6 }, bounds: { south: 12.27, west: 76.57, north: 12.33, east: 76.63 } };
    const fleet = createFleet({ city: small, drivers: 10, seed: 5, startMs: START });
    for (let i = 0; i < 3600; i++) {
      for (const d of fleet.drivers) {
        const t = d.truth();
        assert.ok(cityAt([small], t.lat, t.lng), `driver ${d.id} left the city at ${t.lat},${t.lng}`);
      }
      fleet.step(1000);
    }
  });

  it("route mode drives from A to B along streets and parks at B", () => {
    const restaurant = { lat: 12.9716, lng: 77.5946 };
    const customer = { lat: 12.9886, lng: 77.6104 };
    const d = createRouteDriver({ from: restaurant, to: customer, seed: 9, startMs: START, waitAtStartMs: 30_000 });
    let now = START;
    const straight = distanceM(restaurant, customer);
    let maxSpeed = 0;
    let firstMoveMs: number | undefined;
    while (!d.arrived && now < START + 3_600_000) {
      now += 1000;
      d.next(now);
      const t = d.truth();
      maxSpeed = Math.max(maxSpeed, t.speedMps);
      if (firstMoveMs === undefined && t.speedMps > 0) firstMoveMs = now;
    }
    assert.ok(d.arrived, "arrived within an hour");
    assert.ok(firstMoveMs !== undefined && firstMoveMs > START + 30_000 - 1000, "waited at the start");
    const t = d.truth();
    assert.ok(distanceM(t, customer) < 1, `parked at B (${distanceM(t, customer)} m away)`);
    assert.equal(t.speedMps, 0);
    // Streets are longer than the straight line, but not absurdly.
    assert.ok(t.odometerM >= straight && t.odometerM < straight * 1.8, `drove ${t.odometerM} m for ${straight} m straight`);
    assert.ok(maxSpeed > 7 && maxSpeed <= SIM_LIMITS.maxSpeedMps);
    // Parked: fixes keep coming, near B, speed 0.
    for (let i = 0; i < 60; i++) {
      now += 1000;
      const p = d.next(now);
      assert.equal(p.speedMps, 0);
      assert.ok(distanceM(p.location, customer) < 3 * p.accuracyM + 5);
    }
  });

  it("route mode visits waypoints in order (driver -> restaurant -> customer)", () => {
    const start = { lat: 12.96, lng: 77.58 };
    const restaurant = { lat: 12.9716, lng: 77.5946 };
    const customer = { lat: 12.98, lng: 77.6 };
    const d = createRouteDriver({ from: start, to: [restaurant, customer], seed: 2, startMs: START, dwellMs: 120_000 });
    let now = START;
    let atRestaurantMs = 0;
    while (!d.arrived && now < START + 3_600_000) {
      now += 1000;
      d.next(now);
      const t = d.truth();
      if (distanceM(t, restaurant) < 1 && t.speedMps === 0) atRestaurantMs += 1000;
    }
    assert.ok(d.arrived);
    assert.ok(atRestaurantMs >= 110_000, `dwelt ${atRestaurantMs} ms at the restaurant`);
    assert.ok(distanceM(d.truth(), customer) < 1);
  });
});

describe("location simulator: fixes pass validatePing", () => {
  it("accepts every fix of 60 drivers pinging every second for two simulated hours", () => {
    const fleet = createFleet({ city: BENGALURU, drivers: 60, seed: 21, startMs: START });
    const streams = fleet.drivers.map((d) => stream(d.id, START));
    const rejected = new Map<string, number>();
    let accepted = 0;
    for (let s = 0; s < 7200; s++) {
      const pings = fleet.step(1000);
      // The server receives each fix a little after the device took it.
      const now = fleet.nowMs + 150;
      for (let k = 0; k < pings.length; k++) {
        const r = validatePing(streams[k]!, create(PingSchema, pings[k]!), now, cfg);
        if (typeof r === "string") rejected.set(r, (rejected.get(r) ?? 0) + 1);
        else accepted++;
      }
    }
    assert.deepEqual(Object.fromEntries(rejected), {});
    assert.equal(accepted, 60 * 7200);
  });

  it("accepts fixes taken as fast as a load generator sends them (sub-second intervals, degraded accuracy included)", () => {
    const fleet = createFleet({ city: BENGALURU, drivers: 20, seed: 8, startMs: START });
    const streams = fleet.drivers.map((d) => stream(d.id, START));
    let now = START;
    let n = 0;
    for (let s = 0; s < 40_000; s++) {
      now += 1 + (s % 7) * 3; // 1-19 ms apart, across drivers in turn
      const k = s % 20;
      const r = validatePing(streams[k]!, create(PingSchema, fleet.drivers[k]!.next(now)), now, cfg);
      assert.equal(typeof r, "object", `fix ${s} of ${fleet.drivers[k]!.id} rejected: ${String(r)}`);
      n++;
    }
    assert.equal(n, 40_000);
  });

  it("accepts a route driver's fixes with clock skew within bounds", () => {
    const fleet = createFleet({ city: BENGALURU, drivers: 10, seed: 1, startMs: START, clockSkewMs: 3000 });
    const streams = fleet.drivers.map((d) => stream(d.id, START));
    for (let s = 0; s < 1800; s++) {
      const pings = fleet.step(2000);
      for (let k = 0; k < pings.length; k++) {
        const r = validatePing(streams[k]!, create(PingSchema, pings[k]!), fleet.nowMs, cfg);
        assert.equal(typeof r, "object", String(r));
      }
    }
  });
});

describe("location simulator: bad pings", () => {
  /** A stream that has accepted a few good fixes from a driver, and the driver. */
  function warmStream(seed: number) {
    const fleet = createFleet({ city: BENGALURU, drivers: 1, seed, startMs: START });
    const d = fleet.drivers[0]!;
    const st = stream(d.id, START);
    let last: SimPing | undefined;
    for (let i = 0; i < 30; i++) {
      last = fleet.step(1000)[0]!;
      assert.equal(typeof validatePing(st, create(PingSchema, last), fleet.nowMs, cfg), "object");
    }
    return { fleet, d, st, last: last! };
  }

  for (const kind of BAD_KINDS) {
    it(`${kind} is rejected as ${EXPECTED_REASON[kind]}, and the stream goes on accepting good fixes`, () => {
      for (const seed of [1, 2, 3, 4, 5]) {
        const { fleet, d, st, last } = warmStream(seed);
        const now = fleet.nowMs + 700;
        const bad = badPing(kind, { last, nowMs: now, cfg, nextSequence: () => d.takeSequence() });
        assert.equal(bad.reason, EXPECTED_REASON[kind]);
        const before = st.driver.last;
        const r = validatePing(st, create(PingSchema, bad.ping), now, cfg);
        assert.equal(r, bad.reason, `seed ${seed}`);
        assert.deepEqual(st.driver.last, before, "a rejected fix leaves the driver's last fix alone");
        const good = fleet.step(1000)[0]!;
        const g = validatePing(st, create(PingSchema, good), fleet.nowMs, cfg);
        assert.equal(typeof g, "object", `good fix after ${kind}: ${String(g)}`);
      }
    });
  }

  it("mixed streams: each bad ping gets its expected reason and every good one is accepted", () => {
    const fleet = createFleet({ city: BENGALURU, drivers: 25, seed: 99, startMs: START });
    const mixers = fleet.drivers.map((d, i) => mixBadPings(d, { ratio: 0.2, seed: i + 1, cfg }));
    const streams = fleet.drivers.map((d) => stream(d.id, START));
    const expected = new Map<string, number>();
    const got = new Map<string, number>();
    let good = 0;
    let now = START;
    for (let s = 0; s < 1200; s++) {
      now += 1000;
      for (let k = 0; k < mixers.length; k++) {
        const m = mixers[k]!.next(now);
        const r = validatePing(streams[k]!, create(PingSchema, m.ping), now + 100, cfg);
        if (m.good) {
          assert.equal(typeof r, "object", `good fix rejected: ${String(r)}`);
          good++;
        } else {
          expected.set(m.reason, (expected.get(m.reason) ?? 0) + 1);
          assert.equal(r, m.reason, `${m.kind}`);
          got.set(r as string, (got.get(r as string) ?? 0) + 1);
        }
      }
    }
    assert.deepEqual(got, expected);
    assert.equal(new Set(expected.keys()).size, new Set(Object.values(EXPECTED_REASON)).size, "every reason occurs");
    assert.ok(good > 20_000);
  });
});
