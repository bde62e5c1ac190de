/**
 * ETA model (DESIGN.md section 6): pure rules, no I/O. Travel legs come from a RoutingPort
 * (./routing.ts); prep history and past residuals come from whatever store the caller has.
 */

/** One observed confirmed-to-ready time of a restaurant, at the local hour it was confirmed. */
export interface PrepSample {
  hourOfDay: number;
  prepMinutes: number;
}

/** Per-hour aggregate of prep samples (what a store's GROUP BY hour returns). */
export interface PrepHourStat {
  hourOfDay: number;
  count: number;
  meanMinutes: number;
}

export interface PrepModelConfig {
  /** The restaurant's configured average prep, used for an hour with too little history. */
  fallbackMinutes: number;
  /** Fewer samples than this for an hour and its mean is too noisy to trust. */
  minSamples: number;
}

export const DEFAULT_MIN_PREP_SAMPLES = 5;

/** Local hour of day 0..23 of an instant, for a city `utcOffsetMinutes` ahead of UTC. */
export function localHour(atMs: number, utcOffsetMinutes: number): number {
  const h = Math.floor((atMs + utcOffsetMinutes * 60_000) / 3_600_000) % 24;
  return h < 0 ? h + 24 : h;
}

/** Folds raw samples into per-hour stats; samples with an hour outside 0..23 or a non-finite or negative time are dropped. */
export function aggregatePrepSamples(samples: readonly PrepSample[]): PrepHourStat[] {
  const sum = new Array<number>(24).fill(0);
  const count = new Array<number>(24).fill(0);
  for (const s of samples) {
    if (!Number.isInteger(s.hourOfDay) || s.hourOfDay < 0 || s.hourOfDay > 23) continue;
    if (!Number.isFinite(s.prepMinutes) || s.prepMinutes < 0) continue;
    sum[s.hourOfDay] += s.prepMinutes;
    count[s.hourOfDay]++;
  }
  const out: PrepHourStat[] = [];
  for (let h = 0; h < 24; h++) if (count[h] > 0) out.push({ hourOfDay: h, count: count[h], meanMinutes: sum[h] / count[h] });
  return out;
}

/**
 * Expected confirmed-to-ready minutes at `hourOfDay`: the learned mean for that hour when it
 * has at least minSamples samples, else the configured average.
 */
export function expectedPrepMinutes(stats: readonly PrepHourStat[], hourOfDay: number, cfg: PrepModelConfig): number {
  const s = stats.find((x) => x.hourOfDay === hourOfDay);
  if (s && s.count >= cfg.minSamples && Number.isFinite(s.meanMinutes)) return s.meanMinutes;
  return cfg.fallbackMinutes;
}

/** Expected prep minus the minutes already spent since confirmation, never below 0 (a late kitchen is "any moment now"). */
export function remainingPrepMinutes(
  stats: readonly PrepHourStat[],
  hourOfDay: number,
  spentMinutes: number,
  cfg: PrepModelConfig,
): number {
  return Math.max(0, expectedPrepMinutes(stats, hourOfDay, cfg) - Math.max(0, spentMinutes));
}

/** The q-quantile (0..1) of `values` with linear interpolation between order statistics (R type 7). */
export function quantile(values: readonly number[], q: number): number {
  if (values.length === 0) throw new RangeError("quantile of an empty list");
  if (!(q >= 0 && q <= 1)) throw new RangeError(`quantile q must be in 0..1, got ${q}`);
  const sorted = [...values].sort((a, b) => a - b);
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo);
}

/**
 * How wrong past estimates were, as offsets in minutes to add to a raw estimate
 * (residual = actual - raw estimate). biasMinutes is the median residual: the part of the
 * delivery the legs do not model (waiting for confirmation, handing over at the counter and
 * at the door). lowMinutes/highMinutes are the lower and upper residual quantiles.
 */
export interface ErrorModel {
  biasMinutes: number;
  lowMinutes: number;
  highMinutes: number;
  /** Residuals the model was learned from; 0 means the configured defaults. */
  samples: number;
}

export interface ErrorModelConfig {
  lowQuantile: number;
  highQuantile: number;
  /** The shown range is never narrower than this, so a lucky history cannot promise "31-32 min". */
  minWidthMinutes: number;
  /** Fewer residuals than this and the default model is used. */
  minSamples: number;
  /** Used until there is enough history: no bias, symmetric range of this half-width. */
  defaultHalfWidthMinutes: number;
}

