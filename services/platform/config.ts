import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { SERVICE_NAMES, type ServiceName } from "./service.js";
import { defaultStreamRetentionConfig, type StreamRetentionConfig } from "./stream-retention.js";

/** Typed, validated, frozen configuration. Only loadConfig (called by main) reads the environment. */
export interface Config {
  /** Services this process hosts. */
  services: ServiceName[];
  /** Native gRPC port (grpc-js). 0 picks a free port. */
  port: number;
  /** Connect / gRPC-web port (connect-node). 0 picks a free port. */
  webPort: number;
  host: string;
  /** Address (host:port) of each peer service that is not co-hosted. */
  peerAddrs: Partial<Record<ServiceName, string>>;
  /** Postgres URL; undefined means embedded PGlite in dataDir. */
  databaseUrl?: string;
  /** Postgres connections per process. */
  databasePoolSize: number;
  /** Redis URL; undefined means in-process twins. */
  redisUrl?: string;
  /** Folder for PGlite data and the development JWT secret. */
  dataDir: string;
  auth: AuthConfig;
  /** Largest accepted request message in bytes. */
  maxMessageBytes: number;
  /** Grace period for draining calls and streams on SIGTERM, in ms. */
  shutdownGraceMs: number;
  logLevel: string;
  /** Load the small demo city when the catalog is empty at start. */
  demoSeed: boolean;
  orders: OrderConfig;
  /** Allowed CORS origins on the web port; ["*"] allows all. */
  corsOrigins: string[];
  location: LocationConfig;
  tracking: TrackingConfig;
  dispatch: DispatchConfig;
  payments: PaymentsConfig;
  notifications: NotificationsConfig;
  eta: EtaConfig;
  /** Retention of the event streams (events:orders, events:location). */
  eventStreams: StreamRetentionConfig;
  /**
   * Test-only fault injection (DABBA_FAILPOINT): the named point kills the process with SIGKILL
   * when reached, e.g. "dispatch:offer-locked" (a driver is locked, the offer not yet recorded).
   */
  failpoint?: string;
}

/** A configured city: drivers are indexed per city (one geo key each). */
export interface City {
  /** Lower-case name used in keys and requests, e.g. "bengaluru". */
  name: string;
  centre: { lat: number; lng: number };
  /** Rectangle that belongs to the city; a fix inside it is indexed under this city. */
  bounds: { south: number; west: number; north: number; east: number };
}

/** GPS ingestion, validation, history and geofences. */
export interface LocationConfig {
  cities: City[];
  /** Fixes with a worse (larger) accuracy radius are rejected. */
  maxAccuracyM: number;
  /** How far a device clock may run ahead of the server. */
  maxFutureMs: number;
  /** How old a fix may be (phones buffer fixes while offline). */
  maxPastMs: number;
  /** Implied speed between consecutive accepted fixes above this is rejected as suspected spoofing. */
  maxSpeedMps: number;
  /** Per-driver rate limit: sustained pings per second (token bucket) ... */
  maxPingsPerSecond: number;
  /** ... and the burst a buffered batch may use. */
  pingBurst: number;
  /** Most pings in one ReportLocations message. */
  maxPingsPerMessage: number;
  /** TTL of a driver's last-fix hash: drivers silent this long drop out of matching. */
  fixTtlMs: number;
  /** Accepted pings are written to Redis once per tick, in one pipeline. */
  tickMs: number;
  /** Days of location history kept in Postgres (whole day partitions are dropped). */
  historyRetentionDays: number;
  /** At most one history point per driver per this interval (trails do not need every fix). */
  historyMinIntervalMs: number;
  /** History buffer flush interval and the buffered rows above which ingestion waits for a flush. */
  historyFlushMs: number;
  historyMaxBuffered: number;
  geofence: GeofenceConfig;
}

/** Geofence radii (metres) with hysteresis: enter when inside enterM, leave only beyond exitM. */
export interface GeofenceConfig {
  restaurantEnterM: number;
  restaurantExitM: number;
  customerApproachEnterM: number;
  customerApproachExitM: number;
  customerArriveEnterM: number;
  customerArriveExitM: number;
  /** A driver must stay inside (or outside) this long before the crossing counts. */
  dwellMs: number;
}

/** TrackOrder streams. */
export interface TrackingConfig {
  /** Heartbeat interval on an idle stream. */
  heartbeatMs: number;
  /** Driver positions per stream are spaced by this interval less a tenth (at most 100 ms) of jitter allowance (newest wins). */
  positionIntervalMs: number;
}

/** Scoring weights of a candidate (see services/dispatch/domain.ts scoreCandidates). */
export interface DispatchWeights {
  /** Per minute of estimated pickup travel (subtracted). */
  eta: number;
  /** Times the smoothed acceptance rate, 0 to 1. */
  acceptance: number;
  /** Times idle time as a share of idleCapMs, 0 to 1 (fairness). */
  idle: number;
  /** Times the cosine of the angle between the driver's heading and the bearing to the restaurant (moving drivers only). */
  heading: number;
}

/** Matching, offers and timers. */
export interface DispatchConfig {
  /** How long a driver has to answer an offer. */
  offerTtlMs: number;
  /** Search radii in km, widened in this order. */
  radiiKm: number[];
  /** Rounds (offers or empty searches) at one radius before widening to the next. */
  roundsPerRadius: number;
  /** GEOSEARCH COUNT: nearest drivers considered per round. */
  candidateCount: number;
  weights: DispatchWeights;
  /** Idle time beyond this scores the same (the idle term is min(idle, cap) / cap). */
  idleCapMs: number;
  /** Share of offers (0 to 1) that go to a random driver among the top 3 rather than the best (exploration). */
  explorationShare: number;
  /** Drivers offered at once: 1 (exclusive) or up to 3 (first valid accept wins, the rest are withdrawn). */
  parallelOffers: number;
  /** A candidate's last fix must be newer than this. */
  freshFixMs: number;
  /** Pause before the next round when nobody could be offered. */
  retryMs: number;
  /** After this long without a driver the order is flagged (event) and retries slow down. */
  flagAfterMs: number;
  /** Pause between rounds once flagged. */
  slowRetryMs: number;
  /** Lead time: when set, dispatch waits until remaining prep falls to the best driver's travel time plus this buffer; 0 starts at confirmation. */
  leadBufferMs: number;
  /** Pickup deadline = estimated travel to the restaurant (or food ready, if later) + this grace. */
  pickupGraceMs: number;
  /** Orders a driver may carry at once (1 = no stacking); OrderService enforces it in Postgres. */
  stackSize: number;
  /** A stacked order must be ready within this window of the driver's first order. */
  stackReadyWindowMs: number;
  /** A stacked order may delay the first order's delivery by at most this much. */
  stackMaxDelayMs: number;
  /** Job lease: a job active longer than this (its worker died) is retried by another worker. */
  jobLeaseMs: number;
  /** How often expired leases are looked for (pg-boss maintenance). */
  leaseCheckMs: number;
  /** Jobs a worker runs at once (bounded work). */
  workerConcurrency: number;
  /** A job that waited longer than this past its due time is matched nearest-first without scoring (overload). */
  degradeAfterMs: number;
  /** Typical speeds by vehicle in metres per second (bicycle, scooter, car), for travel estimates. */
  speedMps: { bicycle: number; scooter: number; car: number };
  /** Road distance over straight-line distance. */
  detourFactor: number;
}

