/**
 * Pure catalog rules: opening hours, ranking, delivery fee, ETA and cart pricing. No I/O.
 *
 * Money is integer minor units (JS numbers; catalog prices stay far below 2^53).
 */

// ---------------------------------------------------------------------------------------------
// Types the rules work on (the store maps rows to these; handlers map these to protos).

/** One opening interval on one weekday, in the city's local time. */
export interface Hours {
  /** 0 = Sunday .. 6 = Saturday. */
  dayOfWeek: number;
  /** Minutes after local midnight, 0..1439. */
  openMinute: number;
  /** Minutes after local midnight, openMinute+1 .. 2880; above 1440 the interval runs past midnight. */
  closeMinute: number;
}

export interface RestaurantInfo {
  id: string;
  name: string;
  description: string;
  lat: number;
  lng: number;
  address: string;
  cuisines: string[];
  rating: number;
  ratingCount: number;
  priceLevel: number;
  hours: Hours[];
  isOpen: boolean;
  deliveryRadiusKm: number;
  avgPrepMinutes: number;
  popularity: number;
  currency: string;
  city: string;
  /**
   * Fixed offset of the city's local time from UTC in minutes (e.g. +330 for India). Kept per
   * restaurant (copied from its city) rather than an IANA zone: evaluation stays pure and the
   * same rule runs inside SQL for the open-now filter. Cities with daylight saving time need
   * the offset updated twice a year (a one-row-per-city update); none of the seeded cities has DST.
   */
  utcOffsetMinutes: number;
  /** What happens to an order the restaurant does not answer in time; undefined = the platform default. */
  answerPolicy?: AnswerPolicyName;
  /** Seconds an order waits for the restaurant's answer; undefined = the platform default. */
  answerTimeoutS?: number;
}

export type AnswerPolicyName = "auto_confirm" | "auto_reject";
/** Bounds of a restaurant's own answer timeout, seconds. */
export const ANSWER_TIMEOUT_S = Object.freeze({ min: 30, max: 3600 });

export interface OptionInfo {
  id: string;
  name: string;
  priceDeltaMinor: number;
  available: boolean;
}

export interface GroupInfo {
  id: string;
  name: string;
  minChoices: number;
  maxChoices: number;
  options: OptionInfo[];
}

export interface ItemInfo {
  id: string;
  restaurantId: string;
  categoryId: string;
  name: string;
  description: string;
  priceMinor: number;
  currency: string;
  available: boolean;
  groups: GroupInfo[];
}

export interface CategoryInfo {
  id: string;
  name: string;
  items: ItemInfo[];
}

// ---------------------------------------------------------------------------------------------
// Limits.

export const DEFAULT_RADIUS_KM = 10;
export const MAX_RADIUS_KM = 50;
export const DEFAULT_PAGE_SIZE = 20;
export const MAX_PAGE_SIZE = 100;
export const MAX_QUERY_CHARS = 100;
/** Deep paging is bounded: ranking past this offset is not useful to anyone. */
export const MAX_SEARCH_OFFSET = 1000;
export const MAX_CART_LINES = 50;
export const MAX_QUANTITY = 99;
export const MAX_NOTE_CHARS = 200;
export const MAX_CUISINE_FILTERS = 20;

// ---------------------------------------------------------------------------------------------
// Opening hours.

export const MINUTES_PER_DAY = 1440;
export const MINUTES_PER_WEEK = 7 * MINUTES_PER_DAY;

/** Minutes since Sunday 00:00 UTC of the week containing `now`. */
export function utcWeekMinute(now: Date): number {
  return now.getUTCDay() * MINUTES_PER_DAY + now.getUTCHours() * 60 + now.getUTCMinutes();
}

/** Minutes since local Sunday 00:00 for a city at a fixed UTC offset. */
export function localWeekMinute(now: Date, utcOffsetMinutes: number): number {
  return mod(utcWeekMinute(now) + utcOffsetMinutes, MINUTES_PER_WEEK);
}

