import { sql, type Kysely } from "kysely";
import type { Db } from "../../platform/db.js";
import { AbortedError, NotFoundError, PreconditionError } from "../../platform/errors.js";
import type { Status } from "../domain.js";

/** Statuses in which the restaurant has accepted the order: what is due follows the total there. */
const ACCEPTED: readonly Status[] = ["CONFIRMED", "PREPARING", "READY_FOR_PICKUP", "PICKED_UP", "EN_ROUTE", "DELIVERED"];
const MAX_CAS_ATTEMPTS = 8;

interface Row {
  id: string;
  customer_id: string;
  status: Status;
  tip_minor: string | number;
  total_minor: string | number;
  due_minor: string | number;
  delivered_at: Date | null;
  version: string | number;
}

/**
 * Changes to what the customer owes outside the state machine (an operator's refund, a tip
 * change): a compare-and-set on the order plus an audit row, and the settle job that makes the
 * difference at the gateway, in one transaction.
 */
export function createAdjustments(deps: {
  db: Db;
  tipWindowMs: number;
  scheduleSettle: (orderId: string, trx: Kysely<any>) => Promise<void>;
  wake: () => void;
}) {
  const db = deps.db.kysely as Kysely<any>;

  async function read(orderId: string): Promise<Row | undefined> {
    const r = await sql<Row>`select id, customer_id, status, tip_minor, total_minor, due_minor, delivered_at, version from orders where id = ${orderId}`.execute(db);
    return r.rows[0];
  }

  async function audit(trx: Kysely<any>, orderId: string, kind: "refund" | "tip", amount: number, reason: string, actorId: string) {
    await sql`insert into payment_requests (order_id, kind, amount_minor, reason, actor_id) values (${orderId}, ${kind}, ${amount}, ${reason}, ${actorId})`.execute(trx);
  }

  /** An operator's refund: lowers what is due by `amountMinor` (0 = all of it). */
  async function refund(orderId: string, amountMinor: number, reason: string, actorId: string): Promise<void> {
    for (let attempt = 0; attempt < MAX_CAS_ATTEMPTS; attempt++) {
      const row = await read(orderId);
      if (!row) throw new NotFoundError("order not found");
      const due = Number(row.due_minor);
      if (due === 0) throw new PreconditionError(`order is ${row.status} and nothing is charged to it; nothing to refund`);
      const amount = amountMinor === 0 ? due : amountMinor;
      if (amount > due) throw new PreconditionError(`refund of ${amount} exceeds the ${due} still charged to the order`);
      const done = await db.transaction().execute(async (trx) => {
        const r = await sql`update orders set due_minor = due_minor - ${amount}::int8, updated_at = ${new Date()}
          where id = ${orderId} and due_minor = ${due}::int8 returning id`.execute(trx);
        if (r.rows.length !== 1) return false;
        await audit(trx, orderId, "refund", amount, reason, actorId);
        await deps.scheduleSettle(orderId, trx);
        return true;
      });
      if (done) {
        deps.wake();
        return;
      }
    }
    throw new AbortedError("order is changing too fast; retry");
  }

  /** The order's customer changes the tip: before delivery, and within the tip window after it. */
  async function adjustTip(orderId: string, customerId: string, tipMinor: number): Promise<void> {
    for (let attempt = 0; attempt < MAX_CAS_ATTEMPTS; attempt++) {
      const row = await read(orderId);
      if (!row || row.customer_id !== customerId) throw new NotFoundError("order not found");
      if (row.status === "CANCELLED") throw new PreconditionError("order is CANCELLED; the tip can no longer be changed");
      if (row.status === "DELIVERED") {
        const closes = new Date(row.delivered_at ?? 0).getTime() + deps.tipWindowMs;
        if (Date.now() > closes) {
          throw new PreconditionError(`order is DELIVERED and the tip window closed at ${new Date(closes).toISOString()}`);
        }
      }
      const old = Number(row.tip_minor);
      if (old === tipMinor) return;
      const accepted = ACCEPTED.includes(row.status);
      const delta = tipMinor - old;
      const done = await db.transaction().execute(async (trx) => {
        const r = await sql`update orders set
            tip_minor = ${tipMinor}::int8,
            total_minor = total_minor + ${delta}::int8,
            due_minor = case when ${accepted}::bool then greatest(0, due_minor + ${delta}::int8) else due_minor end,
            version = version + 1, updated_at = ${new Date()}
          where id = ${orderId} and version = ${Number(row.version)}::int8 and status = ${row.status}
          returning id`.execute(trx);
        if (r.rows.length !== 1) return false;
        await audit(trx, orderId, "tip", tipMinor, `tip changed from ${old} to ${tipMinor}`, customerId);
        if (accepted) await deps.scheduleSettle(orderId, trx);
        return true;
      });
      if (done) {
        deps.wake();
        return;
      }
    }
    throw new AbortedError("order is changing too fast; retry");
  }

  return { refund, adjustTip };
}