export const defaultDispatchConfig: DispatchConfig = Object.freeze({
  offerTtlMs: 20_000,
  radiiKm: [5, 10],
  roundsPerRadius: 3,
  candidateCount: 50,
  weights: { eta: 1, acceptance: 2, idle: 1, heading: 0.5 },
  idleCapMs: 30 * 60_000,
  explorationShare: 0,
  parallelOffers: 1,
  freshFixMs: 60_000,
  retryMs: 2_000,
  flagAfterMs: 5 * 60_000,
  slowRetryMs: 30_000,
  leadBufferMs: 0,
  pickupGraceMs: 10 * 60_000,
  stackSize: 1,
  stackReadyWindowMs: 5 * 60_000,
  stackMaxDelayMs: 10 * 60_000,
  jobLeaseMs: 30_000,
  leaseCheckMs: 5_000,
  workerConcurrency: 64,
  degradeAfterMs: 1_000,
  speedMps: { bicycle: 4, scooter: 8, car: 7 },
  detourFactor: 1.3,
});

export const BENGALURU: City = Object.freeze({
  name: "bengaluru",
  centre: { lat: 12.9716, lng: 77.5946 },
  bounds: { south: 12.7, west: 77.3, north: 13.25, east: 77.9 },
});

export const defaultGeofenceConfig: GeofenceConfig = Object.freeze({
  restaurantEnterM: 60,
  restaurantExitM: 150,
  customerApproachEnterM: 800,
  customerApproachExitM: 1200,
  customerArriveEnterM: 60,
  customerArriveExitM: 150,
  dwellMs: 10_000,
});

export const defaultLocationConfig: LocationConfig = Object.freeze({
  cities: [BENGALURU],
  maxAccuracyM: 100,
  maxFutureMs: 10_000,
  maxPastMs: 10 * 60_000,
  maxSpeedMps: 55,
  maxPingsPerSecond: 5,
  pingBurst: 120,
  maxPingsPerMessage: 100,
  fixTtlMs: 60_000,
  tickMs: 5,
  historyRetentionDays: 30,
  historyMinIntervalMs: 1000,
  historyFlushMs: 500,
  historyMaxBuffered: 50_000,
  geofence: defaultGeofenceConfig,
});

export const defaultTrackingConfig: TrackingConfig = Object.freeze({
  heartbeatMs: 15_000,
  positionIntervalMs: 1000,
});

/** Delivery estimates (services/eta; ETA_*). */
export interface EtaConfig {
  /** Road distance / straight-line distance of the default routing. */
  detourFactor: number;
  /** Driving speed outside every band, km/h. */
  baseKmh: number;
  /** Slower local-time bands, e.g. ETA_SPEED_BANDS="8-10:17,12-14:17,17.5-21:15" (from-to hours : km/h); the first match wins. */
  speedBands: { fromHour: number; toHour: number; kmh: number }[];
  /** The city's offset from UTC in minutes (speed bands and prep hours are local). */
  utcOffsetMinutes: number;
  /** Route cache: entries older than this are misses, ms. */
  routeCacheTtlMs: number;
  /** Route cache: departure times are bucketed by this, ms. */
  routeCacheBucketMs: number;
  routeCacheMaxEntries: number;
  /** The shown range is never narrower than this, minutes. */
  minRangeMinutes: number;
  /** Half-width of the range until enough delivered orders taught the error model, minutes. */
  defaultHalfWidthMinutes: number;
  /** Samples an hour of a restaurant needs before its learned prep mean replaces the configured average. */
  minPrepSamples: number;
  /** Delivered orders needed before the learned error model replaces the default. */
  minErrorSamples: number;
  /** How often active orders with a driver are recomputed as the driver moves, ms. */
  recomputeMs: number;
  /** A recomputed estimate is stored and pushed (eta_changed) when either bound moved by at least this, minutes. */
  pushThresholdMinutes: number;
  /** Run the recompute worker in the order service (off in testConfig so other suites see no ETA events). */
  updater: boolean;
}

export const defaultEtaConfig: EtaConfig = Object.freeze({
  detourFactor: 1.35,
  baseKmh: 22,
  speedBands: Object.freeze([
    Object.freeze({ fromHour: 8, toHour: 10, kmh: 17 }),
    Object.freeze({ fromHour: 12, toHour: 14, kmh: 17 }),
    Object.freeze({ fromHour: 17.5, toHour: 21, kmh: 15 }),
  ]) as EtaConfig["speedBands"],
  utcOffsetMinutes: 330,
  routeCacheTtlMs: 30 * 60_000,
  routeCacheBucketMs: 15 * 60_000,
  routeCacheMaxEntries: 50_000,
  minRangeMinutes: 6,
  defaultHalfWidthMinutes: 5,
  minPrepSamples: 5,
  minErrorSamples: 30,
  recomputeMs: 15_000,
  pushThresholdMinutes: 1,
  updater: true,
});

