import { sql, type Kysely, type Migration } from "kysely";
import { m20261123T1100_order_payments, m20261204T1000_test_gateway_decline_fault } from "../payments/migrations.js";

// Frozen: never edit a migration once committed; add a new one. Run with db.migrate("order", migrations).

const STATUS_CHECK = `status in ('PAYMENT_PENDING','PLACED','CONFIRMED','PREPARING','READY_FOR_PICKUP','PICKED_UP','EN_ROUTE','DELIVERED','CANCELLED')`;

const m20261121T1001_order_init: Migration = {
  async up(db: Kysely<any>) {
    await sql`
      create table orders (
        id text primary key,
        customer_id text not null,
        restaurant_id text not null,
        restaurant_name text not null,
        status text not null,
        version bigint not null default 1,
        driver_id text null,
        last_fencing_token bigint not null default 0,
        lines jsonb not null,
        delivery_lat double precision not null,
        delivery_lng double precision not null,
        delivery_address text not null default '',
        delivery_instructions text not null default '',
        pickup_lat double precision not null,
        pickup_lng double precision not null,
        currency text not null,
        subtotal_minor bigint not null,
        delivery_fee_minor bigint not null,
        tax_minor bigint not null,
        tip_minor bigint not null,
        total_minor bigint not null,
        eta_min_minutes integer not null,
        eta_max_minutes integer not null,
        distance_km double precision not null,
        cancelled_by_role text null,
        cancelled_by_id text null,
        cancellation_reason text null,
        cancellation_fee_minor bigint not null default 0,
        next_event_seq bigint not null default 1,
        created_at timestamptz not null,
        updated_at timestamptz not null,
        constraint orders_status_check check (${sql.raw(STATUS_CHECK)}),
        constraint orders_money_check check (subtotal_minor >= 0 and delivery_fee_minor >= 0 and tax_minor >= 0 and tip_minor >= 0 and total_minor >= 0)
      )`.execute(db);
    // Customer history, newest first (keyset on created_at, id).
    await sql`create index orders_customer_created_idx on orders (customer_id, created_at desc, id desc)`.execute(db);
    // A restaurant's active orders (the tablet feed and default list).
    await sql`create index orders_restaurant_active_idx on orders (restaurant_id, created_at desc, id desc) where status not in ('DELIVERED','CANCELLED')`.execute(db);
    await sql`create index orders_restaurant_created_idx on orders (restaurant_id, created_at desc, id desc)`.execute(db);
    // One active order per driver: a second concurrent assignment fails on this index.
    await sql`create unique index orders_one_active_per_driver on orders (driver_id) where driver_id is not null and status not in ('DELIVERED','CANCELLED')`.execute(db);

    await sql`
      create table order_status_history (
        order_id text not null references orders (id),
        seq bigint not null,
        kind text not null,
        status text not null,
        actor_role text not null,
        actor_id text not null,
        reason text not null default '',
        driver_id text null,
        at timestamptz not null,
        primary key (order_id, seq),
        constraint order_status_history_kind_check check (kind in ('status','driver_assigned','driver_unassigned')),
        constraint order_status_history_status_check check (${sql.raw(STATUS_CHECK)})
      )`.execute(db);

    await sql`
      create table idempotency_keys (
        customer_id text not null,
        key text not null,
        request_hash text not null,
        order_id text not null,
        created_at timestamptz not null,
        expires_at timestamptz not null,
        primary key (customer_id, key)
      )`.execute(db);
    await sql`create index idempotency_keys_expires_idx on idempotency_keys (expires_at)`.execute(db);

    // The transactional outbox (shape shared with services/platform/outbox.ts, docs/seams.md).
    await sql`
      create table if not exists outbox (
        id bigserial primary key,
        stream text not null,
        event_type text not null,
        event_key text not null,
        event_id text not null unique,
        payload bytea not null,
        created_at timestamptz not null default now(),
        published_at timestamptz null
      )`.execute(db);
    await sql`create index if not exists outbox_unpublished_idx on outbox (id) where published_at is null`.execute(db);
  },
  async down(db: Kysely<any>) {
    await sql`drop table if exists order_status_history`.execute(db);
    await sql`drop table if exists idempotency_keys`.execute(db);
    await sql`drop table if exists orders`.execute(db);
  },
};

