import assert from "node:assert/strict";
import fc from "fast-check";
import {
  aggregatePrepSamples,
  DEFAULT_ERROR_MODEL_CONFIG,
  estimateDelivery,
  expectedPrepMinutes,
  learnErrorModel,
  localHour,
  quantile,
  remainingPrepMinutes,
  type ErrorModel,
  type PrepSample,
} from "../../services/eta/domain.js";
import {
  CachedRouting,
  DEFAULT_HAVERSINE_ROUTING,
  geohash,
  haversineRouting,
  speedKmhAt,
  type LatLng,
  type RoutingPort,
} from "../../services/eta/routing.js";
import { haversineKm } from "../../services/platform/redis.js";

const CFG = { fallbackMinutes: 20, minSamples: 5 };
const H = 3_600_000;
const DAY0 = Date.UTC(2026, 0, 5); // midnight UTC

describe("eta prep model", () => {
  it("uses the configured average for an hour with fewer than minSamples samples", () => {
    const samples: PrepSample[] = [30, 31, 32, 33].map((m) => ({ hourOfDay: 13, prepMinutes: m }));
    const stats = aggregatePrepSamples(samples);
    assert.equal(expectedPrepMinutes(stats, 13, CFG), 20);
    assert.equal(expectedPrepMinutes(stats, 9, CFG), 20);
  });

  it("learns the mean of an hour once it has minSamples samples, separately per hour", () => {
    const samples: PrepSample[] = [
      ...[30, 31, 32, 33, 34].map((m) => ({ hourOfDay: 13, prepMinutes: m })),
      ...[10, 12, 14, 10, 12, 14].map((m) => ({ hourOfDay: 16, prepMinutes: m })),
    ];
    const stats = aggregatePrepSamples(samples);
    assert.equal(expectedPrepMinutes(stats, 13, CFG), 32);
    assert.equal(expectedPrepMinutes(stats, 16, CFG), 12);
    assert.equal(expectedPrepMinutes(stats, 14, CFG), 20);
  });

  it("drops samples with an impossible hour or time", () => {
    const stats = aggregatePrepSamples([
      { hourOfDay: 24, prepMinutes: 10 },
      { hourOfDay: -1, prepMinutes: 10 },
      { hourOfDay: 3.5, prepMinutes: 10 },
      { hourOfDay: 3, prepMinutes: -4 },
      { hourOfDay: 3, prepMinutes: Number.NaN },
      { hourOfDay: 3, prepMinutes: 8 },
    ]);
    assert.deepEqual(stats, [{ hourOfDay: 3, count: 1, meanMinutes: 8 }]);
  });

  it("subtracts minutes already spent and never goes below 0", () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ hourOfDay: fc.integer({ min: 0, max: 23 }), prepMinutes: fc.double({ min: 0, max: 120, noNaN: true }) }), { maxLength: 60 }),
        fc.integer({ min: 0, max: 23 }),
        fc.double({ min: -10, max: 300, noNaN: true }),
        fc.double({ min: 0, max: 90, noNaN: true }),
        (samples, hour, spent, fallback) => {
          const cfg = { fallbackMinutes: fallback, minSamples: 5 };
          const stats = aggregatePrepSamples(samples);
          const expected = expectedPrepMinutes(stats, hour, cfg);
          const rem = remainingPrepMinutes(stats, hour, spent, cfg);
          assert.ok(rem >= 0);
          assert.ok(Math.abs(rem - Math.max(0, expected - Math.max(0, spent))) < 1e-9);
        },
      ),
    );
  });

  it("computes the local hour with the city's UTC offset", () => {
    assert.equal(localHour(DAY0 + 13 * H, 0), 13);
    assert.equal(localHour(DAY0 + 13 * H, 330), 18); // +05:30, 18:30 local
    assert.equal(localHour(DAY0 + 1 * H, -180), 22);
  });
});

