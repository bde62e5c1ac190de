import type { Generated, Insertable, Selectable } from "kysely";

/** notification_parties: the people of each order as last seen on its events (geofence events carry no snapshot). */
export interface NotificationPartiesTable {
  order_id: string;
  customer_id: string;
  restaurant_id: string;
  restaurant_name: string;
  /** '' when no driver is assigned. */
  driver_id: string;
  /** Sequence of the event the row was taken from: an older event never overwrites a newer one. */
  sequence: number;
  updated_at: Generated<Date>;
}

/**
 * notification_inbox: one message per recipient and event. Unique (recipient_kind,
 * recipient_id, dedupe_key): a redelivered event inserts nothing (and pushes nothing).
 */
export interface NotificationInboxTable {
  /** bigserial (a number in JS). Grows with insertion: the inbox's keyset order. */
  id: Generated<number>;
  recipient_kind: "customer" | "restaurant" | "driver";
  recipient_id: string;
  dedupe_key: string;
  event_id: string;
  order_id: string;
  kind: string;
  title: string;
  body: string;
  created_at: Generated<Date>;
  read_at: Date | null;
}

/** webhooks: outbound endpoints; restaurant_id null for partner webhooks (every order's events, registered by ops). */
export interface WebhooksTable {
  id: string;
  url: string;
  event_types: string[];
  restaurant_id: string | null;
  /** The HMAC secret, needed as is to sign. */
  secret: string;
  /** Who registered it: "<role>:<sub>". */
  created_by: string;
  created_at: Generated<Date>;
  /** When DeleteWebhook stopped it; null while active. */
  deleted_at: Date | null;
}

export type DeliveryStatus = "pending" | "delivered" | "dead";

/** webhook_deliveries: one per (webhook, event), unique; the body is fixed at creation (replays send the same bytes). */
export interface WebhookDeliveriesTable {
  id: string;
  webhook_id: string;
  event_id: string;
  event_type: string;
  order_id: string;
  body: string;
  status: DeliveryStatus;
  /** Attempts made in total (the dabba-delivery-attempt header of the next is attempts + 1). */
  attempts: Generated<number>;
  /** attempts when the current round began (0, or at the last replay): dead after max attempts in a round. */
  round_start: Generated<number>;
  /** An attempt in flight holds the delivery until then (a second job for it waits). */
  claimed_until: Date | null;
  next_attempt_at: Date;
  last_status_code: number | null;
  last_error: string | null;
  created_at: Generated<Date>;
  updated_at: Generated<Date>;
  delivered_at: Date | null;
  dead_at: Date | null;
}

/** webhook_attempts: the delivery log, one row per attempt (status code or error, duration). */
export interface WebhookAttemptsTable {
  id: Generated<number>;
  delivery_id: string;
  webhook_id: string;
  event_id: string;
  attempt: number;
  status_code: number | null;
  error: string | null;
  duration_ms: number;
  at: Generated<Date>;
}

export interface NotificationsDatabase {
  notification_parties: NotificationPartiesTable;
  notification_inbox: NotificationInboxTable;
  webhooks: WebhooksTable;
  webhook_deliveries: WebhookDeliveriesTable;
  webhook_attempts: WebhookAttemptsTable;
}

export type InboxRow = Selectable<NotificationInboxTable>;
export type NewInboxRow = Insertable<NotificationInboxTable>;
export type WebhookRow = Selectable<WebhooksTable>;
export type DeliveryRow = Selectable<WebhookDeliveriesTable>;
export type AttemptRow = Selectable<WebhookAttemptsTable>;
