import assert from "node:assert/strict";
import fc from "fast-check";
import { defaultLocationConfig, type City, type LocationConfig } from "../../services/platform/config.js";
import {
  PingCounts,
  REJECT_REASONS,
  impliedSpeedMps,
  newDriverTrack,
  takeToken,
  timestampMs,
  validatePing,
  type PingLike,
  type StreamTrack,
} from "../../services/location/domain.js";
import type { AcceptedFix } from "../../services/location/types.js";

const NOW = 1_800_000_000_000;
const MG_ROAD = { lat: 12.9756, lng: 77.606 };
const MYSURU: City = { name: "mysuru", centre: { lat: 12.2958, lng: 76.6394 }, bounds: { south: 12.2, west: 76.55, north: 12.4, east: 76.75 } };
const cfg: LocationConfig = { ...defaultLocationConfig, cities: [...defaultLocationConfig.cities, MYSURU] };

/** Metres per degree of latitude (close enough for test geometry at city scale). */
const M_PER_DEG = 111_320;
function north(p: { lat: number; lng: number }, metres: number) {
  return { lat: p.lat + metres / M_PER_DEG, lng: p.lng };
}

function ts(ms: number) {
  return { seconds: BigInt(Math.floor(ms / 1000)), nanos: (ms % 1000) * 1_000_000 };
}

function ping(o: Partial<PingLike> & { at?: number; seq?: number; pos?: { lat: number; lng: number } } = {}): PingLike {
  return {
    location: "location" in o ? o.location : (o.pos ?? MG_ROAD),
    accuracyM: o.accuracyM ?? 5,
    speedMps: o.speedMps ?? 8,
    headingDeg: o.headingDeg ?? 90,
    deviceTime: "deviceTime" in o ? o.deviceTime : ts(o.at ?? NOW),
    sequence: o.sequence ?? BigInt(o.seq ?? 1),
  };
}

function stream(c: LocationConfig = cfg, driverId = "d1"): StreamTrack {
  return { driver: newDriverTrack(driverId, NOW, c), lastSequence: undefined };
}

function accepted(r: AcceptedFix | string): AcceptedFix {
  assert.equal(typeof r, "object", `expected acceptance, got ${String(r)}`);
  return r as AcceptedFix;
}