/**
 * Hours as half-open [start, end) ranges of local week minutes (0..10080), wrapped at the end
 * of the week: Saturday 22:00 to 02:00 becomes [9960, 10080) and [0, 120). The store keeps
 * these as an int4multirange so the open-now filter runs in SQL with the same rule.
 */
export function weekRanges(hours: Hours[]): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const h of hours) {
    const start = h.dayOfWeek * MINUTES_PER_DAY + h.openMinute;
    const end = h.dayOfWeek * MINUTES_PER_DAY + h.closeMinute;
    if (end <= MINUTES_PER_WEEK) out.push([start, end]);
    else {
      out.push([start, MINUTES_PER_WEEK]);
      out.push([0, end - MINUTES_PER_WEEK]);
    }
  }
  return out;
}

/** True when the local time falls within one of the intervals (an interval past midnight counts on the next day too). */
export function withinHours(hours: Hours[], utcOffsetMinutes: number, now: Date): boolean {
  const m = localWeekMinute(now, utcOffsetMinutes);
  return weekRanges(hours).some(([s, e]) => m >= s && m < e);
}

/** Open now = the restaurant's own switch and its hours. */
export function isOpenNow(r: Pick<RestaurantInfo, "isOpen" | "hours" | "utcOffsetMinutes">, now: Date): boolean {
  return r.isOpen && withinHours(r.hours, r.utcOffsetMinutes, now);
}

/** Problem with a set of hours, or undefined when valid. */
export function hoursProblem(hours: Hours[]): string | undefined {
  for (const [i, h] of hours.entries()) {
    if (!Number.isInteger(h.dayOfWeek) || h.dayOfWeek < 0 || h.dayOfWeek > 6) return `hours[${i}].day_of_week must be 0..6`;
    if (!Number.isInteger(h.openMinute) || h.openMinute < 0 || h.openMinute > 1439) return `hours[${i}].open_minute must be 0..1439`;
    if (!Number.isInteger(h.closeMinute) || h.closeMinute <= h.openMinute || h.closeMinute > 2880) {
      return `hours[${i}].close_minute must be after open_minute and at most 2880`;
    }
  }
  return undefined;
}

// ---------------------------------------------------------------------------------------------
// Geometry.

/**
 * The radius earthdistance's earth() uses (6378168 m), so distances computed here and the
 * radius filter in SQL agree to the metre (the mean radius, 6371 km, is 0.1% smaller).
 */
export const EARTH_RADIUS_KM = 6378.168;

/** Great-circle distance in km (haversine). */
export function haversineKm(a: { lat: number; lng: number }, b: { lat: number; lng: number }): number {
  const rad = Math.PI / 180;
  const dLat = (b.lat - a.lat) * rad;
  const dLng = (b.lng - a.lng) * rad;
  const h = Math.sin(dLat / 2) ** 2 + Math.cos(a.lat * rad) * Math.cos(b.lat * rad) * Math.sin(dLng / 2) ** 2;
  return 2 * EARTH_RADIUS_KM * Math.asin(Math.min(1, Math.sqrt(h)));
}


// ---------------------------------------------------------------------------------------------
// Ranking.

/**
 * Search ranking blend (higher first; ties broken by restaurant id so paging is stable):
 *
 *   score = W_DISTANCE   * (1 - distance_km / radius_km)      nearer is better, 0..1
 *         + W_RATING     * (rating / 5)                        0..1
 *         + W_POPULARITY * popularity                          0..1 (recent orders, relative)
 *         + W_TEXT       * text_similarity                       only when a query is given, 0..1
 *
 * text_similarity is the mean, over the query's words, of the best pg_trgm word_similarity
 * between that word and any of the restaurant's terms (distinct words of its name, cuisines
 * and dish names); a restaurant matches when at least one query word reaches textThreshold.
 * radius_km is the search radius of the request. Without a query the weights sum to 1. With a
 * query the text term is added on top with a large weight, so a close textual match ("Biryani
 * House" for "biriyani") outranks a nearby place that only matched a side dish. The same
 * formula runs in SQL (store.ts) and here (tests, documentation).
 */
