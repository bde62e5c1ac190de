import { Code, ConnectError } from "@connectrpc/connect";

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
