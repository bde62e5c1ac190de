import assert from "node:assert/strict";
import fc from "fast-check";
import {
  CartError,
  deliveryFeeMinor,
  haversineKm,
  isOpenNow,
  localWeekMinute,
  priceCart,
  rankScore,
  searchText,
  weekRanges,
  withinHours,
  type Hours,
  type ItemInfo,
  type RestaurantInfo,
} from "../../services/catalog/domain.js";
import { generateRestaurants } from "../../services/catalog/seed.js";

const IST = 330;
/** A UTC instant for a local wall-clock time in a city at a fixed offset. 2026-11-22 is a Sunday. */
function localTime(day: number, hh: number, mm: number, offset = IST): Date {
  return new Date(Date.UTC(2026, 10, 22 + day, hh, mm) - offset * 60_000);
}

const lunchDinnerLate: Hours[] = [
  { dayOfWeek: 5, openMinute: 12 * 60, closeMinute: 15 * 60 }, // Friday lunch
  { dayOfWeek: 5, openMinute: 19 * 60, closeMinute: 26 * 60 }, // Friday 19:00 to Saturday 02:00
  { dayOfWeek: 6, openMinute: 22 * 60, closeMinute: 27 * 60 }, // Saturday 22:00 to Sunday 03:00 (wraps the week)
];

describe("catalog domain: opening hours", () => {
  it("sees Sunday 00:00 local as week minute 0 at a +05:30 offset", () => {
    assert.equal(new Date(localTime(0, 0, 0)).getUTCDay(), 6); // still Saturday in UTC
    assert.equal(localWeekMinute(localTime(0, 0, 0), IST), 0);
  });

  it("is open within an interval and closed at its end (half-open)", () => {
    assert.equal(withinHours(lunchDinnerLate, IST, localTime(5, 12, 0)), true);
    assert.equal(withinHours(lunchDinnerLate, IST, localTime(5, 14, 59)), true);
    assert.equal(withinHours(lunchDinnerLate, IST, localTime(5, 15, 0)), false);
    assert.equal(withinHours(lunchDinnerLate, IST, localTime(5, 11, 59)), false);
  });

  it("keeps an interval past midnight open on the next day until it closes", () => {
    assert.equal(withinHours(lunchDinnerLate, IST, localTime(5, 23, 30)), true);
    assert.equal(withinHours(lunchDinnerLate, IST, localTime(6, 1, 30)), true); // Saturday 01:30
    assert.equal(withinHours(lunchDinnerLate, IST, localTime(6, 2, 0)), false);
  });

  it("wraps Saturday night into Sunday morning", () => {
    assert.equal(withinHours(lunchDinnerLate, IST, localTime(7, 2, 30)), true); // next Sunday 02:30
    assert.equal(withinHours(lunchDinnerLate, IST, localTime(0, 2, 30)), true); // this Sunday 02:30, same week minute
    assert.equal(withinHours(lunchDinnerLate, IST, localTime(0, 3, 0)), false);
    assert.deepEqual(weekRanges([lunchDinnerLate[2]]), [[9960, 10080], [0, 180]]);
  });

  it("uses the city's offset, not UTC", () => {
    const h: Hours[] = [{ dayOfWeek: 1, openMinute: 9 * 60, closeMinute: 10 * 60 }];
    const utc0930Monday = new Date(Date.UTC(2026, 10, 23, 9, 30));
    assert.equal(withinHours(h, 0, utc0930Monday), true);
    assert.equal(withinHours(h, IST, utc0930Monday), false); // 15:00 in India
    assert.equal(withinHours(h, -300, new Date(Date.UTC(2026, 10, 23, 14, 30))), true); // 09:30 in New York (EST)
  });

  it("needs the restaurant's own switch as well as its hours", () => {
    const r = { isOpen: false, hours: lunchDinnerLate, utcOffsetMinutes: IST };
    assert.equal(isOpenNow(r, localTime(5, 12, 30)), false);
    assert.equal(isOpenNow({ ...r, isOpen: true }, localTime(5, 12, 30)), true);
  });

  it("agrees with a minute-by-minute reading of the hours (property)", () => {
    const hours = fc.record({ dayOfWeek: fc.integer({ min: 0, max: 6 }), openMinute: fc.integer({ min: 0, max: 1439 }), len: fc.integer({ min: 1, max: 1440 }) });
    fc.assert(
      fc.property(fc.array(hours, { maxLength: 4 }), fc.integer({ min: 0, max: 10079 }), (hs, m) => {
        const list = hs.map((h) => ({ dayOfWeek: h.dayOfWeek, openMinute: h.openMinute, closeMinute: Math.min(2880, h.openMinute + h.len) }));
        const now = new Date(Date.UTC(2026, 10, 22) + m * 60_000); // offset 0: week minute = m
        const expected = list.some((h) => {
          const s = h.dayOfWeek * 1440 + h.openMinute;
          const e = h.dayOfWeek * 1440 + h.closeMinute;
          return (m >= s && m < e) || (m + 10080 >= s && m + 10080 < e);
        });
        return withinHours(list, 0, now) === expected;
      }),
    );
  });
});