export const W_DISTANCE = 0.45;
export const W_RATING = 0.3;
export const W_POPULARITY = 0.25;
export const W_TEXT = 0.6;

export function rankScore(x: { distanceKm: number; radiusKm: number; rating: number; popularity: number; textSimilarity?: number }): number {
  const d = Math.max(0, 1 - x.distanceKm / x.radiusKm);
  return W_DISTANCE * d + W_RATING * (x.rating / 5) + W_POPULARITY * x.popularity + W_TEXT * (x.textSimilarity ?? 0);
}

/**
 * Minimum word similarity (pg_trgm word_similarity) for a text match. Short queries have few
 * trigrams, so one typo costs more of them; very short ones need a near exact match or they
 * would match everything.
 */
export function textThreshold(query: string): number {
  const words = query.split(/[^\p{L}\p{N}]+/u).filter((w) => w);
  const shortest = Math.min(...words.map((w) => w.length));
  return shortest <= 3 ? 0.7 : 0.5;
}

/** Lower-cases, trims and squeezes whitespace; the form queries are matched and hashed in. */
export function normalizeQuery(q: string): string {
  return q.toLowerCase().normalize("NFKC").replace(/\s+/g, " ").trim();
}

/** The text a restaurant is found by: its name, cuisines and dish names as distinct lower-case words. */
export function searchText(name: string, cuisines: string[], dishNames: string[]): string {
  const words = new Set<string>();
  for (const s of [name, ...cuisines, ...dishNames]) {
    for (const w of s.toLowerCase().split(/[^\p{L}\p{N}]+/u)) if (w) words.add(w);
  }
  return [...words].join(" ");
}

// ---------------------------------------------------------------------------------------------
// Delivery fee and ETA.

export interface FeeConfig {
  deliveryBaseFeeMinor: number;
  deliveryPerKmMinor: number;
}

/** base + perKm * km, rounded to a whole minor unit. */
export function deliveryFeeMinor(cfg: FeeConfig, distanceKm: number): number {
  return Math.round(cfg.deliveryBaseFeeMinor + cfg.deliveryPerKmMinor * Math.max(0, distanceKm));
}

// ---------------------------------------------------------------------------------------------
// Cart pricing.

export interface CartLineInput {
  itemId: string;
  quantity: number;
  optionIds: string[];
  note: string;
}

export interface PricedOptionOut {
  optionId: string;
  groupId: string;
  name: string;
  priceDeltaMinor: number;
}

export interface PricedLineOut {
  itemId: string;
  name: string;
  quantity: number;
  unitPriceMinor: number;
  options: PricedOptionOut[];
  lineTotalMinor: number;
  note: string;
}

export interface PricedCart {
  lines: PricedLineOut[];
  subtotalMinor: number;
  currency: string;
  distanceKm: number;
  deliveryFeeMinor: number;
}

/** A cart problem: "invalid" maps to INVALID_ARGUMENT, "precondition" to FAILED_PRECONDITION; field names the offending part. */
export class CartError extends Error {
  constructor(
    readonly kind: "invalid" | "precondition",
    readonly field: string,
    readonly problem: string,
  ) {
    super(`${field}: ${problem}`);
    this.name = "CartError";
  }
}

/** Checks the shape of the cart before anything is looked up (no catalog data needed). */
export function validateCartShape(lines: CartLineInput[]): void {
  if (lines.length === 0) throw new CartError("invalid", "lines", "the cart is empty");
  if (lines.length > MAX_CART_LINES) throw new CartError("invalid", "lines", `at most ${MAX_CART_LINES} lines`);
  lines.forEach((l, i) => {
    if (!l.itemId) throw new CartError("invalid", `lines[${i}].item_id`, "required");
    if (!Number.isInteger(l.quantity) || l.quantity < 1 || l.quantity > MAX_QUANTITY) {
      throw new CartError("invalid", `lines[${i}].quantity`, `must be 1 to ${MAX_QUANTITY}`);
    }
    if ([...l.note].length > MAX_NOTE_CHARS) throw new CartError("invalid", `lines[${i}].note`, `at most ${MAX_NOTE_CHARS} characters`);
    if (l.optionIds.length > 50) throw new CartError("invalid", `lines[${i}].option_ids`, "too many options");
    const seen = new Set<string>();
    l.optionIds.forEach((o, j) => {
      if (seen.has(o)) throw new CartError("invalid", `lines[${i}].option_ids[${j}]`, "option chosen twice");
      seen.add(o);
    });
  });
}

