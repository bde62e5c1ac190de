import { createHash } from "node:crypto";
import type { Kysely } from "kysely";
import type { Config } from "../../platform/config.js";
import type { Db } from "../../platform/db.js";
import type { JobQueue } from "../../platform/jobs.js";
import type { Logger } from "../../platform/logger.js";
import type { OrderJob } from "../jobs.js";
import type { OrderStore, PlacementPayment } from "../store.js";
import { createAdjustments } from "./adjust.js";
import { withBreaker, type BreakerGateway } from "./breaker.js";
import type { GatewayResult } from "./gateway.js";
import { createLedger, type Ledger } from "./ledger.js";
import { createTestGateway, type TestGateway } from "./test-gateway.js";
import { createWorker } from "./worker.js";

export { CIRCUIT_OPEN } from "./breaker.js";
export { TEST_TOKENS, clearGatewayFaults, gatewayApprovedOperations, injectGatewayFault } from "./test-gateway.js";

export interface PaymentsDeps {
  db: Db;
  config: Config;
  store: OrderStore;
  logger: Logger;
  /** The order job queue (created after the payments; read when first needed). */
  queue: () => JobQueue<OrderJob>;
  /** Called after a ledger write committed (an outbox row may be waiting: the relay's wake). */
  onCommit: () => void;
}

/** What placement learned from the gateway before writing the order. */
export type PlacementAuthorization = { declined: true; reason: string } | { declined: false; payment: PlacementPayment };

export interface Payments {
  /** The gateway port as the order service uses it (behind the circuit breaker). */
  readonly gateway: BreakerGateway;
  /** The built-in test gateway itself (the adapter behind the breaker). */
  readonly testGateway: TestGateway;
  readonly ledger: Ledger;
  /**
   * Authorizes a placement's total before the order is written. The key is derived from what
   * identifies the placement (customer, idempotency key, request hash), so concurrent copies of
   * one placement authorize once.
   */
  authorizePlacement(p: { customerId: string; idempotencyKey: string; requestHash: string; token: string; amountMinor: number; currency: string }): Promise<PlacementAuthorization>;
  /** Sends the reconciler's first job for a PAYMENT_PENDING order inside the placement's transaction. */
  scheduleReconcile(trx: Kysely<any>, orderId: string): Promise<void>;
  /** Sends a settle job (inside trx when given) for an order whose due amount changed. */
  scheduleSettle(orderId: string, trx?: Kysely<any>): Promise<void>;
  /** An operator's refund (0 = everything still due): lowers what is due; the settle job refunds. */
  refund(orderId: string, amountMinor: number, reason: string, actorId: string): Promise<void>;
  /** The customer's new tip; once accepted, what is due follows and the settle job makes the difference. */
  adjustTip(orderId: string, customerId: string, tipMinor: number): Promise<void>;
  /** Fetch jobs now (after a transaction that sent a due settle job committed). */
  wakeJobs(): void;
  settle(job: Extract<OrderJob, { kind: "settle" }>): Promise<void>;
  reconcile(job: Extract<OrderJob, { kind: "reconcile" }>): Promise<void>;
  stop(): void;
}

/** The placement authorization's idempotency key. */
export function placementKey(customerId: string, idempotencyKey: string, requestHash: string): string {
  const h = createHash("sha256").update(`${customerId}\n${idempotencyKey}\n${requestHash}`).digest("hex").slice(0, 32);
  return `place:${h}`;
}

export function createPayments(deps: PaymentsDeps): Payments {
  const cfg = deps.config.payments;
  const logger = deps.logger.child({ component: "payments" });
  const testGateway = createTestGateway({ db: deps.db, latencyMs: cfg.testLatencyMs });
  const gateway = withBreaker(testGateway, cfg, logger);
  const ledger = createLedger(deps.db, deps.onCommit);
  const adjustments = createAdjustments({
    db: deps.db,
    tipWindowMs: deps.config.orders.tipWindowMs,
    scheduleSettle: (orderId, trx) => deps.queue().send([{ job: { kind: "settle", orderId } }], trx),
    wake: () => deps.queue().wake(),
  });
  const worker = createWorker({ db: deps.db, config: cfg, store: deps.store, ledger, gateway, queue: deps.queue, logger });

  return {
    gateway,
    testGateway,
    ledger,
    async authorizePlacement(p) {
      const key = placementKey(p.customerId, p.idempotencyKey, p.requestHash);
      const r: GatewayResult = await gateway.authorize({ key, token: p.token, amountMinor: p.amountMinor, currency: p.currency });
      if (r.outcome === "declined") {
        // No order is written, so the decline has no ledger row (the gateway keeps its own record under the key).
        logger.info({ customerId: p.customerId, key, reason: r.reason }, "placement authorization declined");
        return { declined: true, reason: r.reason };
      }
      const approved = r.outcome === "approved";
      return {
        declined: false,
        payment: {
          token: p.token,
          pending: !approved,
          ledger: {
            key,
            amountMinor: approved ? r.amountMinor : p.amountMinor,
            outcome: r.outcome,
            reference: approved ? r.reference : "",
            reason: approved ? "" : r.reason,
          },
        },
      };
    },
    async scheduleReconcile(trx, orderId) {
      await deps.queue().send([{ job: { kind: "reconcile", orderId, attempt: 0 }, dueAtMs: Date.now() + cfg.retryBaseMs }], trx);
    },
    async scheduleSettle(orderId, trx) {
      await deps.queue().send([{ job: { kind: "settle", orderId } }], trx);
    },
    wakeJobs: () => deps.queue().wake(),
    refund: adjustments.refund,
    adjustTip: adjustments.adjustTip,
    settle: worker.settle,
    reconcile: worker.reconcile,
    stop: () => gateway.shutdown(),
  };
}
