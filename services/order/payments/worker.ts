import { randomBytes } from "node:crypto";
import { sql, type Kysely } from "kysely";
import type { PaymentsConfig } from "../../platform/config.js";
import type { Db } from "../../platform/db.js";
import { PreconditionError } from "../../platform/errors.js";
import type { JobQueue } from "../../platform/jobs.js";
import type { Logger } from "../../platform/logger.js";
import type { Caller } from "../domain.js";
import type { OrderJob } from "../jobs.js";
import type { OrderStore } from "../store.js";
import type { PaymentGateway } from "./gateway.js";
import type { Ledger } from "./ledger.js";
import { nextAction, retryDelayMs, trailingFailures, type SettleAction } from "./settle.js";

/** The actor of the reconciler's transitions (PAYMENT_PENDING -> PLACED / CANCELLED). */
export const RECONCILER_ACTOR: Caller = Object.freeze({ role: "service", sub: "payment-reconciler" });
/** A loser of the per-order claim tries again this much later (plus jitter). */
const CLAIM_RETRY_MS = 200;
/** Gateway calls one settlement run makes at most before handing over to a fresh job. */
const MAX_STEPS = 12;

interface OrderMoneyRow {
  id: string;
  status: string;
  due_minor: string | number;
  total_minor: string | number;
  tip_minor: string | number;
  currency: string;
  payment_token: string;
  created_at: Date;
}

export interface WorkerDeps {
  db: Db;
  config: PaymentsConfig;
  store: OrderStore;
  ledger: Ledger;
  gateway: PaymentGateway;
  queue: () => JobQueue<OrderJob>;
  logger: Logger;
}

/**
 * The settle and reconcile job handlers. Both run under a per-order claim (payment_settlements:
 * a row taken with a compare-and-set on its lease), so one settlement per order runs at a time
 * across processes; a job that finds the order claimed re-queues itself a little later.
 */
