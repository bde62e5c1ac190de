import { Code, ConnectError, createContextKey, type HandlerContext, type Interceptor } from "@connectrpc/connect";
import { SignJWT, errors as joseErrors, importSPKI, jwtVerify, type JWTPayload, type CryptoKey } from "jose";
import { ActorRole, type Actor } from "../../gen/dabba/common/v1/common_pb.js";
import { create } from "@bufbuild/protobuf";
import { ActorSchema } from "../../gen/dabba/common/v1/common_pb.js";
import type { AuthConfig } from "./config.js";

export const ROLES = ["customer", "driver", "restaurant", "ops", "service"] as const;
export type Role = (typeof ROLES)[number];

/** The verified caller. Handlers take the actor from here, never from a message body. */
export interface Principal {
  role: Role;
  /** Token subject: customer, driver, operator or service id. */
  sub: string;
  /** For restaurant tokens: the restaurant the token acts for. */
  restaurantId?: string;
}

/** Request-context key carrying the verified principal. */
export const principalKey = createContextKey<Principal | undefined>(undefined, { description: "principal" });

/** The verified principal of a call; UNAUTHENTICATED when the call carried no valid token. */
export function principalOf(ctx: HandlerContext): Principal {
  const p = ctx.values.get(principalKey);
  if (!p) throw new ConnectError("missing bearer token", Code.Unauthenticated);
  return p;
}

/** The principal, required to hold one of the roles (PERMISSION_DENIED otherwise). */
export function requireRole(ctx: HandlerContext, ...roles: Role[]): Principal {
  const p = principalOf(ctx);
  if (!roles.includes(p.role)) {
    throw new ConnectError(`role ${p.role} may not call this method (allowed: ${roles.join(", ")})`, Code.PermissionDenied);
  }
  return p;
}

/** The id an action is recorded under: the restaurant id for restaurant tokens, else the subject. */
export function actorOf(p: Principal): Actor {
  const role = {
    customer: ActorRole.CUSTOMER,
    driver: ActorRole.DRIVER,
    restaurant: ActorRole.RESTAURANT,
    ops: ActorRole.OPS,
    service: ActorRole.SERVICE,
  }[p.role];
  return create(ActorSchema, { role, id: p.role === "restaurant" ? (p.restaurantId ?? p.sub) : p.sub });
}

export interface TokenVerifier {
  verify(token: string): Promise<Principal>;
}

const CLOCK_TOLERANCE_S = 30;

export interface VerifierOptions {
  /** How many verified tokens to remember (LRU); 0 verifies every call. Default 10,000. */
  cacheSize?: number;
  /** Clock for cache expiry (tests). */
  now?: () => number;
}

/**
 * Verifies HS256 with the shared secret and, when configured, RS256/ES256 with the public key.
 * A verified token's principal is remembered (LRU, keyed by the token string) until the token's
 * exp: a client sends the same token on every call, and checking its signature again (an HMAC
 * or RSA operation plus JSON parsing) each time is most of the interceptor's cost. Failures are
 * never cached. The keys are fixed for the verifier's life, so a cached answer is the answer
 * verification would give until exp.
 */