/** ETA_SPEED_BANDS: comma list of "from-to:kmh" (hours 0..24, from < to, kmh > 0). */
export function parseSpeedBands(raw: string): EtaConfig["speedBands"] {
  return raw.split(",").map((s) => s.trim()).filter(Boolean).map((part, i) => {
    const m = /^(\d+(?:\.\d+)?)-(\d+(?:\.\d+)?):(\d+(?:\.\d+)?)$/.exec(part);
    const band = m ? { fromHour: Number(m[1]), toHour: Number(m[2]), kmh: Number(m[3]) } : undefined;
    if (!band || band.fromHour >= band.toHour || band.toHour > 24 || !(band.kmh > 0) || band.kmh > 200) {
      throw new ConfigError(`ETA_SPEED_BANDS[${i}] must be "from-to:kmh" with 0 <= from < to <= 24 and 0 < kmh <= 200, got "${part}"`);
    }
    return band;
  });
}

function loadEtaConfig(env: Env): EtaConfig {
  const d = defaultEtaConfig;
  return {
    detourFactor: float(env, "ETA_DETOUR_FACTOR", d.detourFactor, 1, 5),
    baseKmh: float(env, "ETA_BASE_KMH", d.baseKmh, 1, 200),
    speedBands: env.ETA_SPEED_BANDS !== undefined ? parseSpeedBands(env.ETA_SPEED_BANDS) : d.speedBands.map((b) => ({ ...b })),
    utcOffsetMinutes: int(env, "ETA_UTC_OFFSET_MINUTES", d.utcOffsetMinutes, -720, 840),
    routeCacheTtlMs: int(env, "ETA_ROUTE_CACHE_TTL_MS", d.routeCacheTtlMs, 1000, 86_400_000),
    routeCacheBucketMs: int(env, "ETA_ROUTE_CACHE_BUCKET_MS", d.routeCacheBucketMs, 60_000, 86_400_000),
    routeCacheMaxEntries: int(env, "ETA_ROUTE_CACHE_MAX_ENTRIES", d.routeCacheMaxEntries, 1, 10_000_000),
    minRangeMinutes: float(env, "ETA_MIN_RANGE_MINUTES", d.minRangeMinutes, 1, 60),
    defaultHalfWidthMinutes: float(env, "ETA_DEFAULT_HALF_WIDTH_MINUTES", d.defaultHalfWidthMinutes, 0.5, 60),
    minPrepSamples: int(env, "ETA_MIN_PREP_SAMPLES", d.minPrepSamples, 1, 100_000),
    minErrorSamples: int(env, "ETA_MIN_ERROR_SAMPLES", d.minErrorSamples, 1, 1_000_000),
    recomputeMs: int(env, "ETA_RECOMPUTE_MS", d.recomputeMs, 500, 3_600_000),
    pushThresholdMinutes: float(env, "ETA_PUSH_THRESHOLD_MINUTES", d.pushThresholdMinutes, 0.1, 60),
    updater: bool(env, "ETA_UPDATER", d.updater),
  };
}

/** Notifications: the inbox consumer and the outbound webhook worker (WEBHOOK_*, NOTIFICATIONS_*). */
export interface NotificationsConfig {
  /** Attempts of one delivery before it is dead-lettered (ReplayDeadLetters grants as many again). */
  webhookMaxAttempts: number;
  /** Retry delay after a failed attempt: a uniform random delay in [0, min(cap, base * 2^(attempt-1))] (full jitter), ms. */
  webhookBackoffBaseMs: number;
  webhookBackoffCapMs: number;
  /** An endpoint that has not answered within this is a failed attempt (timeout), ms. */
  webhookTimeoutMs: number;
  /** Deliveries in flight at once per process. */
  webhookConcurrency: number;
  /** A delivery job not completed within this lease (a crashed worker) runs again elsewhere, ms; above the timeout. */
  webhookLeaseMs: number;
  /** How often expired delivery leases are looked for, ms. */
  webhookLeaseCheckMs: number;
  /** Receivers should refuse a signature whose timestamp is further than this from their clock, s (verifySignature's default). */
  signatureToleranceS: number;
  /** Deliver to private, loopback and link-local addresses too (off: refused at registration and when connecting). */
  allowPrivateNetworks: boolean;
  /** Inbox messages older than this many days are deleted (hourly). */
  inboxRetentionDays: number;
  /** Delivered and dead webhook deliveries (with their attempt log) older than this many days are deleted (hourly). */
  webhookLogRetentionDays: number;
  /** WEBHOOK_SECRET_KEY: seals signing secrets at rest (AES-256-GCM); unset: stored as they are. */
  secretKey?: Buffer;
  /** WEBHOOK_SECRET_KEYS_PREVIOUS: keys of earlier rotations, used only to open (and reseal with secretKey). */
  previousSecretKeys: Buffer[];
}

export const defaultNotificationsConfig: NotificationsConfig = Object.freeze({
  webhookMaxAttempts: 8,
  webhookBackoffBaseMs: 2_000,
  webhookBackoffCapMs: 15 * 60_000,
  webhookTimeoutMs: 10_000,
  webhookConcurrency: 16,
  webhookLeaseMs: 60_000,
  webhookLeaseCheckMs: 5_000,
  signatureToleranceS: 300,
  allowPrivateNetworks: false,
  inboxRetentionDays: 90,
  webhookLogRetentionDays: 30,
  previousSecretKeys: [],
});

export interface AuthConfig {
  /** HS256 shared secret (also used to mint service tokens). */
  hsSecret?: string;
  /** PEM public key for RS256/ES256 verification. */
  publicKeyPem?: string;
  /** Algorithm of publicKeyPem: RS256 or ES256. */
  publicKeyAlg?: "RS256" | "ES256";
  issuer: string;
  audience: string;
  /** True when hsSecret was generated for development and stored in the data folder. */
  devSecret: boolean;
  /** Pre-minted service token for calls between services when no HS256 secret is configured. */
  serviceToken?: string;
}

export interface OrderConfig {
  /** Fee kept when a customer cancels while PREPARING or READY_FOR_PICKUP, in basis points of the subtotal. */
  lateCancelFeeBps: number;
  /** Tax rate in basis points of the subtotal. */
  taxBps: number;
  /** Delivery fee: base plus per km, in minor units. */
  deliveryBaseFeeMinor: number;
  deliveryPerKmMinor: number;
  currency: string;
  /** PlaceOrder calls allowed per customer per minute. */
  placeRatePerMinute: number;
  /** Idempotency key lifetime in hours. */
  idempotencyTtlHours: number;
  /** What happens to a PLACED order its restaurant did not answer in time, unless the restaurant chose (catalog AnswerPolicy). */
  answerPolicy: "auto_confirm" | "auto_reject";
  /** Seconds a PLACED order waits for its restaurant, unless the restaurant set its own. */
  answerTimeoutS: number;
  /** How long after delivery the customer may still change the tip. */
  tipWindowMs: number;
  /** Tax and delivery fee per city (the restaurant's city); cities not listed use taxBps and the delivery fee above. */
  cityPricing: Record<string, CityPricing>;
  /** Order jobs (payment settlement, reconciler, answer timers) running at once per process, and their lease. */
  jobConcurrency: number;
  jobLeaseMs: number;
}