export const DEFAULT_ERROR_MODEL_CONFIG: Readonly<ErrorModelConfig> = Object.freeze({
  lowQuantile: 0.1,
  highQuantile: 0.9,
  minWidthMinutes: 6,
  minSamples: 30,
  defaultHalfWidthMinutes: 5,
});

/** Learns an ErrorModel from residuals (actual - raw estimate, minutes); non-finite residuals are ignored. */
export function learnErrorModel(residualsMinutes: readonly number[], cfg: ErrorModelConfig = DEFAULT_ERROR_MODEL_CONFIG): ErrorModel {
  const r = residualsMinutes.filter((x) => Number.isFinite(x));
  if (r.length < cfg.minSamples) {
    return { biasMinutes: 0, lowMinutes: -cfg.defaultHalfWidthMinutes, highMinutes: cfg.defaultHalfWidthMinutes, samples: 0 };
  }
  return {
    biasMinutes: quantile(r, 0.5),
    lowMinutes: quantile(r, cfg.lowQuantile),
    highMinutes: quantile(r, cfg.highQuantile),
    samples: r.length,
  };
}

export interface EstimateInput {
  /** remainingPrepMinutes(...) at the moment of the estimate. */
  prepRemainingMin: number;
  /** Driver's current position to the restaurant; absent before a driver is assigned or after pickup. */
  driverToRestaurantS?: number;
  /** Restaurant (or, after pickup, the driver) to the customer. */
  restaurantToCustomerS: number;
  errorModel: ErrorModel;
  /** Minimum width of the range; DEFAULT_ERROR_MODEL_CONFIG.minWidthMinutes when absent. */
  minWidthMinutes?: number;
}

export interface DeliveryEstimate {
  /** Minutes from now to delivery (fractional; round for display). */
  minutes: number;
  lowMinutes: number;
  highMinutes: number;
}

/**
 * raw     = max(prepRemaining, driverToRestaurant) + restaurantToCustomer
 * minutes = max(0, raw + bias)
 * low     = max(0, raw + lowOffset),  high = raw + highOffset
 * then widened to at least minWidth, centred on (low + high) / 2 and shifted up if that put
 * low below 0, and finally stretched to contain `minutes`.
 *
 * The driver leg is a max, not a sum (DESIGN.md section 6 writes "+"): dispatch sends the
 * driver while the kitchen cooks (leadStartAtMs), so pickup happens when the later of the
 * two is done. Adding them would quote every assigned order several minutes late.
 */
export function estimateDelivery(input: EstimateInput): DeliveryEstimate {
  const prep = Math.max(0, input.prepRemainingMin);
  const toRestaurantMin = Math.max(0, input.driverToRestaurantS ?? 0) / 60;
  const toCustomerMin = Math.max(0, input.restaurantToCustomerS) / 60;
  const raw = Math.max(prep, toRestaurantMin) + toCustomerMin;
  const em = input.errorModel;
  const minWidth = Math.max(0, input.minWidthMinutes ?? DEFAULT_ERROR_MODEL_CONFIG.minWidthMinutes);

  const minutes = Math.max(0, raw + em.biasMinutes);
  let low = Math.max(0, raw + Math.min(em.lowMinutes, em.highMinutes));
  let high = Math.max(low, raw + Math.max(em.lowMinutes, em.highMinutes));
  if (high - low < minWidth) {
    const mid = (low + high) / 2;
    low = Math.max(0, mid - minWidth / 2);
    high = low + minWidth;
  }
  low = Math.min(low, minutes);
  high = Math.max(high, minutes);
  return { minutes, lowMinutes: low, highMinutes: high };
}

// ---------------------------------------------------------------------------------------------
// Learned error model kept as a histogram (a store adds one count per delivered order).

/** Width of one residual bin, minutes. */
export const RESIDUAL_BIN_MINUTES = 0.5;
/** Residuals are clamped into this range before binning (a 3-hour outlier counts as +120). */
export const RESIDUAL_CLAMP_MINUTES = { low: -60, high: 120 } as const;

/** The bin (an integer) a residual in minutes falls in; undefined for a non-finite residual. */
export function residualBin(residualMinutes: number): number | undefined {
  if (!Number.isFinite(residualMinutes)) return undefined;
  const r = Math.min(RESIDUAL_CLAMP_MINUTES.high, Math.max(RESIDUAL_CLAMP_MINUTES.low, residualMinutes));
  return Math.round(r / RESIDUAL_BIN_MINUTES);
}

