/**
 * The ETA service object (not a gRPC service): quotes for the catalog (PriceCart, search) and
 * recomputes for the order service's updater, from the pure model (./domain.ts), the routing
 * port (./routing.ts) and what was learned from history, kept in Redis:
 *
 *   eta:prep:<restaurantId>  hash  n:<hour> count, s:<hour> summed seconds of confirmed->ready
 *   eta:err                  hash  <bin> count of residuals (actual - raw estimate at placement)
 *   eta:confirmed:<orderId>  when the order was confirmed (epoch ms), for the time spent
 *   eta:placed:<orderId>     the raw estimate at placement, to learn the residual on delivery
 *   eta:seen:<eventId>       a learned event already counted (redelivery does not count twice)
 */
import type { EtaConfig } from "../platform/config.js";
import type { RedisPorts } from "../platform/redis.js";
import {
  DEFAULT_ERROR_MODEL_CONFIG,
  displayMinutes,
  estimateDelivery,
  expectedPrepMinutes,
  learnErrorModelFromHistogram,
  legsFor,
  localHour,
  residualBin,
  type DeliveryEstimate,
  type ErrorModel,
  type ErrorModelConfig,
  type EtaStage,
  type PrepHourStat,
} from "./domain.js";
import { CachedRouting, haversineRouting, type LatLng, type RoutingPort } from "./routing.js";

const MIN = 60_000;
/** Per-order keys live this long (an order older than this is long delivered or cancelled). */
const ORDER_KEY_TTL_MS = 2 * 86_400_000;
/** The error model is read from Redis at most this often per process. */
const ERROR_MODEL_REFRESH_MS = 30_000;
/** A confirmed->ready time outside this is a data problem (a kitchen that forgot to press READY), not a sample. */
const MAX_PREP_SAMPLE_MIN = 180;

export const ERROR_MODEL_KEY = "eta:err";
export const prepKey = (restaurantId: string) => `eta:prep:${restaurantId}`;
export const confirmedKey = (orderId: string) => `eta:confirmed:${orderId}`;
export const placedKey = (orderId: string) => `eta:placed:${orderId}`;
const seenKey = (eventId: string) => `eta:seen:${eventId}`;

/** A restaurant as the estimate needs it. */
export interface EtaRestaurant {
  id: string;
  location: LatLng;
  /** The configured average prep, used for hours without enough history. */
  avgPrepMinutes: number;
}

/** An estimate: minutes from `atMs` (fractional) and the shown whole-minute range. */
export interface EtaQuote extends DeliveryEstimate {
  /** The model's estimate before the error model (what a residual is measured against). */
  rawMinutes: number;
  minMinutes: number;
  maxMinutes: number;
  atMs: number;
  /** Absolute bounds, epoch ms: atMs + low / high minutes. */
  lowAtMs: number;
  highAtMs: number;
}

export interface RecomputeInput {
  stage: EtaStage;
  restaurant: EtaRestaurant;
  customer: LatLng;
  /** The assigned driver's last position, when there is one. */
  driver?: LatLng;
  /** When the order was confirmed (stage kitchen), epoch ms; unknown means nothing spent yet. */
  confirmedAtMs?: number;
}

export interface EtaService {
  /** The estimate if ordered now, for one restaurant and delivery point. */
  quote(restaurant: EtaRestaurant, customer: LatLng): Promise<EtaQuote>;
  /** quote() for many restaurants to one point (a search page): one Redis round trip for all. */
  quoteMany(restaurants: readonly EtaRestaurant[], customer: LatLng): Promise<EtaQuote[]>;
  /** The estimate of an order at its stage, as of now. */
  recompute(input: RecomputeInput): Promise<EtaQuote>;
  /** recompute() for many orders: one Redis round trip for their restaurants' prep history. */
  recomputeMany(inputs: readonly RecomputeInput[]): Promise<EtaQuote[]>;
  /** Records that an order was confirmed at `atMs` (for the time spent and the prep sample). */
  recordConfirmed(orderId: string, atMs: number): Promise<void>;
  /** When the order was confirmed, for many orders at once (undefined: unknown). */
  confirmedAt(orderIds: readonly string[]): Promise<(number | undefined)[]>;
  /** Learns one confirmed->ready sample when the order is ready (once per event id). */
  recordReady(eventId: string, orderId: string, restaurantId: string, readyAtMs: number): Promise<void>;
  /** Keeps the raw estimate made at placement (learned against on delivery). */
  recordPlaced(orderId: string, placedAtMs: number, rawMinutes: number): Promise<void>;
  /** Learns one residual (actual - raw at placement) when the order is delivered (once per event id). */
  recordDelivered(eventId: string, orderId: string, deliveredAtMs: number): Promise<void>;
  /** The error model in use now (learned, or the default until enough deliveries). */
  errorModel(): Promise<ErrorModel>;
  readonly routing: RoutingPort;
}