/** Payments: the gateway port's adapter, its circuit breaker, the settlement worker and the reconciler (PAYMENTS_*). */
export interface PaymentsConfig {
  /** The gateway adapter; "test" is the built-in test gateway (state in its own table on the order database). */
  gateway: "test";
  /** Simulated latency of each test gateway call, ms. */
  testLatencyMs: number;
  /** A gateway call not answered within this is a timeout (its outcome is unknown until retried with its key), ms. */
  callTimeoutMs: number;
  /** The breaker opens when at least this percentage of the calls in its window failed (error or timeout)... */
  breakerErrorPct: number;
  /** ...and the window holds at least this many calls. */
  breakerMinCalls: number;
  /** The breaker's rolling window, ms. */
  breakerWindowMs: number;
  /** An open breaker lets one trial call through (half-open) after this, ms. */
  breakerResetMs: number;
  /** Retry delay after a failed gateway call (settlement and reconciler): base, doubled per consecutive failure, up to max, ms. */
  retryBaseMs: number;
  retryMaxMs: number;
  /** A PAYMENT_PENDING order whose authorization is still unknown after this is cancelled with nothing charged, ms. */
  maxPendingMs: number;
  /** One settlement per order at a time across processes: the claim's lease, ms. */
  leaseMs: number;
}

export const defaultPaymentsConfig: PaymentsConfig = Object.freeze({
  gateway: "test",
  testLatencyMs: 0,
  callTimeoutMs: 5_000,
  breakerErrorPct: 50,
  breakerMinCalls: 10,
  breakerWindowMs: 10_000,
  breakerResetMs: 5_000,
  retryBaseMs: 500,
  retryMaxMs: 60_000,
  maxPendingMs: 15 * 60_000,
  leaseMs: 30_000,
});

/** The tax rate and delivery-fee schedule of a city: its ORDERS_CITY_PRICING entry, else the platform's. */
export function cityPricingFor(orders: OrderConfig, city: string | undefined): CityPricing {
  return (
    (city && orders.cityPricing[city.toLowerCase()]) || {
      taxBps: orders.taxBps,
      deliveryBaseFeeMinor: orders.deliveryBaseFeeMinor,
      deliveryPerKmMinor: orders.deliveryPerKmMinor,
    }
  );
}

/** A city's tax rate and delivery-fee schedule (ORDERS_CITY_PRICING). */
export interface CityPricing {
  taxBps: number;
  deliveryBaseFeeMinor: number;
  deliveryPerKmMinor: number;
}

export const defaultOrderConfig: OrderConfig = Object.freeze({
  lateCancelFeeBps: 5000,
  taxBps: 500,
  deliveryBaseFeeMinor: 199,
  deliveryPerKmMinor: 50,
  currency: "USD",
  placeRatePerMinute: 30,
  idempotencyTtlHours: 24,
  answerPolicy: "auto_reject",
  answerTimeoutS: 300,
  tipWindowMs: 3_600_000,
  cityPricing: {},
  jobConcurrency: 32,
  jobLeaseMs: 30_000,
});

/** A config for tests and tools: embedded defaults, ephemeral ports, overridable. */
export function testConfig(overrides: Partial<Config> = {}): Config {
  return Object.freeze({
    services: [...SERVICE_NAMES],
    port: 0,
    webPort: 0,
    host: "127.0.0.1",
    peerAddrs: {},
    databasePoolSize: 10,
    dataDir: "memory://",
    auth: { hsSecret: "test-secret-test-secret-test-secret!", issuer: "dabba", audience: "dabba", devSecret: false },
    maxMessageBytes: 64 * 1024,
    shutdownGraceMs: 2000,
    logLevel: "silent",
    demoSeed: false,
    orders: { ...defaultOrderConfig },
    corsOrigins: ["*"],
    location: { ...defaultLocationConfig, geofence: { ...defaultGeofenceConfig } },
    tracking: { ...defaultTrackingConfig },
    dispatch: { ...defaultDispatchConfig, weights: { ...defaultDispatchConfig.weights }, radiiKm: [...defaultDispatchConfig.radiiKm], speedMps: { ...defaultDispatchConfig.speedMps } },
    payments: { ...defaultPaymentsConfig },
    // Test receivers listen on 127.0.0.1.
    notifications: { ...defaultNotificationsConfig, allowPrivateNetworks: true },
    eventStreams: { ...defaultStreamRetentionConfig },
    eta: { ...defaultEtaConfig, speedBands: defaultEtaConfig.speedBands.map((b) => ({ ...b })), updater: false },
    ...overrides,
  });
}

/** Thrown for configuration that cannot work; main prints the message and exits non-zero. */
export class ConfigError extends Error {}

type Env = Record<string, string | undefined>;

function int(env: Env, name: string, def: number, min: number, max: number): number {
  const raw = env[name];
  if (raw === undefined || raw === "") return def;
  const v = Number(raw);
  if (!Number.isInteger(v) || v < min || v > max) throw new ConfigError(`${name} must be an integer from ${min} to ${max}, got "${raw}"`);
  return v;
}

function bool(env: Env, name: string, def: boolean): boolean {
  const raw = env[name];
  if (raw === undefined || raw === "") return def;
  if (/^(1|true|yes|on)$/i.test(raw)) return true;
  if (/^(0|false|no|off)$/i.test(raw)) return false;
  throw new ConfigError(`${name} must be true or false, got "${raw}"`);
}

/** Parses SERVICES: "all" or a comma list of service names. */
export function parseServices(raw: string | undefined): ServiceName[] {
  if (!raw || raw.trim() === "" || raw.trim() === "all") return [...SERVICE_NAMES];
  const names = raw.split(",").map((s) => s.trim().toLowerCase()).filter(Boolean);
  for (const n of names) {
    if (!(SERVICE_NAMES as readonly string[]).includes(n)) {
      throw new ConfigError(`SERVICES: unknown service "${n}" (known: ${SERVICE_NAMES.join(", ")}, or "all")`);
    }
  }
  return [...new Set(names)] as ServiceName[];
}