describe("eta quantile and error model", () => {
  it("interpolates between order statistics", () => {
    const v = [5, 1, 4, 2, 3];
    assert.equal(quantile(v, 0), 1);
    assert.equal(quantile(v, 0.5), 3);
    assert.equal(quantile(v, 1), 5);
    assert.equal(quantile(v, 0.1), 1.4);
    assert.equal(quantile([0, 10], 0.9), 9);
    assert.throws(() => quantile([], 0.5), RangeError);
    assert.throws(() => quantile([1], 1.5), RangeError);
  });

  it("is monotone in q and stays within the data", () => {
    fc.assert(
      fc.property(fc.array(fc.double({ min: -1e6, max: 1e6, noNaN: true }), { minLength: 1, maxLength: 50 }), fc.double({ min: 0, max: 1, noNaN: true }), fc.double({ min: 0, max: 1, noNaN: true }), (v, a, b) => {
        const [q1, q2] = a <= b ? [a, b] : [b, a];
        const x1 = quantile(v, q1);
        const x2 = quantile(v, q2);
        assert.ok(x1 <= x2 + 1e-9);
        assert.ok(x1 >= Math.min(...v) - 1e-9 && x2 <= Math.max(...v) + 1e-9);
      }),
    );
  });

  it("learns bias from the median and the range from the 10th and 90th percentile residuals", () => {
    const residuals = Array.from({ length: 101 }, (_, i) => i - 30); // -30..70
    const m = learnErrorModel(residuals);
    assert.equal(m.biasMinutes, 20);
    assert.equal(m.lowMinutes, -20);
    assert.equal(m.highMinutes, 60);
    assert.equal(m.samples, 101);
  });

  it("uses a symmetric default until there are minSamples residuals", () => {
    const m = learnErrorModel([1, 2, 3]);
    assert.deepEqual(m, { biasMinutes: 0, lowMinutes: -5, highMinutes: 5, samples: 0 });
  });
});

describe("estimateDelivery", () => {
  const em: ErrorModel = { biasMinutes: 2, lowMinutes: -3, highMinutes: 8, samples: 100 };

  it("waits for the later of the kitchen and the driver, then adds the trip to the customer and the bias", () => {
    const kitchenLater = estimateDelivery({ prepRemainingMin: 15, driverToRestaurantS: 300, restaurantToCustomerS: 600, errorModel: em });
    assert.equal(kitchenLater.minutes, 15 + 10 + 2);
    assert.equal(kitchenLater.lowMinutes, 25 - 3);
    assert.equal(kitchenLater.highMinutes, 25 + 8);
    const driverLater = estimateDelivery({ prepRemainingMin: 2, driverToRestaurantS: 1200, restaurantToCustomerS: 600, errorModel: em });
    assert.equal(driverLater.minutes, 20 + 10 + 2);
    const noDriver = estimateDelivery({ prepRemainingMin: 2, restaurantToCustomerS: 600, errorModel: em });
    assert.equal(noDriver.minutes, 2 + 10 + 2);
  });

  it("widens a narrow range to the minimum width around its centre", () => {
    const tight: ErrorModel = { biasMinutes: 0, lowMinutes: -1, highMinutes: 1, samples: 100 };
    const e = estimateDelivery({ prepRemainingMin: 10, restaurantToCustomerS: 600, errorModel: tight, minWidthMinutes: 6 });
    assert.equal(e.lowMinutes, 17);
    assert.equal(e.highMinutes, 23);
  });

  it("is never negative, at least minWidth wide, and contains its own estimate", () => {
    fc.assert(
      fc.property(
        fc.double({ min: -5, max: 120, noNaN: true }),
        fc.option(fc.double({ min: -60, max: 7200, noNaN: true }), { nil: undefined }),
        fc.double({ min: -60, max: 7200, noNaN: true }),
        fc.double({ min: -30, max: 30, noNaN: true }),
        fc.double({ min: -40, max: 40, noNaN: true }),
        fc.double({ min: -40, max: 40, noNaN: true }),
        fc.double({ min: 0, max: 20, noNaN: true }),
        (prep, driverS, custS, bias, a, b, minWidth) => {
          const e = estimateDelivery({
            prepRemainingMin: prep,
            driverToRestaurantS: driverS,
            restaurantToCustomerS: custS,
            errorModel: { biasMinutes: bias, lowMinutes: a, highMinutes: b, samples: 50 },
            minWidthMinutes: minWidth,
          });
          assert.ok(e.minutes >= 0 && e.lowMinutes >= 0);
          assert.ok(e.highMinutes - e.lowMinutes >= minWidth - 1e-9);
          assert.ok(e.lowMinutes <= e.minutes + 1e-9 && e.minutes <= e.highMinutes + 1e-9);
        },
      ),
    );
  });

  it("uses the default minimum width of the config when none is given", () => {
    const e = estimateDelivery({ prepRemainingMin: 0, restaurantToCustomerS: 0, errorModel: { biasMinutes: 0, lowMinutes: 0, highMinutes: 0, samples: 9 } });
    assert.equal(e.lowMinutes, 0);
    assert.equal(e.highMinutes, DEFAULT_ERROR_MODEL_CONFIG.minWidthMinutes);
  });
});