/** The q-quantile of a histogram (bin -> count): the centre of the bin holding the ceil(q * n)-th smallest residual. */
export function histogramQuantile(bins: ReadonlyMap<number, number>, q: number): number {
  if (!(q >= 0 && q <= 1)) throw new RangeError(`quantile q must be in 0..1, got ${q}`);
  const sorted = [...bins.entries()].filter(([, n]) => n > 0).sort((a, b) => a[0] - b[0]);
  const total = sorted.reduce((s, [, n]) => s + n, 0);
  if (total === 0) throw new RangeError("quantile of an empty histogram");
  const rank = Math.max(1, Math.ceil(q * total));
  let seen = 0;
  for (const [bin, n] of sorted) {
    seen += n;
    if (seen >= rank) return bin * RESIDUAL_BIN_MINUTES;
  }
  return sorted[sorted.length - 1]![0] * RESIDUAL_BIN_MINUTES;
}

/** learnErrorModel over a residual histogram (bin -> count, bins from residualBin). */
export function learnErrorModelFromHistogram(bins: ReadonlyMap<number, number>, cfg: ErrorModelConfig = DEFAULT_ERROR_MODEL_CONFIG): ErrorModel {
  let n = 0;
  for (const c of bins.values()) if (c > 0) n += c;
  if (n < cfg.minSamples) {
    return { biasMinutes: 0, lowMinutes: -cfg.defaultHalfWidthMinutes, highMinutes: cfg.defaultHalfWidthMinutes, samples: 0 };
  }
  return {
    biasMinutes: histogramQuantile(bins, 0.5),
    lowMinutes: histogramQuantile(bins, cfg.lowQuantile),
    highMinutes: histogramQuantile(bins, cfg.highQuantile),
    samples: n,
  };
}

// ---------------------------------------------------------------------------------------------
// Which legs an order still has, by where it is in its life.

/**
 * - quote: not placed yet, or placed and not confirmed: the whole prep is ahead.
 * - kitchen: confirmed or preparing: prep minus the time spent since confirmation.
 * - ready: the food waits; only the driver's leg to the restaurant (if any) and the trip remain.
 * - carried: picked up or en route: the driver's position to the customer.
 */
export type EtaStage = "quote" | "kitchen" | "ready" | "carried";

export interface LegsInput {
  stage: EtaStage;
  /** Expected confirmed-to-ready minutes for this restaurant and hour (expectedPrepMinutes). */
  expectedPrepMin: number;
  /** Minutes since confirmation (stage kitchen). */
  spentMin: number;
  /** Seconds from the assigned driver's last position to the restaurant (stages kitchen and ready), when known. */
  driverToRestaurantS?: number;
  /** Seconds from the restaurant to the customer. */
  restaurantToCustomerS: number;
  /** Seconds from the driver's last position to the customer (stage carried), when known; else restaurantToCustomerS. */
  driverToCustomerS?: number;
}

/** The legs estimateDelivery takes for an order at `stage`. */
export function legsFor(i: LegsInput): Pick<EstimateInput, "prepRemainingMin" | "driverToRestaurantS" | "restaurantToCustomerS"> {
  switch (i.stage) {
    case "quote":
      return { prepRemainingMin: i.expectedPrepMin, restaurantToCustomerS: i.restaurantToCustomerS };
    case "kitchen":
      return {
        prepRemainingMin: Math.max(0, i.expectedPrepMin - Math.max(0, i.spentMin)),
        driverToRestaurantS: i.driverToRestaurantS,
        restaurantToCustomerS: i.restaurantToCustomerS,
      };
    case "ready":
      return { prepRemainingMin: 0, driverToRestaurantS: i.driverToRestaurantS, restaurantToCustomerS: i.restaurantToCustomerS };
    case "carried":
      return { prepRemainingMin: 0, restaurantToCustomerS: i.driverToCustomerS ?? i.restaurantToCustomerS };
  }
}

/** Whether a stored range (absolute bounds, ms) should be replaced by a new one: either bound moved by at least thresholdMs. */
export function etaMoved(stored: { lowAtMs: number; highAtMs: number } | undefined, next: { lowAtMs: number; highAtMs: number }, thresholdMs: number): boolean {
  if (!stored) return true;
  return Math.abs(next.lowAtMs - stored.lowAtMs) >= thresholdMs || Math.abs(next.highAtMs - stored.highAtMs) >= thresholdMs;
}

/** Whole minutes shown for a range: the low end rounded down, the high end up (at least the low end). */
export function displayMinutes(e: { lowMinutes: number; highMinutes: number }): { minMinutes: number; maxMinutes: number } {
  const minMinutes = Math.max(0, Math.floor(e.lowMinutes));
  return { minMinutes, maxMinutes: Math.max(minMinutes, Math.ceil(e.highMinutes)) };
}