describe("catalog domain: distance, fee, ETA, ranking", () => {
  it("measures about 1.11 km per 0.01 degree of latitude", () => {
    const d = haversineKm({ lat: 12.97, lng: 77.59 }, { lat: 12.98, lng: 77.59 });
    assert.ok(Math.abs(d - 1.113) < 0.005, `got ${d}`);
    assert.equal(haversineKm({ lat: 1, lng: 2 }, { lat: 1, lng: 2 }), 0);
  });

  it("charges base plus per-km, rounded to a minor unit", () => {
    const cfg = { deliveryBaseFeeMinor: 199, deliveryPerKmMinor: 50 };
    assert.equal(deliveryFeeMinor(cfg, 0), 199);
    assert.equal(deliveryFeeMinor(cfg, 3.2), 359);
    assert.equal(deliveryFeeMinor(cfg, 3.21), 360); // 359.5 rounds up
  });

  it("ranks nearer, better-rated, more popular and better-matching restaurants higher", () => {
    const base = { distanceKm: 2, radiusKm: 10, rating: 4, popularity: 0.5 };
    assert.ok(rankScore({ ...base, distanceKm: 1 }) > rankScore(base));
    assert.ok(rankScore({ ...base, rating: 4.5 }) > rankScore(base));
    assert.ok(rankScore({ ...base, popularity: 0.6 }) > rankScore(base));
    assert.ok(rankScore({ ...base, textSimilarity: 0.9 }) > rankScore({ ...base, textSimilarity: 0.5 }));
    assert.equal(rankScore({ distanceKm: 0, radiusKm: 10, rating: 5, popularity: 1 }), 1);
  });

  it("indexes distinct lower-case words of name, cuisines and dishes", () => {
    assert.equal(searchText("Biryani House", ["biryani", "indian"], ["Chicken Biryani", "Raita"]), "biryani house indian chicken raita");
  });
});