/**
 * Reads the environment once (called by main and the CLIs only), validates it and freezes it.
 * Without a JWT secret or key, a development secret is generated once and kept in the data folder.
 */
export function loadConfig(env: Env): Config {
  const services = parseServices(env.SERVICES);
  const dispatch = loadDispatchConfig(env);
  const peerAddrs: Partial<Record<ServiceName, string>> = {};
  for (const name of SERVICE_NAMES) {
    const addr = env[`${name.toUpperCase()}_ADDR`];
    if (addr) peerAddrs[name] = addr;
  }
  const split = services.length < SERVICE_NAMES.length;
  const databaseUrl = env.DATABASE_URL || undefined;
  const redisUrl = env.REDIS_URL || undefined;
  if (split && (!databaseUrl || !redisUrl)) {
    const missing = [!databaseUrl && "DATABASE_URL", !redisUrl && "REDIS_URL"].filter(Boolean).join(" and ");
    throw new ConfigError(
      `SERVICES=${services.join(",")} splits dabba across processes, which needs shared storage: set ${missing}. ` +
        "The embedded defaults (PGlite, in-process Redis twins) live inside one process and cannot be shared.",
    );
  }
  const dataDir = env.DABBA_DATA_DIR || "./.dabba/data";

  let hsSecret = env.JWT_SECRET || undefined;
  const publicKeyPem = env.JWT_PUBLIC_KEY ? readMaybeFile(env.JWT_PUBLIC_KEY) : undefined;
  const publicKeyAlg = (env.JWT_PUBLIC_KEY_ALG || "RS256") as "RS256" | "ES256";
  if (publicKeyPem && !["RS256", "ES256"].includes(publicKeyAlg)) throw new ConfigError("JWT_PUBLIC_KEY_ALG must be RS256 or ES256");
  if (hsSecret && hsSecret.length < 32) throw new ConfigError("JWT_SECRET must be at least 32 characters");
  let devSecret = false;
  if (!hsSecret && !publicKeyPem) {
    if (split) throw new ConfigError("split deployments need JWT_SECRET or JWT_PUBLIC_KEY shared by every process");
    hsSecret = devSecretIn(dataDir);
    devSecret = true;
  }
  const serviceToken = env.SERVICE_TOKEN || undefined;
  if (!hsSecret && !serviceToken) throw new ConfigError("with only JWT_PUBLIC_KEY, set SERVICE_TOKEN (a service-role token) for calls between services");

  return Object.freeze({
    services,
    port: int(env, "PORT", 8080, 0, 65535),
    webPort: int(env, "WEB_PORT", 8081, 0, 65535),
    host: env.HOST || "0.0.0.0",
    peerAddrs,
    databaseUrl,
    databasePoolSize: int(env, "DATABASE_POOL_SIZE", 20, 2, 500),
    redisUrl,
    dataDir,
    auth: {
      hsSecret,
      publicKeyPem,
      publicKeyAlg: publicKeyPem ? publicKeyAlg : undefined,
      issuer: env.JWT_ISSUER || "dabba",
      audience: env.JWT_AUDIENCE || "dabba",
      devSecret,
      serviceToken,
    },
    maxMessageBytes: int(env, "MAX_MESSAGE_BYTES", 256 * 1024, 1024, 64 * 1024 * 1024),
    shutdownGraceMs: int(env, "SHUTDOWN_GRACE_MS", 10_000, 0, 600_000),
    logLevel: env.LOG_LEVEL || "info",
    demoSeed: bool(env, "DEMO_SEED", true),
    orders: {
      lateCancelFeeBps: int(env, "ORDER_LATE_CANCEL_FEE_BPS", defaultOrderConfig.lateCancelFeeBps, 0, 10_000),
      taxBps: int(env, "ORDER_TAX_BPS", defaultOrderConfig.taxBps, 0, 10_000),
      deliveryBaseFeeMinor: int(env, "DELIVERY_BASE_FEE_MINOR", defaultOrderConfig.deliveryBaseFeeMinor, 0, 1_000_000),
      deliveryPerKmMinor: int(env, "DELIVERY_PER_KM_MINOR", defaultOrderConfig.deliveryPerKmMinor, 0, 1_000_000),
      currency: env.CURRENCY || defaultOrderConfig.currency,
      placeRatePerMinute: int(env, "ORDER_PLACE_RATE_PER_MINUTE", defaultOrderConfig.placeRatePerMinute, 1, 1_000_000),
      idempotencyTtlHours: int(env, "IDEMPOTENCY_TTL_HOURS", defaultOrderConfig.idempotencyTtlHours, 1, 24 * 30),
      answerPolicy: answerPolicy(env.ORDERS_ANSWER_POLICY),
      answerTimeoutS: int(env, "ORDERS_ANSWER_TIMEOUT_S", defaultOrderConfig.answerTimeoutS, 30, 3600),
      tipWindowMs: int(env, "ORDERS_TIP_WINDOW_MS", defaultOrderConfig.tipWindowMs, 0, 7 * 86_400_000),
      cityPricing: parseCityPricing(env.ORDERS_CITY_PRICING),
      jobConcurrency: int(env, "ORDERS_JOB_CONCURRENCY", defaultOrderConfig.jobConcurrency, 1, 1000),
      jobLeaseMs: int(env, "ORDERS_JOB_LEASE_MS", defaultOrderConfig.jobLeaseMs, 1000, 600_000),
    },
    corsOrigins: (env.CORS_ORIGINS || "*").split(",").map((s) => s.trim()).filter(Boolean),
    location: loadLocationConfig(env),
    dispatch,
    payments: loadPaymentsConfig(env),
    notifications: loadNotificationsConfig(env),
    eventStreams: {
      retentionMs: int(env, "EVENT_STREAM_RETENTION_MS", defaultStreamRetentionConfig.retentionMs, 0, 30 * 86_400_000),
      maxLen: int(env, "EVENT_STREAM_MAX_LEN", defaultStreamRetentionConfig.maxLen, 1000, 1_000_000_000),
      everyMs: int(env, "EVENT_STREAM_TRIM_EVERY_MS", defaultStreamRetentionConfig.everyMs, 1000, 86_400_000),
    },
    eta: loadEtaConfig(env),
    failpoint: env.DABBA_FAILPOINT || undefined,
    tracking: {
      heartbeatMs: int(env, "TRACKING_HEARTBEAT_MS", defaultTrackingConfig.heartbeatMs, 100, 600_000),
      positionIntervalMs: int(env, "TRACKING_POSITION_INTERVAL_MS", defaultTrackingConfig.positionIntervalMs, 0, 60_000),
    },
  });
}

