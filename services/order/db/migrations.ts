import { sql, type Kysely, type Migration } from "kysely";

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

/** The order service's migrations, by frozen timestamped name. */
export const migrations: Record<string, Migration> = {
  "20261121T1001_order_init": m20261121T1001_order_init,
};