describe("location domain: validatePing", () => {
  it("accepts a plausible fix and returns it in service units", () => {
    const s = stream();
    const f = accepted(validatePing(s, ping({ at: NOW - 1500, seq: 7, accuracyM: 4.5, speedMps: 9.5, headingDeg: 359.9 }), NOW, cfg));
    assert.deepEqual(f, {
      driverId: "d1",
      city: "bengaluru",
      lat: MG_ROAD.lat,
      lng: MG_ROAD.lng,
      accuracyM: 4.5,
      speedMps: 9.5,
      headingDeg: 359.9,
      deviceTimeMs: NOW - 1500,
      receivedAtMs: NOW,
      sequence: 7n,
    });
    assert.deepEqual(s.driver.last, { lat: MG_ROAD.lat, lng: MG_ROAD.lng, accuracyM: 4.5, deviceTimeMs: NOW - 1500, city: "bengaluru" });
    assert.equal(s.lastSequence, 7n);
  });

  it("indexes a fix under the configured city containing it", () => {
    assert.equal(accepted(validatePing(stream(), ping({ pos: MYSURU.centre }), NOW, cfg)).city, "mysuru");
  });

  it("rejects a ping without location or device time as missing_field", () => {
    assert.equal(validatePing(stream(), ping({ location: undefined }), NOW, cfg), "missing_field");
    assert.equal(validatePing(stream(), ping({ deviceTime: undefined }), NOW, cfg), "missing_field");
  });

  it("rejects non-finite or out-of-range coordinates as invalid_coordinates", () => {
    for (const location of [
      { lat: NaN, lng: 77.6 },
      { lat: 12.9, lng: NaN },
      { lat: Infinity, lng: 77.6 },
      { lat: 90.0001, lng: 77.6 },
      { lat: -90.5, lng: 77.6 },
      { lat: 12.9, lng: 180.01 },
      { lat: 12.9, lng: -Infinity },
    ]) {
      assert.equal(validatePing(stream(), ping({ location }), NOW, cfg), "invalid_coordinates", JSON.stringify(location));
    }
  });

  it("rejects negative or non-finite accuracy or speed, and headings outside [0, 360), as invalid_value", () => {
    const bad: Partial<PingLike>[] = [
      { accuracyM: -1 },
      { accuracyM: NaN },
      { accuracyM: Infinity },
      { speedMps: -0.1 },
      { speedMps: NaN },
      { speedMps: Infinity },
      { headingDeg: 360 },
      { headingDeg: -1 },
      { headingDeg: NaN },
      { deviceTime: { seconds: BigInt(NOW / 1000), nanos: 1_000_000_000 } },
      { deviceTime: { seconds: BigInt(NOW / 1000), nanos: -1 } },
    ];
    for (const b of bad) assert.equal(validatePing(stream(), ping(b), NOW, cfg), "invalid_value", String(Object.values(b)[0]));
    accepted(validatePing(stream(), ping({ headingDeg: 0, speedMps: 0, accuracyM: 0 }), NOW, cfg));
  });

  it("rejects accuracy beyond maxAccuracyM as low_accuracy, the bound itself passes", () => {
    assert.equal(validatePing(stream(), ping({ accuracyM: cfg.maxAccuracyM + 0.5 }), NOW, cfg), "low_accuracy");
    accepted(validatePing(stream(), ping({ accuracyM: cfg.maxAccuracyM }), NOW, cfg));
  });

  it("rejects device times too far in the future or too old, with the bounds inclusive", () => {
    assert.equal(validatePing(stream(), ping({ at: NOW + cfg.maxFutureMs + 1 }), NOW, cfg), "too_far_in_future");
    assert.equal(validatePing(stream(), ping({ deviceTime: { seconds: 10n ** 15n, nanos: 0 } }), NOW, cfg), "too_far_in_future");
    accepted(validatePing(stream(), ping({ at: NOW + cfg.maxFutureMs }), NOW, cfg));
    assert.equal(validatePing(stream(), ping({ at: NOW - cfg.maxPastMs - 1 }), NOW, cfg), "too_old");
    assert.equal(validatePing(stream(), ping({ deviceTime: { seconds: 0n, nanos: 0 } }), NOW, cfg), "too_old");
    accepted(validatePing(stream(), ping({ at: NOW - cfg.maxPastMs }), NOW, cfg));
  });

  it("rejects a sequence number not above the last seen on the stream as duplicate_sequence", () => {
    const s = stream();
    accepted(validatePing(s, ping({ seq: 5, at: NOW - 3000 }), NOW, cfg));
    assert.equal(validatePing(s, ping({ seq: 5, at: NOW - 2000 }), NOW, cfg), "duplicate_sequence");
    assert.equal(validatePing(s, ping({ seq: 4, at: NOW - 2000 }), NOW, cfg), "duplicate_sequence");
    // A well-formed but rejected ping's sequence counts as seen: its resend is a duplicate.
    assert.equal(validatePing(s, ping({ seq: 6, at: NOW - 3000 }), NOW, cfg), "out_of_order");
    assert.equal(validatePing(s, ping({ seq: 6, at: NOW - 1000 }), NOW, cfg), "duplicate_sequence");
    accepted(validatePing(s, ping({ seq: 7, at: NOW - 1000 }), NOW, cfg));
    // Sequences are per stream: a new stream of the same driver may start anywhere.
    const s2: StreamTrack = { driver: s.driver, lastSequence: undefined };
    accepted(validatePing(s2, ping({ seq: 1, at: NOW - 500 }), NOW, cfg));
  });

  it("rejects a fix not newer than the driver's last accepted one as out_of_order, across the driver's streams", () => {
    const s = stream();
    accepted(validatePing(s, ping({ seq: 1, at: NOW - 1000 }), NOW, cfg));
    assert.equal(validatePing(s, ping({ seq: 2, at: NOW - 1000 }), NOW, cfg), "out_of_order", "same time is a duplicate fix");
    assert.equal(validatePing(s, ping({ seq: 3, at: NOW - 5000 }), NOW, cfg), "out_of_order");
    const other: StreamTrack = { driver: s.driver, lastSequence: undefined };
    assert.equal(validatePing(other, ping({ seq: 100, at: NOW - 2000 }), NOW, cfg), "out_of_order");
    accepted(validatePing(other, ping({ seq: 101, at: NOW - 999 }), NOW, cfg));
  });

  it("rejects a fix outside every configured city as outside_service_area", () => {
    assert.equal(validatePing(stream(), ping({ pos: { lat: 51.5072, lng: -0.1276 } }), NOW, cfg), "outside_service_area");
    assert.equal(validatePing(stream(), ping({ pos: { lat: 0, lng: 0 } }), NOW, cfg), "outside_service_area");
  });

  it("rejects a jump implying more than maxSpeedMps as impossible_speed and keeps the previous fix", () => {
    const s = stream();
    accepted(validatePing(s, ping({ seq: 1, at: NOW - 10_000 }), NOW, cfg));
    // 2 km in 10 s = 200 m/s.
    assert.equal(validatePing(s, ping({ seq: 2, at: NOW, pos: north(MG_ROAD, 2000) }), NOW, cfg), "impossible_speed");
    assert.equal(s.driver.last!.lat, MG_ROAD.lat, "the spoofed fix did not become the last one");
    // Bengaluru to Mysuru (~130 km) in a minute.
    assert.equal(validatePing(s, ping({ seq: 3, at: NOW, pos: MYSURU.centre }), NOW, cfg), "impossible_speed");
    // 300 m in 10 s = 30 m/s is plausible.
    accepted(validatePing(s, ping({ seq: 4, at: NOW, pos: north(MG_ROAD, 300) }), NOW, cfg));
  });

  it("gives GPS jitter the benefit of the accuracy radii", () => {
    const s = stream();
    accepted(validatePing(s, ping({ seq: 1, at: NOW - 1000, accuracyM: 40 }), NOW, cfg));
    // 100 m in 200 ms would be 500 m/s, but with 40 m + 40 m of accuracy only 20 m are certain: 100 m/s.
    assert.equal(validatePing(s, ping({ seq: 2, at: NOW - 800, accuracyM: 40, pos: north(MG_ROAD, 100) }), NOW, cfg), "impossible_speed");
    // 70 m in 200 ms with 40 + 40 m accuracy: inside the noise, accepted.
    accepted(validatePing(s, ping({ seq: 3, at: NOW - 800, accuracyM: 40, pos: north(MG_ROAD, 70) }), NOW, cfg));
    assert.equal(impliedSpeedMps({ ...MG_ROAD, accuracyM: 10, deviceTimeMs: 0, city: "x" }, { ...north(MG_ROAD, 15), accuracyM: 10 }, 1), 0);
    const v = impliedSpeedMps({ ...MG_ROAD, accuracyM: 10, deviceTimeMs: 0, city: "x" }, { ...north(MG_ROAD, 1020), accuracyM: 10 }, 10_000);
    assert.ok(Math.abs(v - 100) < 0.5, `${v}`);
  });

  it("rate-limits a driver with a token bucket shared by its streams", () => {
    const c: LocationConfig = { ...cfg, maxPingsPerSecond: 2, pingBurst: 3 };
    const a = stream(c);
    const b: StreamTrack = { driver: a.driver, lastSequence: undefined };
    let seq = 0;
    let t = NOW - 60_000;
    const next = (s: StreamTrack, now: number) => validatePing(s, ping({ seq: ++seq, at: (t += 100) }), now, c);
    accepted(next(a, NOW));
    accepted(next(b, NOW));
    accepted(next(a, NOW));
    assert.equal(next(b, NOW), "rate_limited");
    assert.equal(next(a, NOW), "rate_limited");
    // Half a second refills one token (2 per second).
    accepted(next(b, NOW + 500));
    assert.equal(next(a, NOW + 500), "rate_limited");
    // A long pause refills only up to the burst.
    for (let i = 0; i < 3; i++) accepted(next(a, NOW + 100_000));
    assert.equal(next(a, NOW + 100_000), "rate_limited");
    // A rejected-for-another-reason ping costs no token.
    const d = stream(c, "d2");
    for (let i = 0; i < 10; i++) assert.equal(validatePing(d, ping({ seq: i + 1, accuracyM: 1000 }), NOW, c), "low_accuracy");
    assert.equal(d.driver.bucket.tokens, 3);
  });

  it("never accepts a fix that breaks a rule, and accepts every plausible trace (property)", () => {
    const city = cfg.cities[0]!;
    const b = city.bounds;
    fc.assert(
      fc.property(
        fc.record({
          lat: fc.double({ min: b.south + 0.02, max: b.north - 0.02, noNaN: true }),
          lng: fc.double({ min: b.west + 0.02, max: b.east - 0.02, noNaN: true }),
          steps: fc.array(
            fc.record({
              dtMs: fc.integer({ min: 200, max: 10_000 }),
              speed: fc.double({ min: 0, max: 30, noNaN: true }),
              bearing: fc.double({ min: 0, max: 359.99, noNaN: true }),
              acc: fc.double({ min: 1, max: 50, noNaN: true }),
            }),
            { minLength: 1, maxLength: 40 },
          ),
        }),
        ({ lat, lng, steps }) => {
          const c: LocationConfig = { ...cfg, pingBurst: 1000 };
          const s = stream(c);
          let t = NOW - 500_000;
          let p = { lat, lng };
          let seq = 0n;
          for (const st of steps) {
            t += st.dtMs;
            // Move at st.speed for dtMs along bearing (flat-earth step, fine at these distances).
            const d = (st.speed * st.dtMs) / 1000;
            const rad = (st.bearing * Math.PI) / 180;
            p = { lat: p.lat + (d * Math.cos(rad)) / M_PER_DEG, lng: p.lng + (d * Math.sin(rad)) / (M_PER_DEG * Math.cos((p.lat * Math.PI) / 180)) };
            const r = validatePing(s, ping({ pos: p, at: t, sequence: ++seq, accuracyM: st.acc, speedMps: st.speed, headingDeg: st.bearing }), NOW, c);
            if (typeof r === "string") return false;
          }
          return true;
        },
      ),
      { numRuns: 200 },
    );
  });

  it("classifies random pings consistently with the rules (property)", () => {
    fc.assert(
      fc.property(
        fc.record({
          lat: fc.oneof(fc.double({ min: 12.8, max: 13.1 }), fc.double()),
          lng: fc.oneof(fc.double({ min: 77.4, max: 77.8 }), fc.double()),
          acc: fc.oneof(fc.double({ min: 0, max: 200 }), fc.double()),
          speed: fc.oneof(fc.double({ min: 0, max: 40 }), fc.double()),
          heading: fc.oneof(fc.double({ min: 0, max: 400 }), fc.double()),
          offsetMs: fc.integer({ min: -2 * cfg.maxPastMs, max: 2 * cfg.maxFutureMs }),
        }),
        (g) => {
          const r = validatePing(stream(), ping({ pos: { lat: g.lat, lng: g.lng }, accuracyM: g.acc, speedMps: g.speed, headingDeg: g.heading, at: NOW + g.offsetMs }), NOW, cfg);
          const coordsOk = g.lat >= -90 && g.lat <= 90 && g.lng >= -180 && g.lng <= 180;
          const valuesOk = g.acc >= 0 && Number.isFinite(g.acc) && g.speed >= 0 && Number.isFinite(g.speed) && g.heading >= 0 && g.heading < 360;
          if (!coordsOk) return r === "invalid_coordinates";
          if (!valuesOk) return r === "invalid_value";
          if (g.acc > cfg.maxAccuracyM) return r === "low_accuracy";
          if (g.offsetMs > cfg.maxFutureMs) return r === "too_far_in_future";
          if (g.offsetMs < -cfg.maxPastMs) return r === "too_old";
          const inCity = cfg.cities.some((c) => g.lat >= c.bounds.south && g.lat <= c.bounds.north && g.lng >= c.bounds.west && g.lng <= c.bounds.east);
          if (!inCity) return r === "outside_service_area";
          return typeof r === "object";
        },
      ),
      { numRuns: 1000 },
    );
  });
});