function loadNotificationsConfig(env: Env): NotificationsConfig {
  const d = defaultNotificationsConfig;
  const webhookBackoffBaseMs = int(env, "WEBHOOK_BACKOFF_BASE_MS", d.webhookBackoffBaseMs, 1, 3_600_000);
  const webhookBackoffCapMs = int(env, "WEBHOOK_BACKOFF_CAP_MS", d.webhookBackoffCapMs, 1, 86_400_000);
  if (webhookBackoffCapMs < webhookBackoffBaseMs) throw new ConfigError("WEBHOOK_BACKOFF_CAP_MS must be at least WEBHOOK_BACKOFF_BASE_MS");
  const webhookTimeoutMs = int(env, "WEBHOOK_TIMEOUT_MS", d.webhookTimeoutMs, 100, 300_000);
  const webhookLeaseMs = int(env, "WEBHOOK_LEASE_MS", d.webhookLeaseMs, 1000, 3_600_000);
  if (webhookLeaseMs <= webhookTimeoutMs) throw new ConfigError("WEBHOOK_LEASE_MS must be above WEBHOOK_TIMEOUT_MS");
  return {
    webhookMaxAttempts: int(env, "WEBHOOK_MAX_ATTEMPTS", d.webhookMaxAttempts, 1, 100),
    webhookBackoffBaseMs,
    webhookBackoffCapMs,
    webhookTimeoutMs,
    webhookConcurrency: int(env, "WEBHOOK_CONCURRENCY", d.webhookConcurrency, 1, 1000),
    webhookLeaseMs,
    webhookLeaseCheckMs: int(env, "NOTIFICATIONS_LEASE_CHECK_MS", d.webhookLeaseCheckMs, 1000, 600_000),
    signatureToleranceS: int(env, "WEBHOOK_SIGNATURE_TOLERANCE_S", d.signatureToleranceS, 1, 86_400),
    allowPrivateNetworks: bool(env, "WEBHOOK_ALLOW_PRIVATE_NETWORKS", d.allowPrivateNetworks),
    secretKey: webhookSecretKey("WEBHOOK_SECRET_KEY", env.WEBHOOK_SECRET_KEY),
    previousSecretKeys: (env.WEBHOOK_SECRET_KEYS_PREVIOUS ?? "")
      .split(",")
      .map((s) => s.trim())
      .filter(Boolean)
      .map((raw) => webhookSecretKey("WEBHOOK_SECRET_KEYS_PREVIOUS", raw)!),
    inboxRetentionDays: int(env, "NOTIFICATIONS_INBOX_RETENTION_DAYS", d.inboxRetentionDays, 1, 3650),
    webhookLogRetentionDays: int(env, "WEBHOOK_LOG_RETENTION_DAYS", d.webhookLogRetentionDays, 1, 3650),
  };
}

/** A webhook secret key: 32 bytes as 64 hex characters or base64; undefined when unset. */
function webhookSecretKey(name: string, raw: string | undefined): Buffer | undefined {
  if (raw === undefined || raw === "") return undefined;
  const key = /^[0-9a-fA-F]{64}$/.test(raw) ? Buffer.from(raw, "hex") : Buffer.from(raw, "base64");
  if (key.length !== 32) throw new ConfigError(`${name} must be 32 bytes: 64 hex characters or the base64 of 32 bytes (openssl rand -hex 32)`);
  return key;
}

function loadPaymentsConfig(env: Env): PaymentsConfig {
  const d = defaultPaymentsConfig;
  const gateway = env.PAYMENTS_GATEWAY || d.gateway;
  if (gateway !== "test") throw new ConfigError(`PAYMENTS_GATEWAY must be "test" (the built-in test gateway), got "${gateway}"`);
  const retryBaseMs = int(env, "PAYMENTS_RETRY_BASE_MS", d.retryBaseMs, 10, 3_600_000);
  const retryMaxMs = int(env, "PAYMENTS_RETRY_MAX_MS", d.retryMaxMs, 10, 86_400_000);
  if (retryMaxMs < retryBaseMs) throw new ConfigError("PAYMENTS_RETRY_MAX_MS must be at least PAYMENTS_RETRY_BASE_MS");
  return {
    gateway,
    testLatencyMs: int(env, "PAYMENTS_TEST_LATENCY_MS", d.testLatencyMs, 0, 60_000),
    callTimeoutMs: int(env, "PAYMENTS_CALL_TIMEOUT_MS", d.callTimeoutMs, 10, 600_000),
    breakerErrorPct: int(env, "PAYMENTS_BREAKER_ERROR_PCT", d.breakerErrorPct, 1, 100),
    breakerMinCalls: int(env, "PAYMENTS_BREAKER_MIN_CALLS", d.breakerMinCalls, 1, 100_000),
    breakerWindowMs: int(env, "PAYMENTS_BREAKER_WINDOW_MS", d.breakerWindowMs, 100, 3_600_000),
    breakerResetMs: int(env, "PAYMENTS_BREAKER_RESET_MS", d.breakerResetMs, 10, 3_600_000),
    retryBaseMs,
    retryMaxMs,
    maxPendingMs: int(env, "PAYMENTS_MAX_PENDING_MS", d.maxPendingMs, 100, 7 * 86_400_000),
    leaseMs: int(env, "PAYMENTS_LEASE_MS", d.leaseMs, 1000, 3_600_000),
  };
}

function answerPolicy(raw: string | undefined): OrderConfig["answerPolicy"] {
  if (raw === undefined || raw === "") return defaultOrderConfig.answerPolicy;
  if (raw !== "auto_confirm" && raw !== "auto_reject") throw new ConfigError(`ORDERS_ANSWER_POLICY must be auto_confirm or auto_reject, got "${raw}"`);
  return raw;
}

/**
 * ORDERS_CITY_PRICING: JSON object of city name -> {taxBps, deliveryBaseFeeMinor, deliveryPerKmMinor},
 * e.g. {"bengaluru":{"taxBps":500,"deliveryBaseFeeMinor":2500,"deliveryPerKmMinor":800}}.
 */
