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