describe("location domain: helpers", () => {
  it("converts Timestamps to ms", () => {
    assert.equal(timestampMs(ts(NOW + 123)), NOW + 123);
    assert.equal(timestampMs({ seconds: 1n, nanos: 999_999_999 }), 1999);
    assert.ok(Number.isNaN(timestampMs({ seconds: 1n, nanos: 1e9 })));
  });

  it("refills a token bucket at the configured rate up to the burst", () => {
    const c = { maxPingsPerSecond: 10, pingBurst: 2 };
    const b = { tokens: 0, updatedAtMs: 0 };
    assert.equal(takeToken(b, 50, c), false);
    assert.equal(takeToken(b, 100, c), true);
    assert.equal(takeToken(b, 100, c), false);
    assert.equal(takeToken(b, 10_000, c), true);
    assert.equal(takeToken(b, 10_000, c), true);
    assert.equal(takeToken(b, 10_000, c), false);
  });

  it("counts rejections by reason for the summary", () => {
    const c = new PingCounts();
    c.accepted += 3;
    c.reject("too_old");
    c.reject("too_old");
    c.reject("batch_too_large", 5);
    assert.equal(c.rejected, 7);
    assert.deepEqual(c.reasons(), { too_old: 2n, batch_too_large: 5n });
    assert.equal(new Set(REJECT_REASONS).size, 12);
  });
});