export function parseCityPricing(raw: string | undefined): Record<string, CityPricing> {
  if (raw === undefined || raw.trim() === "") return {};
  let parsed: unknown;
  try {
    parsed = JSON.parse(raw);
  } catch (err) {
    throw new ConfigError(`ORDERS_CITY_PRICING is not JSON: ${(err as Error).message}`);
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) throw new ConfigError("ORDERS_CITY_PRICING must be a JSON object of city -> pricing");
  const out: Record<string, CityPricing> = {};
  for (const [city, v] of Object.entries(parsed as Record<string, unknown>)) {
    const p = v as Record<string, unknown>;
    const field = (name: keyof CityPricing, max: number): number => {
      const n = p?.[name];
      if (typeof n !== "number" || !Number.isInteger(n) || n < 0 || n > max) {
        throw new ConfigError(`ORDERS_CITY_PRICING.${city}.${name} must be an integer from 0 to ${max}`);
      }
      return n;
    };
    out[city.toLowerCase()] = Object.freeze({
      taxBps: field("taxBps", 10_000),
      deliveryBaseFeeMinor: field("deliveryBaseFeeMinor", 1_000_000),
      deliveryPerKmMinor: field("deliveryPerKmMinor", 1_000_000),
    });
  }
  return Object.freeze(out);
}

function float(env: Env, name: string, def: number, min: number, max: number): number {
  const raw = env[name];
  if (raw === undefined || raw === "") return def;
  const v = Number(raw);
  if (!Number.isFinite(v) || v < min || v > max) throw new ConfigError(`${name} must be a number from ${min} to ${max}, got "${raw}"`);
  return v;
}

function loadDispatchConfig(env: Env): DispatchConfig {
  const d = defaultDispatchConfig;
  const radiiKm = env.DISPATCH_RADII_KM
    ? env.DISPATCH_RADII_KM.split(",").map((r) => Number(r.trim()))
    : [...d.radiiKm];
  if (radiiKm.length === 0 || radiiKm.some((r, i) => !Number.isFinite(r) || r <= 0 || r > 50 || (i > 0 && r <= radiiKm[i - 1]))) {
    throw new ConfigError(`DISPATCH_RADII_KM must be increasing radii in km (0 to 50], comma separated, got "${env.DISPATCH_RADII_KM}"`);
  }
  const cfg: DispatchConfig = {
    offerTtlMs: int(env, "DISPATCH_OFFER_TTL_MS", d.offerTtlMs, 1000, 600_000),
    radiiKm,
    roundsPerRadius: int(env, "DISPATCH_ROUNDS_PER_RADIUS", d.roundsPerRadius, 1, 100),
    candidateCount: int(env, "DISPATCH_CANDIDATES", d.candidateCount, 1, 200),
    weights: {
      eta: float(env, "DISPATCH_WEIGHT_ETA", d.weights.eta, 0, 100),
      acceptance: float(env, "DISPATCH_WEIGHT_ACCEPTANCE", d.weights.acceptance, 0, 100),
      idle: float(env, "DISPATCH_WEIGHT_IDLE", d.weights.idle, 0, 100),
      heading: float(env, "DISPATCH_WEIGHT_HEADING", d.weights.heading, 0, 100),
    },
    idleCapMs: int(env, "DISPATCH_IDLE_CAP_MS", d.idleCapMs, 1000, 24 * 3_600_000),
    explorationShare: float(env, "DISPATCH_EXPLORATION_SHARE", d.explorationShare, 0, 1),
    parallelOffers: int(env, "DISPATCH_PARALLEL_OFFERS", d.parallelOffers, 1, 3),
    freshFixMs: int(env, "DISPATCH_FRESH_FIX_MS", d.freshFixMs, 1000, 3_600_000),
    retryMs: int(env, "DISPATCH_RETRY_MS", d.retryMs, 100, 600_000),
    flagAfterMs: int(env, "DISPATCH_FLAG_AFTER_MS", d.flagAfterMs, 1000, 24 * 3_600_000),
    slowRetryMs: int(env, "DISPATCH_SLOW_RETRY_MS", d.slowRetryMs, 100, 3_600_000),
    leadBufferMs: int(env, "DISPATCH_LEAD_BUFFER_MS", d.leadBufferMs, 0, 3_600_000),
    pickupGraceMs: int(env, "DISPATCH_PICKUP_GRACE_MS", d.pickupGraceMs, 1000, 24 * 3_600_000),
    stackSize: int(env, "DISPATCH_STACK_SIZE", d.stackSize, 1, 5),
    stackReadyWindowMs: int(env, "DISPATCH_STACK_READY_WINDOW_MS", d.stackReadyWindowMs, 0, 3_600_000),
    stackMaxDelayMs: int(env, "DISPATCH_STACK_MAX_DELAY_MS", d.stackMaxDelayMs, 0, 3_600_000),
    jobLeaseMs: int(env, "DISPATCH_JOB_LEASE_MS", d.jobLeaseMs, 1000, 3_600_000),
    leaseCheckMs: int(env, "DISPATCH_LEASE_CHECK_MS", d.leaseCheckMs, 1000, 3_600_000),
    workerConcurrency: int(env, "DISPATCH_WORKER_CONCURRENCY", d.workerConcurrency, 1, 1000),
    degradeAfterMs: int(env, "DISPATCH_DEGRADE_AFTER_MS", d.degradeAfterMs, 0, 3_600_000),
    speedMps: { ...d.speedMps },
    detourFactor: d.detourFactor,
  };
  if (cfg.jobLeaseMs % 1000 !== 0 || cfg.leaseCheckMs % 1000 !== 0) {
    throw new ConfigError("DISPATCH_JOB_LEASE_MS and DISPATCH_LEASE_CHECK_MS must be whole seconds (the job queue counts in seconds)");
  }
  return cfg;
}