export async function createVerifier(auth: AuthConfig, opts: VerifierOptions = {}): Promise<TokenVerifier> {
  const keys: { alg: string; key: CryptoKey | Uint8Array }[] = [];
  if (auth.hsSecret) keys.push({ alg: "HS256", key: new TextEncoder().encode(auth.hsSecret) });
  if (auth.publicKeyPem && auth.publicKeyAlg) {
    keys.push({ alg: auth.publicKeyAlg, key: await importSPKI(auth.publicKeyPem, auth.publicKeyAlg) });
  }
  if (keys.length === 0) throw new Error("auth: configure JWT_SECRET or JWT_PUBLIC_KEY");
  const cacheSize = opts.cacheSize ?? 10_000;
  const now = opts.now ?? Date.now;
  // Insertion-ordered: the first key is the least recently used.
  const cache = new Map<string, { principal: Principal; expiresAtMs: number }>();

  async function verifyUncached(token: string): Promise<{ principal: Principal; expiresAtMs: number }> {
    let payload: JWTPayload | undefined;
    let lastErr: unknown;
    for (const { alg, key } of keys) {
      try {
        ({ payload } = await jwtVerify(token, key, {
          algorithms: [alg],
          issuer: auth.issuer,
          audience: auth.audience,
          clockTolerance: CLOCK_TOLERANCE_S,
          requiredClaims: ["sub", "exp"],
          currentDate: new Date(now()),
        }));
        break;
      } catch (err) {
        lastErr = err;
      }
    }
    if (!payload) {
      if (lastErr instanceof joseErrors.JWTExpired) throw new ConnectError("token expired", Code.Unauthenticated);
      throw new ConnectError("invalid token", Code.Unauthenticated);
    }
    return { principal: Object.freeze(principalFromClaims(payload)), expiresAtMs: (payload.exp as number) * 1000 };
  }

  return {
    async verify(token) {
      if (cacheSize <= 0) return (await verifyUncached(token)).principal;
      const hit = cache.get(token);
      if (hit) {
        cache.delete(token);
        if (now() < hit.expiresAtMs) {
          cache.set(token, hit);
          return hit.principal;
        }
      }
      const entry = await verifyUncached(token);
      // Only tokens that are valid by their exp as well as by the tolerance are remembered.
      if (now() < entry.expiresAtMs) {
        cache.set(token, entry);
        if (cache.size > cacheSize) cache.delete(cache.keys().next().value!);
      }
      return entry.principal;
    },
  };
}

function principalFromClaims(claims: JWTPayload): Principal {
  const role = claims["role"];
  if (typeof role !== "string" || !(ROLES as readonly string[]).includes(role)) {
    throw new ConnectError("token has no valid role claim", Code.Unauthenticated);
  }
  const sub = claims.sub;
  if (!sub || sub.length > 128) throw new ConnectError("token has no valid subject", Code.Unauthenticated);
  const restaurantId = claims["restaurant_id"];
  if (role === "restaurant" && (typeof restaurantId !== "string" || restaurantId === "")) {
    throw new ConnectError("restaurant token without restaurant_id claim", Code.Unauthenticated);
  }
  return { role: role as Role, sub, restaurantId: typeof restaurantId === "string" ? restaurantId : undefined };
}

/** Mints an HS256 token with the configured secret (tests, the token CLI, service-to-service calls). */
export async function mintToken(
  auth: AuthConfig,
  p: { role: Role; sub: string; restaurantId?: string },
  ttlSeconds = 3600,
): Promise<string> {
  if (!auth.hsSecret) throw new Error("auth: minting needs JWT_SECRET (HS256)");
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({ role: p.role, ...(p.restaurantId ? { restaurant_id: p.restaurantId } : {}) })
    .setProtectedHeader({ alg: "HS256", typ: "JWT" })
    .setSubject(p.sub)
    .setIssuer(auth.issuer)
    .setAudience(auth.audience)
    .setIssuedAt(now)
    .setExpirationTime(now + ttlSeconds)
    .sign(new TextEncoder().encode(auth.hsSecret));
}

/** Services whose methods need no token (health and reflection are served outside the interceptor chain anyway). */
const OPEN_SERVICES = new Set(["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"]);

/**
 * The one authentication interceptor: verifies the bearer token and stores the principal in
 * the request context. Calls without a valid token fail with UNAUTHENTICATED before any handler runs.
 */
export function authInterceptor(verifier: TokenVerifier): Interceptor {
  return (next) => async (req) => {
    if (OPEN_SERVICES.has(req.service.typeName)) return next(req);
    const header = req.header.get("authorization");
    if (!header) throw new ConnectError("missing bearer token", Code.Unauthenticated);
    const m = /^Bearer\s+(\S+)$/i.exec(header);
    if (!m) throw new ConnectError("authorization header must be 'Bearer <token>'", Code.Unauthenticated);
    const principal = await verifier.verify(m[1]);
    req.contextValues.set(principalKey, principal);
    return next(req);
  };
}

/** Client interceptor attaching a bearer token (service-to-service calls, tests). */
export function bearer(token: string | (() => Promise<string>)): Interceptor {
  return (next) => async (req) => {
    req.header.set("authorization", `Bearer ${typeof token === "string" ? token : await token()}`);
    return next(req);
  };
}
