import { sql, type Kysely, type Migration } from "kysely";

// Frozen once committed. Listed in services/order/db/migrations.ts after 20261123T1000_order_money.

/**
 * Payments (issue 5): the ledger row's authorization (parent_key), the per-order settlement claim
 * (one settlement per order at a time across processes), the operators' refund requests and tip
 * changes (audit; a refund's reason goes into its ledger row), and the built-in test gateway's
 * own tables (a stand-in for the external gateway's database, shared by every dabba process on
 * the database).
 */
export const m20261123T1100_order_payments: Migration = {
  async up(db: Kysely<any>) {
    await sql`alter table payment_ledger add column parent_key text not null default ''`.execute(db);
    await sql`create table payment_settlements (
      order_id text primary key,
      owner text not null,
      lease_until timestamptz not null
    )`.execute(db);
    await sql`create table payment_requests (
      id bigserial primary key,
      order_id text not null,
      kind text not null check (kind in ('refund','tip')),
      amount_minor int8 not null,
      reason text not null default '',
      actor_id text not null,
      at timestamptz not null default now()
    )`.execute(db);
    await sql`create index payment_requests_order_idx on payment_requests (order_id, id)`.execute(db);
    await sql`create table test_gateway_operations (
      key text primary key,
      operation text not null check (operation in ('authorize','capture','void','refund')),
      authorization_key text not null default '',
      token text not null default '',
      amount_minor int8 not null,
      currency text not null,
      outcome text not null check (outcome in ('approved','declined')),
      reason text not null default '',
      reference text not null,
      at timestamptz not null default now()
    )`.execute(db);
    await sql`create index test_gateway_operations_auth_idx on test_gateway_operations (authorization_key) where authorization_key <> ''`.execute(db);
    await sql`create table test_gateway_faults (
      operation text primary key check (operation in ('authorize','capture','void','refund')),
      kind text not null check (kind in ('error','timeout')),
      remaining int8 null,
      rate float8 not null default 1
    )`.execute(db);
  },
  async down(db: Kysely<any>) {
    await sql`drop table if exists test_gateway_faults`.execute(db);
    await sql`drop table if exists test_gateway_operations`.execute(db);
    await sql`drop table if exists payment_requests`.execute(db);
    await sql`drop table if exists payment_settlements`.execute(db);
    await sql`alter table payment_ledger drop column parent_key`.execute(db);
  },
};

/** The test gateway's injectable faults gain "decline" (an authorization the card refuses, for tests of declined top-ups). */
export const m20261204T1000_test_gateway_decline_fault: Migration = {
  async up(db: Kysely<any>) {
    await sql`alter table test_gateway_faults drop constraint test_gateway_faults_kind_check`.execute(db);
    await sql`alter table test_gateway_faults add constraint test_gateway_faults_kind_check check (kind in ('error','timeout','decline'))`.execute(db);
  },
  async down(db: Kysely<any>) {
    await sql`delete from test_gateway_faults where kind = 'decline'`.execute(db);
    await sql`alter table test_gateway_faults drop constraint test_gateway_faults_kind_check`.execute(db);
    await sql`alter table test_gateway_faults add constraint test_gateway_faults_kind_check check (kind in ('error','timeout'))`.execute(db);
  },
};