export function createWorker(deps: WorkerDeps) {
  const db = deps.db.kysely as Kysely<any>;
  const cfg = deps.config;
  const logger = deps.logger.child({ component: "payments" });

  async function claim(orderId: string, owner: string): Promise<boolean> {
    const until = new Date(Date.now() + cfg.leaseMs);
    const r = await sql<{ order_id: string }>`
      insert into payment_settlements (order_id, owner, lease_until) values (${orderId}, ${owner}, ${until})
      on conflict (order_id) do update set owner = excluded.owner, lease_until = excluded.lease_until
        where payment_settlements.lease_until < ${new Date()}
      returning order_id`.execute(db);
    return r.rows.length === 1;
  }

  async function release(orderId: string, owner: string): Promise<void> {
    await sql`delete from payment_settlements where order_id = ${orderId} and owner = ${owner}`.execute(db);
  }

  async function readOrder(orderId: string): Promise<OrderMoneyRow | undefined> {
    const r = await sql<OrderMoneyRow>`
      select id, status, due_minor, total_minor, tip_minor, currency, payment_token, created_at from orders where id = ${orderId}`.execute(db);
    return r.rows[0];
  }

  async function later(job: OrderJob, delayMs: number): Promise<void> {
    await deps.queue().send([{ job, dueAtMs: Date.now() + delayMs }]);
  }

  async function claimed(job: OrderJob, work: () => Promise<void>): Promise<void> {
    const owner = `${process.pid}-${randomBytes(6).toString("hex")}`;
    if (!(await claim(job.orderId, owner))) {
      await later(job, CLAIM_RETRY_MS + Math.floor(Math.random() * CLAIM_RETRY_MS));
      return;
    }
    try {
      await work();
    } finally {
      await release(job.orderId, owner);
    }
  }

  /** Runs settlement steps until the gateway matches what is due, a call fails (re-queued with backoff) or the step budget is spent. */
  async function settleOrder(orderId: string, attempt: number, reconciler: boolean): Promise<void> {
    // Every recorded call brings the order's payment fields up to date in its own transaction; a
    // run that recorded none syncs them once at the end (the order's status may have moved them).
    let recorded = false;
    for (let step = 0; step < MAX_STEPS; step++) {
      const order = await readOrder(orderId);
      if (!order) return;
      const ledger = await deps.ledger.read(orderId);
      const action = nextAction({ orderId, status: order.status, dueMinor: Number(order.due_minor) }, ledger);
      if (action.kind === "none") {
        if (!recorded) await deps.ledger.sync(orderId);
        return;
      }
      if (action.kind === "reconcile") {
        // A PAYMENT_PENDING order belongs to its reconcile job chain (sent with the order).
        if (!reconciler) return;
        const moved = await reconcileStep(order, ledger[0]?.key, attempt);
        if (!moved) return;
        continue;
      }
      const result = await call(order, action);
      recorded = true;
      if (result === "failed") {
        const failures = trailingFailures(await deps.ledger.read(orderId));
        await later({ kind: "settle", orderId }, retryDelayMs(failures, cfg.retryBaseMs, cfg.retryMaxMs));
        return;
      }
    }
    // Unusual (declines that advanced the keys): continue in a fresh job rather than spin here.
    logger.warn({ orderId }, "settlement did not converge within its step budget; continuing later");
    await later({ kind: "settle", orderId }, cfg.retryBaseMs);
  }

  /** One gateway call for a settlement action, recorded. "failed" when the outcome is unknown or nothing happened. */
  async function call(order: OrderMoneyRow, a: Exclude<SettleAction, { kind: "none" | "reconcile" }>): Promise<"answered" | "failed"> {
    const base = { orderId: order.id, currency: order.currency };
    if (a.kind === "authorize") {
      const result = await deps.gateway.authorize({ key: a.key, token: order.payment_token, amountMinor: a.amountMinor, currency: order.currency });
      await deps.ledger.record({ ...base, operation: "authorize", amountMinor: a.amountMinor, key: a.key, parentKey: "", result }, async (trx) => {
        if (result.outcome !== "declined") return;
        // A top-up (a tip raised after the capture) the card refused: the raise cannot be
        // collected, so what is due goes back down by it, and the tip and total with it.
        await sql`update orders set
            due_minor = greatest(0, due_minor - ${a.amountMinor}::int8),
            tip_minor = greatest(0, tip_minor - least(tip_minor, ${a.amountMinor}::int8)),
            total_minor = total_minor - least(tip_minor, ${a.amountMinor}::int8),
            version = version + 1, updated_at = ${new Date()}
          where id = ${order.id}`.execute(trx);
        logger.info({ orderId: order.id, amount: a.amountMinor, reason: result.reason }, "top-up authorization declined; the raise is not collected");
      });
      return result.outcome === "approved" || result.outcome === "declined" ? "answered" : "failed";
    }
    const req = { key: a.key, authorizationKey: a.authorizationKey, amountMinor: a.kind === "void" ? 0 : a.amountMinor, currency: order.currency };
    const result = await deps.gateway[a.kind](req);
    const reason = a.kind === "refund" ? await refundReason(order) : undefined;
    await deps.ledger.record({ ...base, operation: a.kind, amountMinor: req.amountMinor, key: a.key, parentKey: a.authorizationKey, result, reason });
    if (result.outcome === "declined") logger.warn({ orderId: order.id, op: a.kind, key: a.key, reason: result.reason }, "gateway declined a settlement call");
    return result.outcome === "approved" || result.outcome === "declined" ? "answered" : "failed";
  }

  async function refundReason(order: OrderMoneyRow): Promise<string> {
    const requested = await deps.ledger.latestRefundReason(order.id);
    if (requested) return requested;
    if (order.status === "CANCELLED") return "order cancelled";
    return "amount due lowered";
  }

  /**
   * The reconciler's step for a PAYMENT_PENDING order: past the maximum pending time it is
   * cancelled with nothing charged (the cancellation's settlement then voids the authorization by
   * its key, in case the gateway made it late); otherwise the authorization is retried with its
   * key, which answers with the gateway's truth. True when the order left PAYMENT_PENDING.
   */
  async function reconcileStep(order: OrderMoneyRow, authKey: string | undefined, attempt: number): Promise<boolean> {
    const ageMs = Date.now() - new Date(order.created_at).getTime();
    if (!authKey || ageMs >= cfg.maxPendingMs) {
      await transition(order.id, "payment_failed", `payment not confirmed within ${Math.round(cfg.maxPendingMs / 1000)} s`);
      return true;
    }
    const amount = Number(order.total_minor);
    const result = await deps.gateway.authorize({ key: authKey, token: order.payment_token, amountMinor: amount, currency: order.currency });
    await deps.ledger.record({ orderId: order.id, operation: "authorize", amountMinor: amount, currency: order.currency, key: authKey, parentKey: "", result });
    switch (result.outcome) {
      case "approved":
        await transition(order.id, "payment_settled");
        return true;
      case "declined":
        await transition(order.id, "payment_failed", `payment declined: ${result.reason}`);
        return true;
      default: {
        const delay = retryDelayMs(attempt + 1, cfg.retryBaseMs, cfg.retryMaxMs);
        // Never wait past the maximum pending time: the order is then cancelled on time.
        const deadline = new Date(order.created_at).getTime() + cfg.maxPendingMs;
        const due = Math.max(Date.now() + 10, Math.min(Date.now() + delay, deadline));
        await deps.queue().send([{ job: { kind: "reconcile", orderId: order.id, attempt: attempt + 1 }, dueAtMs: due }]);
        return false;
      }
    }
  }

  async function transition(orderId: string, command: "payment_settled" | "payment_failed", reason?: string): Promise<void> {
    try {
      await deps.store.execute(orderId, { command }, RECONCILER_ACTOR, { reason });
      logger.info({ orderId, command, reason }, "payment pending order settled");
    } catch (err) {
      // Someone (the customer, ops) cancelled it meanwhile: the settlement loop releases whatever the gateway holds.
      if (!(err instanceof PreconditionError)) throw err;
    }
  }

  return {
    async settle(job: Extract<OrderJob, { kind: "settle" }>): Promise<void> {
      await claimed(job, () => settleOrder(job.orderId, 0, false));
    },
    async reconcile(job: Extract<OrderJob, { kind: "reconcile" }>): Promise<void> {
      await claimed(job, () => settleOrder(job.orderId, job.attempt, true));
    },
  };
}
