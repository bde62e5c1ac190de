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
  created_at: Date;
  updated_at: Date;
}

export interface OrderStatusHistoryTable {
  order_id: string;
  seq: number;
  /** "status" | "driver_assigned" | "driver_unassigned" */
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