/**
 * Validates and prices a cart against the restaurant and its items (items: those of this
 * restaurant that the cart names, by id). Invalid choices first (unknown item, options not of
 * the item, group min/max), then availability (item or option sold out), then the
 * restaurant (open now, delivery radius). Throws CartError; never trusts a client price.
 */
export function priceCart(input: {
  restaurant: RestaurantInfo;
  items: Map<string, ItemInfo>;
  lines: CartLineInput[];
  deliveryLocation: { lat: number; lng: number };
  fees: FeeConfig;
  now: Date;
}): PricedCart {
  const { restaurant: r, items, lines } = input;
  validateCartShape(lines);

  const resolved = lines.map((l, i) => {
    const item = items.get(l.itemId);
    // Another restaurant's item is "unknown" too: its existence is not revealed.
    if (!item || item.restaurantId !== r.id) throw new CartError("invalid", `lines[${i}].item_id`, `unknown item ${l.itemId} for this restaurant`);
    const chosen: Array<{ group: GroupInfo; option: OptionInfo; j: number }> = [];
    l.optionIds.forEach((oid, j) => {
      for (const g of item.groups) {
        const o = g.options.find((x) => x.id === oid);
        if (o) {
          chosen.push({ group: g, option: o, j });
          return;
        }
      }
      throw new CartError("invalid", `lines[${i}].option_ids[${j}]`, `option ${oid} does not belong to item ${item.id}`);
    });
    for (const g of item.groups) {
      const n = chosen.filter((c) => c.group.id === g.id).length;
      if (n < g.minChoices) throw new CartError("invalid", `lines[${i}].option_ids`, `group "${g.name}" needs at least ${g.minChoices} choice(s)`);
      if (n > g.maxChoices) throw new CartError("invalid", `lines[${i}].option_ids`, `group "${g.name}" allows at most ${g.maxChoices} choice(s)`);
    }
    return { line: l, item, chosen, i };
  });

  for (const { item, chosen, i } of resolved) {
    if (!item.available) throw new CartError("precondition", `lines[${i}].item_id`, `item ${item.id} (${item.name}) is unavailable`);
    for (const c of chosen) {
      if (!c.option.available) {
        throw new CartError("precondition", `lines[${i}].option_ids[${c.j}]`, `option ${c.option.id} (${c.option.name}) is unavailable`);
      }
    }
  }

  if (!isOpenNow(r, input.now)) throw new CartError("precondition", "restaurant_id", `restaurant ${r.id} is closed`);
  const distanceKm = haversineKm(r, input.deliveryLocation);
  if (distanceKm > r.deliveryRadiusKm) {
    throw new CartError(
      "precondition",
      "delivery_location",
      `${distanceKm.toFixed(2)} km is outside the restaurant's delivery radius of ${r.deliveryRadiusKm} km`,
    );
  }

  const priced: PricedLineOut[] = resolved.map(({ line, item, chosen }) => {
    const options = chosen.map((c) => ({ optionId: c.option.id, groupId: c.group.id, name: c.option.name, priceDeltaMinor: c.option.priceDeltaMinor }));
    const unit = item.priceMinor + options.reduce((s, o) => s + o.priceDeltaMinor, 0);
    return { itemId: item.id, name: item.name, quantity: line.quantity, unitPriceMinor: unit, options, lineTotalMinor: unit * line.quantity, note: line.note };
  });
  return {
    lines: priced,
    subtotalMinor: priced.reduce((s, l) => s + l.lineTotalMinor, 0),
    currency: r.currency,
    distanceKm,
    deliveryFeeMinor: deliveryFeeMinor(input.fees, distanceKm),
  };
}

function mod(a: number, n: number): number {
  return ((a % n) + n) % n;
}
