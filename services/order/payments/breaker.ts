import CircuitBreaker from "opossum";
import type { PaymentsConfig } from "../../platform/config.js";
import type { Logger } from "../../platform/logger.js";
import {
  GatewayError,
  GatewayTimeout,
  failureResult,
  type AuthorizeRequest,
  type FollowUpRequest,
  type GatewayOperation,
  type GatewayResult,
  type PaymentGateway,
} from "./gateway.js";

/** The reason recorded for a call the open breaker refused without calling the gateway. */
export const CIRCUIT_OPEN = "circuit open";

export interface BreakerGateway extends PaymentGateway {
  /** "closed" | "open" | "half-open". */
  state(): "closed" | "open" | "half-open";
  shutdown(): void;
}

type Call = { op: "authorize"; req: AuthorizeRequest } | { op: Exclude<GatewayOperation, "authorize">; req: FollowUpRequest };

/**
 * The payment port behind a circuit breaker (opossum), one per process. Errors and timeouts
 * (including calls slower than callTimeoutMs) count as failures; approvals and declines are
 * answers and count as successes. When failures reach breakerErrorPct of at least
 * breakerMinCalls calls in the window, the breaker opens: calls fail fast with "error: circuit
 * open" (nothing reaches the gateway; the caller records it in the ledger like any failure).
 * After breakerResetMs one trial call goes through (half-open); its success closes the breaker.
 * Never throws: every call ends in a GatewayResult.
 */
export function withBreaker(gateway: PaymentGateway, cfg: PaymentsConfig, logger: Logger): BreakerGateway {
  const action = async (c: Call): Promise<GatewayResult> => {
    const r = c.op === "authorize" ? await gateway.authorize(c.req) : await gateway[c.op](c.req);
    // Failures returned rather than thrown count against the breaker too.
    if (r.outcome === "timeout") throw new GatewayTimeout(r.reason);
    if (r.outcome === "error") throw new GatewayError(r.reason);
    return r;
  };
  const breaker = new CircuitBreaker<[Call], GatewayResult>(action, {
    timeout: cfg.callTimeoutMs,
    errorThresholdPercentage: cfg.breakerErrorPct,
    volumeThreshold: cfg.breakerMinCalls,
    rollingCountTimeout: cfg.breakerWindowMs,
    rollingCountBuckets: 10,
    resetTimeout: cfg.breakerResetMs,
  });
  breaker.on("open", () => logger.warn({ resetMs: cfg.breakerResetMs }, "payment gateway circuit opened"));
  breaker.on("halfOpen", () => logger.info("payment gateway circuit half-open: trying one call"));
  breaker.on("close", () => logger.info("payment gateway circuit closed"));

  async function call(c: Call): Promise<GatewayResult> {
    try {
      return await breaker.fire(c);
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code === "EOPENBREAKER") return { outcome: "error", reason: CIRCUIT_OPEN };
      if (code === "ETIMEDOUT") return { outcome: "timeout", reason: `no answer within ${cfg.callTimeoutMs} ms` };
      return failureResult(err);
    }
  }

  return {
    authorize: (req) => call({ op: "authorize", req }),
    capture: (req) => call({ op: "capture", req }),
    void: (req) => call({ op: "void", req }),
    refund: (req) => call({ op: "refund", req }),
    state: () => (breaker.opened ? "open" : breaker.halfOpen ? "half-open" : "closed"),
    shutdown: () => breaker.shutdown(),
  };
}