describe("eta routing", () => {
  it("encodes geohashes like the reference implementation", () => {
    assert.equal(geohash(42.6, -5.6, 5), "ezs42");
    assert.equal(geohash(57.64911, 10.40744, 11), "u4pruydqqvj");
    assert.equal(geohash(12.9716, 77.5946, 6).length, 6);
  });

  it("drives slower in the lunch and dinner bands than off-peak", () => {
    const r = haversineRouting();
    const a: LatLng = { lat: 12.97, lng: 77.59 };
    const b: LatLng = { lat: 12.99, lng: 77.61 };
    const km = haversineKm(a.lng, a.lat, b.lng, b.lat);
    const offPeak = r.travelSeconds(a, b, DAY0 + 15 * H);
    const lunch = r.travelSeconds(a, b, DAY0 + 13 * H);
    assert.ok(Math.abs(offPeak - ((km * DEFAULT_HAVERSINE_ROUTING.detourFactor) / DEFAULT_HAVERSINE_ROUTING.baseKmh) * 3600) < 1e-6);
    assert.ok(lunch > offPeak);
    assert.equal(speedKmhAt({ ...DEFAULT_HAVERSINE_ROUTING, utcOffsetMinutes: 330 }, DAY0 + 7 * H + 30 * 60_000), 17); // 13:00 local
  });

  function counting(): RoutingPort & { calls: number } {
    const inner = haversineRouting();
    const port = {
      calls: 0,
      travelSeconds(from: LatLng, to: LatLng, atMs: number) {
        port.calls++;
        return inner.travelSeconds(from, to, atMs);
      },
    };
    return port;
  }
  const A: LatLng = { lat: 12.9716, lng: 77.5946 };
  const B: LatLng = { lat: 12.9352, lng: 77.6245 };
  const C: LatLng = { lat: 13.0358, lng: 77.597 };
  const T = DAY0 + 15 * H;

  it("hits for the same geohash pair and time bucket and scales by the leg's own distance", () => {
    const inner = counting();
    let now = 0;
    const cache = new CachedRouting(inner, { geohashPrecision: 6, bucketMs: 15 * 60_000, ttlMs: 60_000, maxEntries: 10 }, () => now);
    const first = cache.travelSeconds(A, B, T);
    const nearA: LatLng = { lat: A.lat + 0.0005, lng: A.lng }; // same precision-6 cell, ~55 m north
    assert.equal(cache.key(nearA, B, T + 60_000), cache.key(A, B, T));
    const second = cache.travelSeconds(nearA, B, T + 60_000);
    assert.equal(inner.calls, 1);
    assert.deepEqual({ hits: cache.stats.hits, misses: cache.stats.misses }, { hits: 1, misses: 1 });
    const ratio = haversineKm(nearA.lng, nearA.lat, B.lng, B.lat) / haversineKm(A.lng, A.lat, B.lng, B.lat);
    assert.ok(Math.abs(second - first * ratio) < 1e-6);
    assert.notEqual(second, first);
    now = 1;
    cache.travelSeconds(A, B, T + 15 * 60_000); // next bucket
    cache.travelSeconds(B, A, T); // the reverse direction is another pair
    assert.equal(inner.calls, 3);
    assert.equal(cache.stats.misses, 3);
  });

  it("treats an entry older than the TTL as a miss and refreshes it", () => {
    const inner = counting();
    let now = 0;
    const cache = new CachedRouting(inner, { geohashPrecision: 6, bucketMs: 86_400_000, ttlMs: 1000, maxEntries: 10 }, () => now);
    cache.travelSeconds(A, B, T);
    now = 1000;
    cache.travelSeconds(A, B, T);
    assert.equal(inner.calls, 1);
    now = 2001;
    cache.travelSeconds(A, B, T);
    assert.equal(inner.calls, 2);
    assert.equal(cache.stats.expired, 1);
    now = 2500;
    cache.travelSeconds(A, B, T);
    assert.equal(inner.calls, 2);
    assert.equal(cache.size, 1);
  });

  it("evicts the least recently used pair beyond maxEntries", () => {
    const inner = counting();
    const cache = new CachedRouting(inner, { geohashPrecision: 6, bucketMs: 86_400_000, ttlMs: 1e12, maxEntries: 2 }, () => 0);
    cache.travelSeconds(A, B, T);
    cache.travelSeconds(A, C, T);
    cache.travelSeconds(A, B, T); // A-B is now the most recent
    cache.travelSeconds(B, C, T); // evicts A-C
    assert.equal(cache.size, 2);
    assert.equal(cache.stats.evictions, 1);
    const calls = inner.calls;
    cache.travelSeconds(A, B, T);
    assert.equal(inner.calls, calls);
    cache.travelSeconds(A, C, T);
    assert.equal(inner.calls, calls + 1);
  });

  it("sends a leg shorter than 50 m straight to the adapter", () => {
    const inner = counting();
    const cache = new CachedRouting(inner, undefined, () => 0);
    const s = cache.travelSeconds(A, { lat: A.lat + 0.0001, lng: A.lng }, T);
    assert.ok(s > 0);
    assert.equal(cache.size, 0);
    assert.equal(inner.calls, 1);
  });
});
