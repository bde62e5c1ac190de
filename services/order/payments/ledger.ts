import { create, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { sql, type Kysely, type Transaction } from "kysely";
import { ActorRole } from "../../../gen/dabba/common/v1/common_pb.js";
import { EventSchema, PaymentOperation } from "../../../gen/dabba/events/v1/events_pb.js";
import type { Db } from "../../platform/db.js";
import type { OrderDatabase, OrderRow, PaymentLedgerTable } from "../db/tables.js";
import { ORDER_EVENTS_STREAM, eventType, toOrder } from "../store.js";
import type { GatewayOperation, GatewayResult } from "./gateway.js";
import { netCharged, paymentState, refundedTotal, type LedgerFact } from "./settle.js";

/** payment_ledger with the authorization a follow-up call acted on (migration 20261123T1100_order_payments). */
interface LedgerTable extends PaymentLedgerTable {
  parent_key: string;
}
interface PaymentsDatabase extends Omit<OrderDatabase, "payment_ledger"> {
  payment_ledger: LedgerTable;
  payment_requests: { id: string; order_id: string; kind: "refund" | "tip"; amount_minor: number; reason: string; actor_id: string; at: Date };
}

export interface LedgerEntry extends LedgerFact {
  id: string;
  orderId: string;
  currency: string;
  reference: string;
  at: Date;
}

/** One gateway call to record. */
export interface CallRecord {
  orderId: string;
  operation: GatewayOperation;
  /** The amount asked for; an approval records the amount the gateway moved. */
  amountMinor: number;
  currency: string;
  key: string;
  parentKey: string;
  result: GatewayResult;
  /** Recorded with a decline or failure (the gateway's reason) or an approved refund (why it was made). */
  reason?: string;
}

const OPERATION_TO_EVENT: Record<GatewayOperation, PaymentOperation> = {
  authorize: PaymentOperation.AUTHORIZE,
  capture: PaymentOperation.CAPTURE,
  void: PaymentOperation.VOID,
  refund: PaymentOperation.REFUND,
};

export const PAYMENTS_ACTOR = Object.freeze({ role: "service" as const, id: "payments" });

export interface Ledger {
  /** The order's ledger, oldest first. */
  read(orderId: string, trx?: Kysely<any>): Promise<LedgerEntry[]>;
  /**
   * Records one gateway call and its result, and in the same transaction brings the order's
   * payment_status, charged_minor and refunded_minor to the ledger. An approved money movement
   * also emits a `payment` event (next order sequence, no timeline entry). `alsoInTx` runs in the
   * same transaction (e.g. lowering what is due when a top-up authorization is declined).
   * Returns false when an approved row with this key was already recorded (another worker did).
   */
  record(c: CallRecord, alsoInTx?: (trx: Transaction<PaymentsDatabase>) => Promise<void>): Promise<boolean>;
  /** Brings the order's money columns to the ledger without recording a call. */
  sync(orderId: string): Promise<void>;
  /** The reason of the latest operator refund request of the order ('' when none). */
  latestRefundReason(orderId: string): Promise<string>;
}

export function createLedger(db: Db, onCommit: () => void): Ledger {
  const k = db.kysely as unknown as Kysely<PaymentsDatabase>;

  async function read(orderId: string, trx?: Kysely<any>): Promise<LedgerEntry[]> {
    const rows = await ((trx as Kysely<PaymentsDatabase> | undefined) ?? k)
      .selectFrom("payment_ledger")
      .selectAll()
      .where("order_id", "=", orderId)
      .orderBy("id")
      .execute();
    return rows.map((r) => ({
      id: String(r.id),
      orderId: r.order_id,
      operation: r.operation,
      amountMinor: Number(r.amount_minor),
      currency: r.currency,
      outcome: r.outcome,
      key: r.idempotency_key,
      parentKey: r.parent_key,
      reference: r.gateway_ref,
      reason: r.reason,
      at: new Date(r.at),
    }));
  }

  async function syncIn(trx: Transaction<PaymentsDatabase>, orderId: string, emit?: MessageInitShape<typeof EventSchema>["payload"]) {
    const ledger = await read(orderId, trx);
    const status = (await trx.selectFrom("orders").select("status").where("id", "=", orderId).executeTakeFirst())?.status;
    if (!status) return;
    const money = {
      payment_status: paymentState(status, ledger),
      charged_minor: netCharged(ledger),
      refunded_minor: refundedTotal(ledger),
    };
    if (!emit) {
      await trx
        .updateTable("orders")
        .set(money)
        .where("id", "=", orderId)
        .where((eb) =>
          eb.or([eb("payment_status", "<>", money.payment_status), eb("charged_minor", "<>", money.charged_minor), eb("refunded_minor", "<>", money.refunded_minor)]),
        )
        .execute();
      return;
    }
    // The event takes the order's next sequence (the status is unchanged, so the version is too); a
    // transition that read the order before this checks next_event_seq in its compare-and-set and re-reads.
    const after = (await trx
      .updateTable("orders")
      .set({ ...money, next_event_seq: sql`next_event_seq + 1`, updated_at: new Date() })
      .where("id", "=", orderId)
      .returningAll()
      .executeTakeFirstOrThrow()) as unknown as OrderRow;
    const seq = Number(after.next_event_seq) - 1;
    const now = new Date();
    const order = toOrder(after);
    const event = create(EventSchema, {
      eventId: `${orderId}-${seq}`,
      orderId,
      sequence: BigInt(seq),
      occurredAt: timestampFromDate(now),
      actor: { role: ActorRole.SERVICE, id: PAYMENTS_ACTOR.id },
      order: { ...order, timeline: [] },
      payload: emit,
    });
    const bin = toBinary(EventSchema, event);
    await trx
      .insertInto("outbox")
      .values({
        stream: ORDER_EVENTS_STREAM,
        event_type: eventType(event),
        event_key: orderId,
        event_id: event.eventId,
        payload: Buffer.from(bin.buffer, bin.byteOffset, bin.byteLength),
        published_at: null,
      })
      .execute();
  }

  async function record(c: CallRecord, alsoInTx?: (trx: Transaction<PaymentsDatabase>) => Promise<void>): Promise<boolean> {
    const r = c.result;
    const approved = r.outcome === "approved";
    const amount = approved ? r.amountMinor : c.amountMinor;
    const reason = r.outcome === "approved" ? (c.reason ?? "") : r.reason;
    const inserted = await k.transaction().execute(async (trx) => {
      const row = await trx
        .insertInto("payment_ledger")
        .values({
          order_id: c.orderId,
          operation: c.operation,
          amount_minor: amount,
          currency: c.currency,
          outcome: r.outcome,
          idempotency_key: c.key,
          parent_key: c.parentKey,
          gateway_ref: approved ? r.reference : "",
          reason: reason.slice(0, 500),
        })
        .onConflict((oc) => oc.column("idempotency_key").where("outcome", "=", "approved").doNothing())
        .returning("id")
        .executeTakeFirst();
      if (!row) return false;
      await alsoInTx?.(trx);
      const emit: MessageInitShape<typeof EventSchema>["payload"] | undefined =
        approved || (r.outcome === "declined" && c.operation === "authorize")
          ? {
              case: "payment",
              value: {
                operation: OPERATION_TO_EVENT[c.operation],
                amount: { amountMinor: BigInt(amount), currency: c.currency },
                succeeded: approved,
                failureReason: approved ? "" : reason,
              },
            }
          : undefined;
      await syncIn(trx, c.orderId, emit);
      return true;
    });
    onCommit();
    return inserted;
  }

  async function sync(orderId: string): Promise<void> {
    await k.transaction().execute((trx) => syncIn(trx, orderId));
  }

  async function latestRefundReason(orderId: string): Promise<string> {
    const r = await k
      .selectFrom("payment_requests")
      .select("reason")
      .where("order_id", "=", orderId)
      .where("kind", "=", "refund")
      .orderBy("id", "desc")
      .limit(1)
      .executeTakeFirst();
    return r?.reason ?? "";
  }

  return { read, record, sync, latestRefundReason };
}

export type { PaymentsDatabase };
