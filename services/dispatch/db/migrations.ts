import { sql, type Kysely, type Migration } from "kysely";

// Frozen: never edit a migration once committed; add a new one. Run with db.migrate("dispatch", migrations).

const m20261121T1430_dispatch_init: Migration = {
  async up(db: Kysely<any>) {
    await sql`
      create table dispatch_jobs (
        order_id text primary key,
        city text not null,
        restaurant_id text not null,
        restaurant_name text not null,
        pickup_lat double precision not null,
        pickup_lng double precision not null,
        dropoff_lat double precision not null,
        dropoff_lng double precision not null,
        delivery_km double precision not null,
        pay_minor bigint not null,
        currency text not null,
        state text not null,
        attempt integer not null default 0,
        radius_km double precision not null,
        tried text[] not null default '{}',
        driver_id text null,
        driver_token bigint null,
        confirmed_at timestamptz not null,
        ready_at timestamptz not null,
        event_seq bigint not null default 0,
        flagged_at timestamptz null,
        assigned_at timestamptz null,
        pickup_deadline timestamptz null,
        version integer not null default 1,
        updated_at timestamptz not null,
        constraint dispatch_jobs_state_check check (state in ('searching','offered','assigned','picked_up','delivered','cancelled'))
      )`.execute(db);
    // Unassigned orders (pull model, ops), oldest first.
    await sql`create index dispatch_jobs_open_idx on dispatch_jobs (confirmed_at) where state in ('searching','offered')`.execute(db);
    await sql`
      create table dispatch_offers (
        offer_id text primary key,
        order_id text not null references dispatch_jobs (order_id),
        driver_id text not null,
        token bigint not null,
        attempt integer not null,
        mode text not null,
        pickup_km double precision not null,
        earnings_minor bigint not null,
        candidates jsonb not null,
        sent_at timestamptz not null,
        expires_at timestamptz not null,
        outcome text null,
        decided_at timestamptz null,
        constraint dispatch_offers_outcome_check check (outcome in ('accepted','declined','expired','withdrawn')),
        constraint dispatch_offers_mode_check check (mode in ('scored','nearest','parallel','claim'))
      )`.execute(db);
    await sql`create index dispatch_offers_order_idx on dispatch_offers (order_id, sent_at)`.execute(db);
    // A driver's open offers (StreamOffers sends them first on connect).
    await sql`create index dispatch_offers_driver_open_idx on dispatch_offers (driver_id) where outcome is null`.execute(db);
  },
  async down(db: Kysely<any>) {
    await sql`drop table if exists dispatch_offers`.execute(db);
    await sql`drop table if exists dispatch_jobs`.execute(db);
  },
};

/** The dispatch service's migrations, by frozen timestamped name. */
export const migrations: Record<string, Migration> = {
  "20261121T1430_dispatch_init": m20261121T1430_dispatch_init,
};
