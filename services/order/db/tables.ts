import type { Generated, Insertable, Selectable, Updateable } from "kysely";
import type { OutboxTable } from "../../platform/outbox.js";
import type { Status } from "../domain.js";

/** One priced line as stored in orders.lines (jsonb); money in minor units of orders.currency. */
export interface StoredLine {
  itemId: string;
  name: string;
  quantity: number;
  unitPriceMinor: number;
  lineTotalMinor: number;
  note: string;
  options: { optionId: string; name: string; priceDeltaMinor: number }[];
}

export interface OrdersTable {
  id: string;
  customer_id: string;
  restaurant_id: string;
  restaurant_name: string;
  status: Status;
  version: number;
  driver_id: string | null;
  last_fencing_token: Generated<number>;
  lines: StoredLine[];
  delivery_lat: number;
  delivery_lng: number;
  delivery_address: string;
  delivery_instructions: string;
  pickup_lat: number;
  pickup_lng: number;
  currency: string;
  subtotal_minor: number;
  delivery_fee_minor: number;
  tax_minor: number;
  tip_minor: number;
  total_minor: number;
  eta_min_minutes: number;
  eta_max_minutes: number;
  distance_km: number;
  cancelled_by_role: string | null;
  cancelled_by_id: string | null;
  cancellation_reason: string | null;
  cancellation_fee_minor: Generated<number>;
  /** Sequence number the next event of this order gets (events start at 1). */
  next_event_seq: number;
  /** When dispatch flagged the order (nobody took it in time); null when never flagged. */
  dispatch_flagged_at: Date | null;
  /** Where the money stands at the gateway (PaymentStatus, lower case). */
  payment_status: Generated<PaymentState>;
  /** The gateway's payment method token given at placement. */
  payment_token: Generated<string>;
  /**
   * What the customer owes in the order's current state (0 until accepted; the total once
   * accepted; the fee after a late cancellation; less operator refunds): the amount the payment
   * worker brings the gateway to.
   */
  due_minor: Generated<number>;
  /** Captured minus refunded according to the ledger (kept by the payment worker). */
  charged_minor: Generated<number>;
  refunded_minor: Generated<number>;
  delivered_at: Date | null;
  /** When an unanswered PLACED order is auto-confirmed or auto-rejected. */
  answer_by: Date | null;
  /** Live delivery estimate bounds. */
  eta_low_at: Date | null;
  eta_high_at: Date | null;
  created_at: Date;
  updated_at: Date;
}

export type PaymentState = "pending" | "authorized" | "captured" | "voided" | "partially_refunded" | "refunded" | "failed";
export type LedgerOperation = "authorize" | "capture" | "void" | "refund";
export type LedgerOutcome = "approved" | "declined" | "timeout" | "error";

/** payment_ledger: one row per gateway call and its result; append-only. */
export interface PaymentLedgerTable {
  id: Generated<string>;
  order_id: string;
  operation: LedgerOperation;
  amount_minor: number;
  currency: string;
  outcome: LedgerOutcome;
  idempotency_key: string;
  gateway_ref: Generated<string>;
  reason: Generated<string>;
  at: Generated<Date>;
}

export interface OrderStatusHistoryTable {
  order_id: string;
  seq: number;
  /** "status" | "driver_assigned" | "driver_unassigned" | "dispatch_flagged" */
  kind: string;
  status: Status;
  actor_role: string;
  actor_id: string;
  reason: string;
  driver_id: string | null;
  at: Date;
}

export interface IdempotencyKeysTable {
  customer_id: string;
  key: string;
  request_hash: string;
  order_id: string;
  created_at: Date;
  expires_at: Date;
}

export interface OrderDatabase {
  orders: OrdersTable;
  order_status_history: OrderStatusHistoryTable;
  idempotency_keys: IdempotencyKeysTable;
  payment_ledger: PaymentLedgerTable;
  outbox: Omit<OutboxTable, "id" | "created_at" | "published_at"> & {
    id: Generated<number>;
    created_at: Generated<Date>;
    published_at: Date | null;
  };
}

export type OrderRow = Selectable<OrdersTable>;
export type NewOrderRow = Insertable<OrdersTable>;
export type OrderUpdate = Updateable<OrdersTable>;
export type HistoryRow = Selectable<OrderStatusHistoryTable>;
export type NewHistoryRow = Insertable<OrderStatusHistoryTable>;
export type IdempotencyRow = Selectable<IdempotencyKeysTable>;
export type LedgerRow = Selectable<PaymentLedgerTable>;
export type NewLedgerRow = Insertable<PaymentLedgerTable>;