// A small fixture restaurant for pricing.
const restaurant: RestaurantInfo = {
  id: "r1",
  name: "Napoli Pizza Co",
  description: "",
  lat: 12.97,
  lng: 77.59,
  address: "",
  cuisines: ["pizza"],
  rating: 4.5,
  ratingCount: 10,
  priceLevel: 2,
  hours: [0, 1, 2, 3, 4, 5, 6].map((d) => ({ dayOfWeek: d, openMinute: 0, closeMinute: 1440 })),
  isOpen: true,
  deliveryRadiusKm: 5,
  avgPrepMinutes: 20,
  popularity: 0.5,
  currency: "USD",
  city: "bengaluru",
  utcOffsetMinutes: IST,
};
const pizza: ItemInfo = {
  id: "i1",
  restaurantId: "r1",
  categoryId: "c1",
  name: "Margherita",
  description: "",
  priceMinor: 1000,
  currency: "USD",
  available: true,
  groups: [
    { id: "g-size", name: "Size", minChoices: 1, maxChoices: 1, options: [{ id: "o-reg", name: "Regular", priceDeltaMinor: 0, available: true }, { id: "o-lg", name: "Large", priceDeltaMinor: 300, available: true }] },
    {
      id: "g-extra",
      name: "Extras",
      minChoices: 0,
      maxChoices: 2,
      options: [
        { id: "o-cheese", name: "Extra cheese", priceDeltaMinor: 99, available: true },
        { id: "o-olive", name: "Olives", priceDeltaMinor: 49, available: true },
        { id: "o-truffle", name: "Truffle", priceDeltaMinor: 500, available: false },
      ],
    },
  ],
};
const coke: ItemInfo = { ...pizza, id: "i2", name: "Coke", priceMinor: 150, groups: [] };
const soldOut: ItemInfo = { ...coke, id: "i3", name: "Tiramisu", available: false };
const foreign: ItemInfo = { ...coke, id: "x9", restaurantId: "r2" };
const items = new Map([pizza, coke, soldOut, foreign].map((i) => [i.id, i]));
const fees = { deliveryBaseFeeMinor: 199, deliveryPerKmMinor: 50 };
const here = { lat: 12.98, lng: 77.59 };
const now = localTime(2, 13, 0);

function price(lines: Array<{ itemId: string; quantity?: number; optionIds?: string[]; note?: string }>, over: Partial<RestaurantInfo> = {}, at = here) {
  return priceCart({
    restaurant: { ...restaurant, ...over },
    items,
    lines: lines.map((l) => ({ itemId: l.itemId, quantity: l.quantity ?? 1, optionIds: l.optionIds ?? [], note: l.note ?? "" })),
    deliveryLocation: at,
    fees,
    now,
  });
}
function cartError(fn: () => unknown, kind: "invalid" | "precondition", field: string): void {
  assert.throws(fn, (e: unknown) => e instanceof CartError && e.kind === kind && e.field === field, `expected ${kind} on ${field}`);
}