function loadLocationConfig(env: Env): LocationConfig {
  const d = defaultLocationConfig;
  const g = defaultGeofenceConfig;
  const geofence: GeofenceConfig = {
    restaurantEnterM: int(env, "GEOFENCE_RESTAURANT_ENTER_M", g.restaurantEnterM, 5, 10_000),
    restaurantExitM: int(env, "GEOFENCE_RESTAURANT_EXIT_M", g.restaurantExitM, 5, 10_000),
    customerApproachEnterM: int(env, "GEOFENCE_CUSTOMER_APPROACH_ENTER_M", g.customerApproachEnterM, 5, 50_000),
    customerApproachExitM: int(env, "GEOFENCE_CUSTOMER_APPROACH_EXIT_M", g.customerApproachExitM, 5, 50_000),
    customerArriveEnterM: int(env, "GEOFENCE_CUSTOMER_ARRIVE_ENTER_M", g.customerArriveEnterM, 5, 10_000),
    customerArriveExitM: int(env, "GEOFENCE_CUSTOMER_ARRIVE_EXIT_M", g.customerArriveExitM, 5, 10_000),
    dwellMs: int(env, "GEOFENCE_DWELL_MS", g.dwellMs, 0, 600_000),
  };
  for (const [enter, exit] of [
    ["restaurantEnterM", "restaurantExitM"],
    ["customerApproachEnterM", "customerApproachExitM"],
    ["customerArriveEnterM", "customerArriveExitM"],
  ] as const) {
    if (geofence[exit] <= geofence[enter]) throw new ConfigError(`geofence ${exit} (${geofence[exit]}) must be larger than ${enter} (${geofence[enter]}): exit radius > enter radius is the hysteresis`);
  }
  return {
    cities: env.LOCATION_CITIES ? parseCities(env.LOCATION_CITIES) : [...d.cities],
    maxAccuracyM: int(env, "LOCATION_MAX_ACCURACY_M", d.maxAccuracyM, 1, 10_000),
    maxFutureMs: int(env, "LOCATION_MAX_FUTURE_MS", d.maxFutureMs, 0, 3_600_000),
    maxPastMs: int(env, "LOCATION_MAX_PAST_MS", d.maxPastMs, 1000, 7 * 86_400_000),
    maxSpeedMps: int(env, "LOCATION_MAX_SPEED_MPS", d.maxSpeedMps, 1, 1000),
    maxPingsPerSecond: int(env, "LOCATION_MAX_PINGS_PER_SECOND", d.maxPingsPerSecond, 1, 100_000),
    pingBurst: int(env, "LOCATION_PING_BURST", d.pingBurst, 1, 100_000),
    maxPingsPerMessage: int(env, "LOCATION_MAX_PINGS_PER_MESSAGE", d.maxPingsPerMessage, 1, 10_000),
    fixTtlMs: int(env, "LOCATION_FIX_TTL_MS", d.fixTtlMs, 1000, 86_400_000),
    tickMs: int(env, "LOCATION_TICK_MS", d.tickMs, 1, 1000),
    historyRetentionDays: int(env, "LOCATION_HISTORY_RETENTION_DAYS", d.historyRetentionDays, 1, 3650),
    historyMinIntervalMs: int(env, "LOCATION_HISTORY_MIN_INTERVAL_MS", d.historyMinIntervalMs, 0, 3_600_000),
    historyFlushMs: int(env, "LOCATION_HISTORY_FLUSH_MS", d.historyFlushMs, 10, 60_000),
    historyMaxBuffered: int(env, "LOCATION_HISTORY_MAX_BUFFERED", d.historyMaxBuffered, 100, 10_000_000),
    geofence,
  };
}

/**
 * LOCATION_CITIES: JSON array of {name, centre: {lat, lng}, bounds: {south, west, north, east}}.
 * Names are lower-case identifiers; bounds must contain the centre.
 */
export function parseCities(raw: string): City[] {
  let v: unknown;
  try {
    v = JSON.parse(raw);
  } catch (err) {
    throw new ConfigError(`LOCATION_CITIES is not valid JSON: ${(err as Error).message}`);
  }
  if (!Array.isArray(v) || v.length === 0) throw new ConfigError("LOCATION_CITIES must be a non-empty JSON array of cities");
  const seen = new Set<string>();
  return v.map((c: any, i: number) => {
    const where = `LOCATION_CITIES[${i}]`;
    const num = (x: unknown, lo: number, hi: number, what: string) => {
      if (typeof x !== "number" || !Number.isFinite(x) || x < lo || x > hi) throw new ConfigError(`${where}.${what} must be a number from ${lo} to ${hi}`);
      return x;
    };
    if (typeof c?.name !== "string" || !/^[a-z0-9][a-z0-9_-]{0,63}$/.test(c.name)) throw new ConfigError(`${where}.name must be a lower-case identifier`);
    if (seen.has(c.name)) throw new ConfigError(`${where}.name "${c.name}" is listed twice`);
    seen.add(c.name);
    const city: City = {
      name: c.name,
      centre: { lat: num(c.centre?.lat, -90, 90, "centre.lat"), lng: num(c.centre?.lng, -180, 180, "centre.lng") },
      bounds: {
        south: num(c.bounds?.south, -90, 90, "bounds.south"),
        west: num(c.bounds?.west, -180, 180, "bounds.west"),
        north: num(c.bounds?.north, -90, 90, "bounds.north"),
        east: num(c.bounds?.east, -180, 180, "bounds.east"),
      },
    };
    const b = city.bounds;
    if (!(b.south < b.north && b.west < b.east)) throw new ConfigError(`${where}.bounds must have south < north and west < east`);
    if (city.centre.lat < b.south || city.centre.lat > b.north || city.centre.lng < b.west || city.centre.lng > b.east) {
      throw new ConfigError(`${where}.centre must lie inside its bounds`);
    }
    return city;
  });
}

/** The first configured city whose bounds contain the point, if any. */
export function cityAt(cities: readonly City[], lat: number, lng: number): City | undefined {
  for (const c of cities) {
    const b = c.bounds;
    if (lat >= b.south && lat <= b.north && lng >= b.west && lng <= b.east) return c;
  }
  return undefined;
}

function readMaybeFile(v: string): string {
  return v.includes("-----BEGIN") ? v : readFileSync(v, "utf8");
}

/** The development HS256 secret kept in the data folder, created on first use. */
export function devSecretIn(dataDir: string): string {
  const file = join(dataDir.replace(/^file:\/\//, ""), "dev-jwt-secret");
  if (existsSync(file)) return readFileSync(file, "utf8").trim();
  mkdirSync(join(file, ".."), { recursive: true });
  const secret = randomBytes(32).toString("base64url");
  writeFileSync(file, secret + "\n", { mode: 0o600 });
  return secret;
}
