/**
 * The payment gateway port. Every call carries an idempotency key: the gateway applies a key at
 * most once and answers a repeated key with the stored result of its first call (even when the
 * amount differs), so a retry after a timeout or a crash never moves money twice.
 *
 * Outcomes: approved and declined are final answers; timeout means the outcome is unknown (the
 * gateway may have done it: retry with the same key to learn the truth); error means the gateway
 * failed (5xx) or the circuit breaker is open, and nothing happened.
 */

export type GatewayOperation = "authorize" | "capture" | "void" | "refund";

export interface AuthorizeRequest {
  key: string;
  /** The customer's payment method token (see the test gateway's tokens). */
  token: string;
  amountMinor: number;
  currency: string;
}

/** Capture, void and refund act on one authorization, named by the key it was authorized with. */
export interface FollowUpRequest {
  key: string;
  authorizationKey: string;
  /** Capture: the amount to take (the rest is released); refund: the amount to return; void: ignored. */
  amountMinor: number;
  currency: string;
}

export type GatewayResult =
  | { outcome: "approved"; amountMinor: number; reference: string }
  | { outcome: "declined"; reason: string }
  | { outcome: "timeout"; reason: string }
  | { outcome: "error"; reason: string };

export interface PaymentGateway {
  authorize(req: AuthorizeRequest): Promise<GatewayResult>;
  capture(req: FollowUpRequest): Promise<GatewayResult>;
  void(req: FollowUpRequest): Promise<GatewayResult>;
  refund(req: FollowUpRequest): Promise<GatewayResult>;
}

/** Thrown by an adapter when the gateway failed (5xx, connection refused): nothing happened. */
export class GatewayError extends Error {}
/** Thrown by an adapter when the answer did not come in time: the outcome is unknown. */
export class GatewayTimeout extends Error {}

/** Maps a thrown adapter failure to its result. */
export function failureResult(err: unknown): GatewayResult {
  if (err instanceof GatewayTimeout) return { outcome: "timeout", reason: err.message || "timeout" };
  if (err instanceof GatewayError) return { outcome: "error", reason: err.message || "gateway error" };
  return { outcome: "error", reason: (err as Error)?.message || "gateway error" };
}
