import type { DescService } from "@bufbuild/protobuf";
import { observeStream } from "./abort.js";
import { Code, ConnectError, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";

/** Base class of typed domain errors; mapped to gRPC codes in one place (toConnectError). */
export class DomainError extends Error {
  constructor(message: string, readonly code: Code) {
    super(message);
    this.name = new.target.name;
  }
}
export class NotFoundError extends DomainError {
  constructor(message: string) { super(message, Code.NotFound); }
}
export class AlreadyExistsError extends DomainError {
  constructor(message: string) { super(message, Code.AlreadyExists); }
}
export class PreconditionError extends DomainError {
  constructor(message: string) { super(message, Code.FailedPrecondition); }
}
export class AbortedError extends DomainError {
  constructor(message: string) { super(message, Code.Aborted); }
}
export class PermissionError extends DomainError {
  constructor(message: string) { super(message, Code.PermissionDenied); }
}
export class UnauthenticatedError extends DomainError {
  constructor(message: string) { super(message, Code.Unauthenticated); }
}
export class ExhaustedError extends DomainError {
  constructor(message: string) { super(message, Code.ResourceExhausted); }
}
export class UnavailableError extends DomainError {
  constructor(message: string) { super(message, Code.Unavailable); }
}

/** Validation failure naming the field: INVALID_ARGUMENT. */
export function invalid(field: string, problem: string): ConnectError {
  return new ConnectError(`${field}: ${problem}`, Code.InvalidArgument);
}

/** Most characters (code points) in an id field. */
export const ID_MAX_CHARS = 128;

/** An id field: required, at most ID_MAX_CHARS characters (INVALID_ARGUMENT naming the field otherwise). */
export function requireId(field: string, v: string): string {
  if (v === "") throw invalid(field, "is required");
  let n = 0;
  for (const _ of v) if (++n > ID_MAX_CHARS) throw invalid(field, `must be at most ${ID_MAX_CHARS} characters`);
  return v;
}

/** A required coordinate pair, finite and in range (INVALID_ARGUMENT naming `field.lat` / `field.lng` otherwise). */
export function requireLatLng(field: string, p: { lat: number; lng: number } | undefined): { lat: number; lng: number } {
  if (!p) throw invalid(field, "required");
  if (!Number.isFinite(p.lat) || p.lat < -90 || p.lat > 90) throw invalid(`${field}.lat`, "lat must be a finite number from -90 to 90");
  if (!Number.isFinite(p.lng) || p.lng < -180 || p.lng > 180) throw invalid(`${field}.lng`, "lng must be a finite number from -180 to 180");
  return { lat: p.lat, lng: p.lng };
}

/**
 * Maps anything thrown by a handler to a ConnectError. ConnectErrors and domain errors keep
 * their code and message; anything else becomes INTERNAL with a generic message (the cause is
 * returned so the caller can log it, never sent to the client).
 */
export function toConnectError(err: unknown): { error: ConnectError; internal?: unknown } {
  if (err instanceof ConnectError) return { error: err };
  if (err instanceof DomainError) return { error: new ConnectError(err.message, err.code) };
  return { error: new ConnectError("internal error", Code.Internal), internal: err };
}

type Logged = { error(obj: object, msg: string): void };

/**
 * Wraps every method of a service implementation so errors become their gRPC codes inside the
 * service itself (toConnectError; INTERNAL causes logged with the RPC name, never sent). The
 * service then answers the same over the listeners, the in-process transport and a bare router
 * transport in tests.
 */
export function withMappedErrors<T extends DescService>(desc: T, impl: ServiceImpl<T>, logger: Logged): ServiceImpl<T> {
  const out: Record<string, unknown> = {};
  for (const method of desc.methods) {
    const fn = (impl as Record<string, unknown>)[method.localName] as ((req: unknown, ctx: HandlerContext) => unknown) | undefined;
    if (typeof fn !== "function") continue;
    const rpc = `${desc.typeName}/${method.name}`;
    const mapped = (err: unknown) => {
      const { error, internal } = toConnectError(err);
      if (internal !== undefined) logger.error({ err: internal, rpc }, "handler failed");
      return error;
    };
    out[method.localName] =
      method.methodKind === "server_streaming" || method.methodKind === "bidi_streaming"
        ? (req: unknown, ctx: HandlerContext) => observeStream(fn(req, ctx) as AsyncIterable<unknown>, { error: mapped })
        : async (req: unknown, ctx: HandlerContext) => {
            try {
              return await fn(req, ctx);
            } catch (err) {
              throw mapped(err);
            }
          };
  }
  return out as ServiceImpl<T>;
}