// Stacking: a driver may carry up to dispatch.stackSize active orders, so the unique index that
// allowed one gives way to a plain one serving the store's count under a per-driver advisory lock.
const m20261121T1500_order_driver_stack: Migration = {
  async up(db: Kysely<any>) {
    await sql`drop index if exists orders_one_active_per_driver`.execute(db);
    await sql`create index orders_driver_active_idx on orders (driver_id) where driver_id is not null and status not in ('DELIVERED','CANCELLED')`.execute(db);
  },
  async down(db: Kysely<any>) {
    await sql`drop index if exists orders_driver_active_idx`.execute(db);
    // Fails while any driver carries more than one active order; unassign those first.
    await sql`create unique index orders_one_active_per_driver on orders (driver_id) where driver_id is not null and status not in ('DELIVERED','CANCELLED')`.execute(db);
  },
};

// Dispatch flag: when nobody took the order in time. The history kind check gains 'dispatch_flagged'.
const m20261122T1000_order_dispatch_flag: Migration = {
  async up(db: Kysely<any>) {
    await sql`alter table orders add column dispatch_flagged_at timestamptz null`.execute(db);
    await sql`alter table order_status_history drop constraint order_status_history_kind_check`.execute(db);
    await sql`alter table order_status_history add constraint order_status_history_kind_check check (kind in ('status','driver_assigned','driver_unassigned','dispatch_flagged'))`.execute(db);
  },
  async down(db: Kysely<any>) {
    // Fails while flag rows exist; the flags are history, so removing them is left to the operator.
    await sql`alter table order_status_history drop constraint order_status_history_kind_check`.execute(db);
    await sql`alter table order_status_history add constraint order_status_history_kind_check check (kind in ('status','driver_assigned','driver_unassigned'))`.execute(db);
    await sql`alter table orders drop column dispatch_flagged_at`.execute(db);
  },
};

// Money, lifecycle and live ETA (issue 5): the order's payment state and the amounts the payment
// worker settles to, the append-only gateway ledger, the restaurant's answer deadline, delivery
// time (the tip window) and the live ETA bounds.
const m20261123T1000_order_money: Migration = {
  async up(db: Kysely<any>) {
    await sql`alter table orders
      add column payment_status text not null default 'authorized'
        check (payment_status in ('pending','authorized','captured','voided','partially_refunded','refunded','failed')),
      add column payment_token text not null default '',
      add column due_minor int8 not null default 0 check (due_minor >= 0),
      add column charged_minor int8 not null default 0,
      add column refunded_minor int8 not null default 0 check (refunded_minor >= 0),
      add column delivered_at timestamptz null,
      add column answer_by timestamptz null,
      add column eta_low_at timestamptz null,
      add column eta_high_at timestamptz null`.execute(db);
    await sql`create table payment_ledger (
      id bigserial primary key,
      order_id text not null,
      operation text not null check (operation in ('authorize','capture','void','refund')),
      amount_minor int8 not null check (amount_minor >= 0),
      currency text not null,
      outcome text not null check (outcome in ('approved','declined','timeout','error')),
      idempotency_key text not null,
      gateway_ref text not null default '',
      reason text not null default '',
      at timestamptz not null default now()
    )`.execute(db);
    await sql`create index payment_ledger_order_idx on payment_ledger (order_id, id)`.execute(db);
    // A gateway operation is approved at most once: a retry with the same key replays it.
    await sql`create unique index payment_ledger_approved_key on payment_ledger (idempotency_key) where outcome = 'approved'`.execute(db);
  },
  async down(db: Kysely<any>) {
    await sql`drop table payment_ledger`.execute(db);
    await sql`alter table orders
      drop column payment_status, drop column payment_token, drop column due_minor, drop column charged_minor,
      drop column refunded_minor, drop column delivered_at, drop column answer_by, drop column eta_low_at, drop column eta_high_at`.execute(db);
  },
};

/** The order service's migrations, by frozen timestamped name. */
export const migrations: Record<string, Migration> = {
  "20261121T1001_order_init": m20261121T1001_order_init,
  "20261121T1500_order_driver_stack": m20261121T1500_order_driver_stack,
  "20261122T1000_order_dispatch_flag": m20261122T1000_order_dispatch_flag,
  "20261123T1000_order_money": m20261123T1000_order_money,
  "20261123T1100_order_payments": m20261123T1100_order_payments,
  "20261204T1000_test_gateway_decline_fault": m20261204T1000_test_gateway_decline_fault,
};
