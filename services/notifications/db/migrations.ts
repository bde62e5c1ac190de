import { sql, type Kysely, type Migration } from "kysely";

// Frozen: never edit a migration once committed; add a new one. Run with db.migrate("tracking", migrations).

const m20261121T1830_notifications_init: Migration = {
  async up(db: Kysely<any>) {
    await sql`
      create table notification_parties (
        order_id text primary key,
        customer_id text not null,
        restaurant_id text not null,
        restaurant_name text not null,
        driver_id text not null default '',
        sequence bigint not null,
        updated_at timestamptz not null default now()
      )`.execute(db);
    await sql`
      create table notification_inbox (
        id bigserial primary key,
        recipient_kind text not null,
        recipient_id text not null,
        dedupe_key text not null,
        event_id text not null,
        order_id text not null,
        kind text not null,
        title text not null,
        body text not null,
        created_at timestamptz not null default now(),
        read_at timestamptz null,
        constraint notification_inbox_recipient_kind_check check (recipient_kind in ('customer','restaurant','driver')),
        constraint notification_inbox_once unique (recipient_kind, recipient_id, dedupe_key)
      )`.execute(db);
    // A recipient's inbox newest first, and its unread messages.
    await sql`create index notification_inbox_recipient_idx on notification_inbox (recipient_kind, recipient_id, id desc)`.execute(db);
    await sql`create index notification_inbox_unread_idx on notification_inbox (recipient_kind, recipient_id, id desc) where read_at is null`.execute(db);
    await sql`
      create table webhooks (
        id text primary key,
        url text not null,
        event_types text[] not null default '{}',
        restaurant_id text null,
        secret text not null,
        created_by text not null,
        created_at timestamptz not null default now()
      )`.execute(db);
    await sql`create index webhooks_restaurant_idx on webhooks (restaurant_id)`.execute(db);
    await sql`
      create table webhook_deliveries (
        id text primary key,
        webhook_id text not null references webhooks (id),
        event_id text not null,
        event_type text not null,
        order_id text not null,
        body text not null,
        status text not null,
        attempts integer not null default 0,
        round_start integer not null default 0,
        claimed_until timestamptz null,
        next_attempt_at timestamptz not null,
        last_status_code integer null,
        last_error text null,
        created_at timestamptz not null default now(),
        updated_at timestamptz not null default now(),
        delivered_at timestamptz null,
        dead_at timestamptz null,
        constraint webhook_deliveries_status_check check (status in ('pending','delivered','dead')),
        constraint webhook_deliveries_once unique (webhook_id, event_id)
      )`.execute(db);
    await sql`create index webhook_deliveries_dead_idx on webhook_deliveries (webhook_id) where status = 'dead'`.execute(db);
    await sql`create index webhook_deliveries_webhook_idx on webhook_deliveries (webhook_id, created_at desc)`.execute(db);
    await sql`
      create table webhook_attempts (
        id bigserial primary key,
        delivery_id text not null references webhook_deliveries (id),
        webhook_id text not null,
        event_id text not null,
        attempt integer not null,
        status_code integer null,
        error text null,
        duration_ms integer not null,
        at timestamptz not null default now()
      )`.execute(db);
    await sql`create index webhook_attempts_delivery_idx on webhook_attempts (delivery_id, id)`.execute(db);
    await sql`create index webhook_attempts_webhook_idx on webhook_attempts (webhook_id, id desc)`.execute(db);
  },
  async down(db: Kysely<any>) {
    for (const t of ["webhook_attempts", "webhook_deliveries", "webhooks", "notification_inbox", "notification_parties"]) {
      await sql`drop table if exists ${sql.table(t)}`.execute(db);
    }
  },
};

/**
 * DeleteWebhook: a deleted webhook is kept (its delivery log refers to it) and marked. Inbox
 * retention deletes by creation time.
 */
const m20261203T1000_webhook_deleted_at: Migration = {
  async up(db: Kysely<any>) {
    await sql`alter table webhooks add column deleted_at timestamptz null`.execute(db);
    await sql`create index notification_inbox_created_idx on notification_inbox (created_at)`.execute(db);
  },
  async down(db: Kysely<any>) {
    await sql`drop index notification_inbox_created_idx`.execute(db);
    await sql`alter table webhooks drop column deleted_at`.execute(db);
  },
};

/** Webhook log retention deletes finished deliveries by creation time. */
const m20261205T1000_webhook_log_retention: Migration = {
  async up(db: Kysely<any>) {
    await sql`create index webhook_deliveries_finished_created_idx on webhook_deliveries (created_at) where status <> 'pending'`.execute(db);
  },
  async down(db: Kysely<any>) {
    await sql`drop index webhook_deliveries_finished_created_idx`.execute(db);
  },
};

/** The tracking service's migrations (notifications: inbox, webhooks, deliveries, delivery log). */
export const migrations: Record<string, Migration> = {
  "20261121T1830_notifications_init": m20261121T1830_notifications_init,
  "20261203T1000_webhook_deleted_at": m20261203T1000_webhook_deleted_at,
  "20261205T1000_webhook_log_retention": m20261205T1000_webhook_log_retention,
};
