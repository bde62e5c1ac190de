import { randomBytes } from "node:crypto";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { SERVICE_NAMES, type ServiceName } from "./service.js";

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
  /** Maximum drivers' concurrent active orders (1 until stacking). */
  maxActiveOrdersPerDriver: number;
}

export const defaultOrderConfig: OrderConfig = Object.freeze({
  lateCancelFeeBps: 5000,
  taxBps: 500,
  deliveryBaseFeeMinor: 199,
  deliveryPerKmMinor: 50,
  currency: "USD",
  placeRatePerMinute: 30,
  idempotencyTtlHours: 24,
  maxActiveOrdersPerDriver: 1,
});

/** A config for tests and tools: embedded defaults, ephemeral ports, overridable. */
export function testConfig(overrides: Partial<Config> = {}): Config {
  return Object.freeze({
    services: [...SERVICE_NAMES],
    port: 0,
    webPort: 0,
    host: "127.0.0.1",
    peerAddrs: {},
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
      maxActiveOrdersPerDriver: 1,
    },
    corsOrigins: (env.CORS_ORIGINS || "*").split(",").map((s) => s.trim()).filter(Boolean),
    location: loadLocationConfig(env),
    tracking: {
      heartbeatMs: int(env, "TRACKING_HEARTBEAT_MS", defaultTrackingConfig.heartbeatMs, 100, 600_000),
      positionIntervalMs: int(env, "TRACKING_POSITION_INTERVAL_MS", defaultTrackingConfig.positionIntervalMs, 0, 60_000),
    },
  });
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
