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
}

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
  });
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