export interface EtaServiceOptions {
  redis: Pick<RedisPorts, "kv" | "hgetallMany">;
  config: EtaConfig;
  now?: () => number;
}

/** Per-hour stats from an eta:prep hash. */
export function prepStatsOf(h: Record<string, string>): PrepHourStat[] {
  const out: PrepHourStat[] = [];
  for (let hour = 0; hour < 24; hour++) {
    const n = Number(h[`n:${hour}`] ?? 0);
    const s = Number(h[`s:${hour}`] ?? 0);
    if (Number.isFinite(n) && n > 0 && Number.isFinite(s)) out.push({ hourOfDay: hour, count: n, meanMinutes: s / n / 60 });
  }
  return out;
}

/** The residual histogram of the eta:err hash. */
export function histogramOf(h: Record<string, string>): Map<number, number> {
  const bins = new Map<number, number>();
  for (const [k, v] of Object.entries(h)) {
    const bin = Number(k);
    const n = Number(v);
    if (Number.isInteger(bin) && Number.isFinite(n) && n > 0) bins.set(bin, n);
  }
  return bins;
}

export function createEtaService(opts: EtaServiceOptions): EtaService {
  const cfg = opts.config;
  const now = opts.now ?? Date.now;
  const kv = opts.redis.kv;
  const routing = new CachedRouting(
    haversineRouting({ detourFactor: cfg.detourFactor, baseKmh: cfg.baseKmh, bands: cfg.speedBands, utcOffsetMinutes: cfg.utcOffsetMinutes }),
    { geohashPrecision: 6, bucketMs: cfg.routeCacheBucketMs, ttlMs: cfg.routeCacheTtlMs, maxEntries: cfg.routeCacheMaxEntries },
    now,
  );
  const emCfg: ErrorModelConfig = {
    ...DEFAULT_ERROR_MODEL_CONFIG,
    minWidthMinutes: cfg.minRangeMinutes,
    minSamples: cfg.minErrorSamples,
    defaultHalfWidthMinutes: cfg.defaultHalfWidthMinutes,
  };
  let em: { model: ErrorModel; atMs: number } | undefined;
  let emLoading: Promise<ErrorModel> | undefined;

  async function errorModel(): Promise<ErrorModel> {
    const t = now();
    if (em && t - em.atMs < ERROR_MODEL_REFRESH_MS) return em.model;
    emLoading ??= kv
      .hgetall(ERROR_MODEL_KEY)
      .then((h) => {
        const model = learnErrorModelFromHistogram(histogramOf(h), emCfg);
        em = { model, atMs: now() };
        return model;
      })
      .finally(() => {
        emLoading = undefined;
      });
    return emLoading;
  }

  function estimate(input: RecomputeInput, stats: PrepHourStat[], model: ErrorModel, atMs: number): EtaQuote {
    const r = input.restaurant;
    const hourAt = input.stage === "kitchen" && input.confirmedAtMs !== undefined ? input.confirmedAtMs : atMs;
    const expectedPrepMin = expectedPrepMinutes(stats, localHour(hourAt, cfg.utcOffsetMinutes), {
      fallbackMinutes: r.avgPrepMinutes,
      minSamples: cfg.minPrepSamples,
    });
    const spentMin = input.confirmedAtMs !== undefined ? (atMs - input.confirmedAtMs) / MIN : 0;
    // The trip to the customer starts when the later of the kitchen and the driver is done.
    const legsAt = (prepLeft: number) => atMs + prepLeft * MIN;
    const d = input.driver;
    const driverToRestaurantS = d && (input.stage === "kitchen" || input.stage === "ready") ? routing.travelSeconds(d, r.location, atMs) : undefined;
    const prepLeft = input.stage === "quote" ? expectedPrepMin : input.stage === "kitchen" ? Math.max(0, expectedPrepMin - spentMin) : 0;
    const departMs = legsAt(Math.max(prepLeft, (driverToRestaurantS ?? 0) / 60));
    const legs = legsFor({
      stage: input.stage,
      expectedPrepMin,
      spentMin,
      driverToRestaurantS,
      restaurantToCustomerS: routing.travelSeconds(r.location, input.customer, departMs),
      driverToCustomerS: d && input.stage === "carried" ? routing.travelSeconds(d, input.customer, atMs) : undefined,
    });
    const e = estimateDelivery({ ...legs, errorModel: model, minWidthMinutes: cfg.minRangeMinutes });
    const raw = estimateDelivery({ ...legs, errorModel: { biasMinutes: 0, lowMinutes: 0, highMinutes: 0, samples: 0 }, minWidthMinutes: 0 }).minutes;
    return {
      ...e,
      ...displayMinutes(e),
      rawMinutes: raw,
      atMs,
      lowAtMs: atMs + e.lowMinutes * MIN,
      highAtMs: atMs + e.highMinutes * MIN,
    };
  }

  async function recomputeMany(inputs: readonly RecomputeInput[]): Promise<EtaQuote[]> {
    if (inputs.length === 0) return [];
    const ids = [...new Set(inputs.map((i) => i.restaurant.id))];
    const [hashes, model] = await Promise.all([opts.redis.hgetallMany(ids.map(prepKey)), errorModel()]);
    const stats = new Map(ids.map((id, i) => [id, prepStatsOf(hashes[i] ?? {})]));
    const atMs = now();
    return inputs.map((input) => estimate(input, stats.get(input.restaurant.id)!, model, atMs));
  }

  return {
    routing,
    errorModel,
    recomputeMany,
    async recompute(input) {
      return (await recomputeMany([input]))[0]!;
    },
    async quote(restaurant, customer) {
      return (await recomputeMany([{ stage: "quote", restaurant, customer }]))[0]!;
    },
    quoteMany(restaurants, customer) {
      return recomputeMany(restaurants.map((restaurant) => ({ stage: "quote" as const, restaurant, customer })));
    },
    async recordConfirmed(orderId, atMs) {
      // nx: a redelivered confirmation keeps the first time.
      await kv.set(confirmedKey(orderId), String(atMs), { ttlMs: ORDER_KEY_TTL_MS, nx: true });
    },
    async confirmedAt(orderIds) {
      if (orderIds.length === 0) return [];
      const vals = await kv.mget(orderIds.map(confirmedKey));
      return vals.map((v) => (v !== null && Number.isFinite(Number(v)) ? Number(v) : undefined));
    },
    async recordReady(eventId, orderId, restaurantId, readyAtMs) {
      const c = await kv.get(confirmedKey(orderId));
      const confirmedAtMs = c === null ? NaN : Number(c);
      if (!Number.isFinite(confirmedAtMs)) return;
      const prepS = Math.round((readyAtMs - confirmedAtMs) / 1000);
      if (prepS < 0 || prepS > MAX_PREP_SAMPLE_MIN * 60) return;
      if (!(await kv.set(seenKey(eventId), "1", { ttlMs: ORDER_KEY_TTL_MS, nx: true }))) return;
      const hour = localHour(confirmedAtMs, cfg.utcOffsetMinutes);
      await kv.hincrby(prepKey(restaurantId), `s:${hour}`, prepS);
      await kv.hincrby(prepKey(restaurantId), `n:${hour}`, 1);
    },
    async recordPlaced(orderId, placedAtMs, rawMinutes) {
      await kv.set(placedKey(orderId), JSON.stringify({ atMs: placedAtMs, raw: rawMinutes }), { ttlMs: ORDER_KEY_TTL_MS, nx: true });
    },
    async recordDelivered(eventId, orderId, deliveredAtMs) {
      const v = await kv.get(placedKey(orderId));
      if (v === null) return;
      let placed: { atMs?: unknown; raw?: unknown };
      try {
        placed = JSON.parse(v) as { atMs?: unknown; raw?: unknown };
      } catch {
        return;
      }
      if (typeof placed.atMs !== "number" || typeof placed.raw !== "number") return;
      const bin = residualBin((deliveredAtMs - placed.atMs) / MIN - placed.raw);
      if (bin === undefined) return;
      if (!(await kv.set(seenKey(eventId), "1", { ttlMs: ORDER_KEY_TTL_MS, nx: true }))) return;
      await kv.hincrby(ERROR_MODEL_KEY, String(bin), 1);
      em = undefined;
    },
  };
}
