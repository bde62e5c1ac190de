import assert from "node:assert/strict";
import fc from "fast-check";
import {
  displayMinutes,
  etaMoved,
  histogramQuantile,
  learnErrorModelFromHistogram,
  legsFor,
  residualBin,
  RESIDUAL_BIN_MINUTES,
} from "../../services/eta/domain.js";
import { createEtaService, prepKey } from "../../services/eta/service.js";
import { defaultEtaConfig } from "../../services/platform/config.js";
import { openRedis } from "../../services/platform/redis.js";

const MIN = 60_000;

describe("eta rules", () => {
  it("learns bias and range from a residual histogram, with the default until enough samples", () => {
    const bins = new Map<number, number>();
    for (let r = -4; r <= 16; r++) bins.set(residualBin(r)!, 1);
    const cfg = { lowQuantile: 0.1, highQuantile: 0.9, minWidthMinutes: 6, minSamples: 21, defaultHalfWidthMinutes: 5 };
    const m = learnErrorModelFromHistogram(bins, cfg);
    assert.equal(m.samples, 21);
    assert.equal(m.biasMinutes, 6);
    assert.equal(m.lowMinutes, -2);
    assert.equal(m.highMinutes, 14);
    const d = learnErrorModelFromHistogram(bins, { ...cfg, minSamples: 22 });
    assert.deepEqual(d, { biasMinutes: 0, lowMinutes: -5, highMinutes: 5, samples: 0 });
  });

  it("histogram quantiles stay within half a bin of the exact ones", () => {
    fc.assert(
      fc.property(fc.array(fc.double({ min: -50, max: 100, noNaN: true }), { minLength: 1, maxLength: 200 }), fc.double({ min: 0, max: 1, noNaN: true }), (xs, q) => {
        const bins = new Map<number, number>();
        for (const x of xs) bins.set(residualBin(x)!, (bins.get(residualBin(x)!) ?? 0) + 1);
        const sorted = [...xs].sort((a, b) => a - b);
        const exact = sorted[Math.max(0, Math.ceil(q * xs.length) - 1)]!;
        return Math.abs(histogramQuantile(bins, q) - exact) <= RESIDUAL_BIN_MINUTES / 2 + 1e-9;
      }),
    );
  });

  it("takes the legs an order still has at each stage", () => {
    const base = { expectedPrepMin: 20, spentMin: 8, driverToRestaurantS: 600, restaurantToCustomerS: 900, driverToCustomerS: 300 };
    assert.deepEqual(legsFor({ ...base, stage: "quote" }), { prepRemainingMin: 20, restaurantToCustomerS: 900 });
    assert.deepEqual(legsFor({ ...base, stage: "kitchen" }), { prepRemainingMin: 12, driverToRestaurantS: 600, restaurantToCustomerS: 900 });
    assert.deepEqual(legsFor({ ...base, stage: "kitchen", spentMin: 30 }).prepRemainingMin, 0);
    assert.deepEqual(legsFor({ ...base, stage: "ready" }), { prepRemainingMin: 0, driverToRestaurantS: 600, restaurantToCustomerS: 900 });
    assert.deepEqual(legsFor({ ...base, stage: "carried" }), { prepRemainingMin: 0, restaurantToCustomerS: 300 });
    assert.deepEqual(legsFor({ ...base, stage: "carried", driverToCustomerS: undefined }), { prepRemainingMin: 0, restaurantToCustomerS: 900 });
  });

  it("pushes only when a bound moved by the threshold", () => {
    const s = { lowAtMs: 10 * MIN, highAtMs: 20 * MIN };
    assert.equal(etaMoved(s, { lowAtMs: 10 * MIN + 59_999, highAtMs: 20 * MIN - 59_999 }, MIN), false);
    assert.equal(etaMoved(s, { lowAtMs: 10 * MIN, highAtMs: 21 * MIN }, MIN), true);
    assert.equal(etaMoved(s, { lowAtMs: 9 * MIN, highAtMs: 20 * MIN }, MIN), true);
    assert.equal(etaMoved(undefined, s, MIN), true);
    assert.deepEqual(displayMinutes({ lowMinutes: 12.9, highMinutes: 19.1 }), { minMinutes: 12, maxMinutes: 20 });
    assert.deepEqual(displayMinutes({ lowMinutes: -1, highMinutes: -0.5 }), { minMinutes: 0, maxMinutes: 0 });
  });
});

describe("EtaService learning (in-process Redis)", () => {
  const restaurant = { id: "r1", location: { lat: 12.97, lng: 77.59 }, avgPrepMinutes: 10 };
  const customer = { lat: 12.99, lng: 77.59 };

  it("uses the configured prep until an hour has enough samples, then the learned mean; a redelivered event counts once", async () => {
    let now = Date.UTC(2026, 0, 5, 7, 0); // 12:30 local (UTC+5:30)
    const redis = await openRedis({});
    const eta = createEtaService({ redis, config: { ...defaultEtaConfig, minPrepSamples: 3 }, now: () => now });
    const q0 = await eta.quote(restaurant, customer);
    for (let i = 0; i < 3; i++) {
      await eta.recordConfirmed(`o${i}`, now);
      await eta.recordReady(`o${i}-5`, `o${i}`, "r1", now + 30 * MIN);
      await eta.recordReady(`o${i}-5`, `o${i}`, "r1", now + 30 * MIN);
    }
    assert.deepEqual(await redis.kv.hgetall(prepKey("r1")), { "n:12": "3", "s:12": String(3 * 1800) });
    const q1 = await eta.quote(restaurant, customer);
    assert.ok(Math.abs(q1.rawMinutes - q0.rawMinutes - 20) < 1e-6, `${q0.rawMinutes} -> ${q1.rawMinutes}`);
    now += 3 * 3_600_000; // 15:30: no history at that hour
    const q2 = await eta.quote(restaurant, customer);
    assert.ok(q2.rawMinutes < q1.rawMinutes - 15);
    await redis.close();
  });

  it("learns the error model from delivered orders against the raw estimate at placement", async () => {
    const now = Date.UTC(2026, 0, 5, 5, 0);
    const redis = await openRedis({});
    const eta = createEtaService({ redis, config: { ...defaultEtaConfig, minErrorSamples: 10 }, now: () => now });
    assert.equal((await eta.errorModel()).samples, 0);
    for (let i = 0; i < 10; i++) {
      await eta.recordPlaced(`o${i}`, now, 30);
      await eta.recordDelivered(`o${i}-9`, `o${i}`, now + (30 + 4 + i) * MIN); // residuals 4..13
      await eta.recordDelivered(`o${i}-9`, `o${i}`, now + (30 + 4 + i) * MIN);
    }
    const m = await eta.errorModel();
    assert.equal(m.samples, 10);
    assert.equal(m.biasMinutes, 8);
    assert.equal(m.lowMinutes, 4);
    assert.equal(m.highMinutes, 12);
    const q = await eta.quote(restaurant, customer);
    assert.ok(Math.abs(q.minutes - (q.rawMinutes + 8)) < 1e-9 && q.lowMinutes <= q.minutes && q.highMinutes >= q.minutes);
    await redis.close();
  });
});