describe("catalog domain: cart pricing", () => {
  it("prices items with their options from catalog prices", () => {
    const p = price([{ itemId: "i1", quantity: 2, optionIds: ["o-lg", "o-cheese"], note: "well done" }, { itemId: "i2", quantity: 3 }]);
    assert.equal(p.lines[0].unitPriceMinor, 1000 + 300 + 99);
    assert.equal(p.lines[0].lineTotalMinor, 2 * 1399);
    assert.equal(p.lines[0].note, "well done");
    assert.deepEqual(p.lines[0].options.map((o) => o.groupId), ["g-size", "g-extra"]);
    assert.equal(p.lines[1].lineTotalMinor, 450);
    assert.equal(p.subtotalMinor, 2798 + 450);
    assert.equal(p.deliveryFeeMinor, deliveryFeeMinor(fees, p.distanceKm));
    assert.equal(p.currency, "USD");
  });

  it("rejects an empty cart, bad quantities, long notes and too many lines", () => {
    cartError(() => price([]), "invalid", "lines");
    cartError(() => price([{ itemId: "i2", quantity: 0 }]), "invalid", "lines[0].quantity");
    cartError(() => price([{ itemId: "i2" }, { itemId: "i2", quantity: 100 }]), "invalid", "lines[1].quantity");
    cartError(() => price([{ itemId: "i2", note: "x".repeat(201) }]), "invalid", "lines[0].note");
    cartError(() => price(Array.from({ length: 51 }, () => ({ itemId: "i2" }))), "invalid", "lines");
  });

  it("treats another restaurant's item as unknown", () => {
    cartError(() => price([{ itemId: "i2" }, { itemId: "x9", optionIds: ["o-reg"] }]), "invalid", "lines[1].item_id");
    cartError(() => price([{ itemId: "nope" }]), "invalid", "lines[0].item_id");
  });

  it("checks options belong to the item and group min/max choices", () => {
    cartError(() => price([{ itemId: "i1", optionIds: ["o-reg", "o-nope"] }]), "invalid", "lines[0].option_ids[1]");
    cartError(() => price([{ itemId: "i2", optionIds: ["o-reg"] }]), "invalid", "lines[0].option_ids[0]");
    cartError(() => price([{ itemId: "i1" }]), "invalid", "lines[0].option_ids"); // size is required
    cartError(() => price([{ itemId: "i1", optionIds: ["o-reg", "o-lg"] }]), "invalid", "lines[0].option_ids");
    cartError(() => price([{ itemId: "i1", optionIds: ["o-reg", "o-reg"] }]), "invalid", "lines[0].option_ids[1]");
  });

  it("refuses sold-out items and options, a closed restaurant and an address out of range", () => {
    cartError(() => price([{ itemId: "i2" }, { itemId: "i3" }]), "precondition", "lines[1].item_id");
    cartError(() => price([{ itemId: "i1", optionIds: ["o-reg", "o-truffle"] }]), "precondition", "lines[0].option_ids[1]");
    cartError(() => price([{ itemId: "i2" }], { isOpen: false }), "precondition", "restaurant_id");
    cartError(() => price([{ itemId: "i2" }], { hours: [] }), "precondition", "restaurant_id");
    cartError(() => price([{ itemId: "i2" }], {}, { lat: 13.1, lng: 77.59 }), "precondition", "delivery_location");
  });

  it("makes the subtotal the sum of line totals, each unit price times quantity (property)", () => {
    const line = fc.record({
      itemId: fc.constantFrom("i1", "i2"),
      quantity: fc.integer({ min: 1, max: 99 }),
      size: fc.constantFrom("o-reg", "o-lg"),
      extras: fc.subarray(["o-cheese", "o-olive"]),
    });
    fc.assert(
      fc.property(fc.array(line, { minLength: 1, maxLength: 50 }), (ls) => {
        const p = price(ls.map((l) => ({ itemId: l.itemId, quantity: l.quantity, optionIds: l.itemId === "i1" ? [l.size, ...l.extras] : [] })));
        const sum = p.lines.reduce((s, l) => s + l.lineTotalMinor, 0);
        return (
          p.subtotalMinor === sum &&
          p.lines.every((l, i) => l.lineTotalMinor === l.unitPriceMinor * ls[i].quantity && l.unitPriceMinor >= (ls[i].itemId === "i1" ? 1000 : 150))
        );
      }),
    );
  });
});

describe("catalog seed generator", () => {
  it("gives identical data for the same seed and different data for another", () => {
    const a = generateRestaurants({ seed: 42, restaurants: 30 });
    const b = generateRestaurants({ seed: 42, restaurants: 30 });
    const c = generateRestaurants({ seed: 43, restaurants: 30 });
    assert.deepEqual(a, b);
    assert.notDeepEqual(a.map((r) => r.name + r.lat), c.map((r) => r.name + r.lat));
  });

  it("gives the same restaurants when generated in chunks", () => {
    const whole = generateRestaurants({ seed: 5, restaurants: 20 });
    const parts = [...generateRestaurants({ seed: 5, restaurants: 20, start: 0, count: 7 }), ...generateRestaurants({ seed: 5, restaurants: 20, start: 7 })];
    assert.deepEqual(parts, whole);
  });

  it("generates realistic menus, hours and radii", () => {
    for (const r of generateRestaurants({ seed: 9, restaurants: 100 })) {
      const n = r.categories.reduce((s, c) => s + c.items.length, 0);
      assert.ok(n >= 20 && n <= 60, `${r.id} has ${n} items`);
      assert.ok(r.deliveryRadiusKm >= 3 && r.deliveryRadiusKm <= 8);
      assert.ok(r.avgPrepMinutes >= 10 && r.avgPrepMinutes <= 35);
      assert.ok(r.hours.length > 0 && r.hours.every((h) => h.closeMinute > h.openMinute && h.closeMinute <= 2880));
      for (const c of r.categories) for (const it of c.items) for (const g of it.groups) assert.ok(g.maxChoices >= Math.max(1, g.minChoices) && g.options.length >= g.maxChoices);
    }
  });
});
