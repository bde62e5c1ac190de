import assert from "node:assert/strict";
import { createClient, createRouterTransport, type CallOptions, type Client } from "@connectrpc/connect";
import { sql, type Kysely } from "kysely";
import { OrderService } from "../../gen/dabba/order/v1/order_service_pb.js";
import type { Order } from "../../gen/dabba/order/v1/order_pb.js";
import { createCatalogService } from "../../services/catalog/index.js";
import { createCatalogStore } from "../../services/catalog/store.js";
import { createOrderService } from "../../services/order/index.js";
import { authInterceptor, bearer, createVerifier, mintToken, type Role } from "../../services/platform/auth.js";
import { defaultOrderConfig, defaultPaymentsConfig, testConfig, type Config } from "../../services/platform/config.js";
import { openDb, type Db } from "../../services/platform/db.js";
import { createLogger } from "../../services/platform/logger.js";
import { openRedis, type RedisPorts } from "../../services/platform/redis.js";
import type { ServiceDeps, ServiceModule } from "../../services/platform/service.js";
import { redisUrl, requireReal, uniqueId } from "./backends.js";
import { fixtureRestaurant } from "./fixtures.js";
import { createRunDatabase } from "./run-database.js";
import { until } from "./wait.js";

/**
 * The catalog and `processes` order services (each its own payment worker, breaker and job
 * consumer, as separate dabba processes would be) on one database and one Redis, behind the auth
 * interceptor over router transports; embedded (PGlite + in-process twins) or real (Postgres + Redis).
 */
export interface PaymentsEnv {
  cfg: Config;
  db: Db;
  redis: RedisPorts;
  rid: string;
  /** A client of order process i (round-robin over the processes when i is omitted). */
  client(i?: number): Client<typeof OrderService>;
  orders: ServiceModule[];
  token(role: Role, sub: string, restaurantId?: string): Promise<string>;
  close(): Promise<void>;
}

export function auth(token: string, headers: Record<string, string> = {}): CallOptions {
  return { headers: { authorization: `Bearer ${token}`, ...headers } };
}

export async function openPaymentsEnv(
  kind: "embedded" | "real",
  opts: { payments?: Partial<Config["payments"]>; orders?: Partial<Config["orders"]>; processes?: number } = {},
): Promise<PaymentsEnv> {
  if (kind === "real") {
    await requireReal("postgres");
    await requireReal("redis");
  }
  const cfg = testConfig({
    orders: { ...defaultOrderConfig, placeRatePerMinute: 100_000, ...opts.orders },
    payments: { ...defaultPaymentsConfig, ...opts.payments },
  });
  const logger = createLogger("silent");
  const run = uniqueId();
  const runDb = kind === "real" ? await createRunDatabase("payments_test") : undefined;
  const db = runDb ? await openDb({ databaseUrl: runDb.url, dataDir: "memory://", poolSize: 20 }) : await openDb({ dataDir: "memory://" });
  const redis = await openRedis({ redisUrl: kind === "real" ? redisUrl() : undefined, keyPrefix: `test:${run}:` });
  const verifier = await createVerifier(cfg.auth);
  const interceptors = [authInterceptor(verifier)];
  const serviceToken = await mintToken(cfg.auth, { role: "service", sub: "order" });
  let catalog: ServiceModule | undefined;
  const deps: ServiceDeps = {
    config: cfg,
    db,
    redis,
    logger,
    peer: () =>
      createRouterTransport(({ service }) => service(catalog!.desc, catalog!.impl), {
        router: { interceptors },
        transport: { interceptors: [bearer(serviceToken)] },
      }),
  };
  catalog = createCatalogService(deps);
  const orders = Array.from({ length: opts.processes ?? 1 }, () => createOrderService(deps));
  await db.migrate("catalog", catalog.migrations);
  await db.migrate("order", orders[0]!.migrations);
  const rid = `rst-pay-${run}`;
  await createCatalogStore(db).insertRestaurants([fixtureRestaurant(rid)]);
  await catalog.start();
  for (const o of orders) await o.start();
  const clients = orders.map((o) =>
    createClient(
      OrderService,
      createRouterTransport(
        ({ service }) => {
          service(catalog!.desc, catalog!.impl);
          service(o.desc, o.impl);
        },
        { router: { interceptors } },
      ),
    ),
  );
  let rr = 0;
  return {
    cfg,
    db,
    redis,
    rid,
    orders,
    client: (i?: number) => clients[(i ?? rr++) % clients.length]!,
    token: (role, sub, restaurantId) => mintToken(cfg.auth, { role, sub, restaurantId }),
    async close() {
      for (const o of orders) await o.stop().catch(() => {});
      await catalog!.stop().catch(() => {});
      await redis.close().catch(() => {});
      await db.close().catch(() => {});
      await runDb?.drop();
    },
  };
}

// ---------------------------------------------------------------------------------------------
// The ledger invariant, computed here from the tables (not with the settlement code's rules).

interface LedgerRow {
  order_id: string;
  operation: string;
  amount_minor: string | number;
  outcome: string;
  idempotency_key: string;
  parent_key: string;
}
interface GatewayRow {
  key: string;
  operation: string;
  authorization_key: string;
  amount_minor: string | number;
}

/** Orders whose money is not settled yet (pending payment, or the ledger not at what is due). */
export async function unsettledOrders(db: Db): Promise<string[]> {
  const r = await sql<{ id: string }>`
    select o.id from orders o
    left join lateral (
      select coalesce(sum(case when operation = 'capture' then amount_minor when operation = 'refund' then -amount_minor else 0 end), 0) as net
      from payment_ledger l where l.order_id = o.id and l.outcome = 'approved') n on true
    where o.status = 'PAYMENT_PENDING' or n.net <> o.due_minor or o.charged_minor <> o.due_minor`.execute(db.kysely);
  return r.rows.map((x) => x.id);
}

/**
 * Checks, for EVERY order: ledger net (approved captures minus approved refunds) == due_minor ==
 * charged_minor; no capture for an order never accepted; an order cancelled before acceptance has
 * nothing captured and every authorization the gateway approved for it voided; a terminal order
 * holds no open authorization at the gateway; and the gateway's own records agree with the
 * ledger (same approved captures, refunds and voids, by key and amount). Returns a summary.
 */
export async function checkLedgerInvariant(db: Db): Promise<{ orders: number; captured: number; refunded: number; voided: number; byStatus: Record<string, number> }> {
  const k = db.kysely as Kysely<any>;
  const orders = (await sql<{ id: string; status: string; due_minor: string; charged_minor: string; total_minor: string }>`
    select id, status, due_minor, charged_minor, total_minor from orders`.execute(k)).rows;
  const accepted = new Set(
    (await sql<{ order_id: string }>`select distinct order_id from order_status_history where status = 'CONFIRMED'`.execute(k)).rows.map((r) => r.order_id),
  );
  const ledger = (await sql<LedgerRow>`select order_id, operation, amount_minor, outcome, idempotency_key, parent_key from payment_ledger order by id`.execute(k)).rows;
  const gateway = (await sql<GatewayRow>`select key, operation, authorization_key, amount_minor from test_gateway_operations where outcome = 'approved'`.execute(k)).rows;
  const byOrder = new Map<string, LedgerRow[]>();
  for (const l of ledger) byOrder.set(l.order_id, [...(byOrder.get(l.order_id) ?? []), l]);
  const gwByAuth = new Map<string, GatewayRow[]>();
  const gwAuth = new Map<string, GatewayRow>();
  for (const g of gateway) {
    if (g.operation === "authorize") gwAuth.set(g.key, g);
    else gwByAuth.set(g.authorization_key, [...(gwByAuth.get(g.authorization_key) ?? []), g]);
  }
  const summary = { orders: orders.length, captured: 0, refunded: 0, voided: 0, byStatus: {} as Record<string, number> };
  const ledgerKeys = new Set<string>();
  for (const o of orders) {
    summary.byStatus[o.status] = (summary.byStatus[o.status] ?? 0) + 1;
    const rows = byOrder.get(o.id) ?? [];
    const approved = rows.filter((r) => r.outcome === "approved");
    const sum = (op: string, rs: { operation: string; amount_minor: string | number }[]) =>
      rs.filter((r) => r.operation === op).reduce((s, r) => s + Number(r.amount_minor), 0);
    const captured = sum("capture", approved);
    const refunded = sum("refund", approved);
    const net = captured - refunded;
    const where = `order ${o.id} (${o.status}, total ${o.total_minor})`;
    assert.equal(net, Number(o.due_minor), `${where}: ledger net ${net} != due_minor ${o.due_minor}`);
    assert.equal(Number(o.charged_minor), Number(o.due_minor), `${where}: charged_minor ${o.charged_minor} != due_minor ${o.due_minor}`);
    if (!accepted.has(o.id)) assert.equal(captured, 0, `${where}: captured ${captured} though never accepted`);

    const authKeys = [...new Set(rows.filter((r) => r.operation === "authorize").map((r) => r.idempotency_key))];
    const gwOps = authKeys.flatMap((a) => gwByAuth.get(a) ?? []);
    assert.equal(sum("capture", gwOps), captured, `${where}: gateway captures ${sum("capture", gwOps)} != ledger ${captured}`);
    assert.equal(sum("refund", gwOps), refunded, `${where}: gateway refunds ${sum("refund", gwOps)} != ledger ${refunded}`);
    for (const g of gwOps) {
      const l = approved.find((r) => r.idempotency_key === g.key);
      assert.ok(l, `${where}: gateway ${g.operation} ${g.key} is not an approved ledger row`);
      if (g.operation !== "void") assert.equal(Number(l.amount_minor), Number(g.amount_minor), `${where}: ${g.key} amounts differ`);
    }
    for (const l of approved) {
      if (l.operation === "authorize") assert.ok(gwAuth.has(l.idempotency_key), `${where}: approved authorization ${l.idempotency_key} unknown to the gateway`);
      else assert.ok(gwOps.some((g) => g.key === l.idempotency_key), `${where}: approved ${l.operation} ${l.idempotency_key} unknown to the gateway`);
    }
    const terminal = o.status === "CANCELLED" || o.status === "DELIVERED";
    for (const a of authKeys) {
      if (!gwAuth.has(a)) continue;
      const ops = gwByAuth.get(a) ?? [];
      const closed = ops.some((g) => g.operation === "capture" || g.operation === "void");
      if (terminal) assert.ok(closed, `${where}: authorization ${a} is still open at the gateway`);
      if (o.status === "CANCELLED" && !accepted.has(o.id)) {
        assert.ok(ops.some((g) => g.operation === "void"), `${where}: cancelled before acceptance but authorization ${a} was not voided`);
      }
    }
    for (const r of approved) ledgerKeys.add(r.idempotency_key);
    summary.captured += captured;
    summary.refunded += refunded;
    summary.voided += approved.filter((r) => r.operation === "void").length;
  }
  return summary;
}

/** Waits until every order's money is settled (no PAYMENT_PENDING, ledger at what is due). */
export async function waitSettled(db: Db, ms = 60_000): Promise<void> {
  await until(
    async () => (await unsettledOrders(db)).length === 0 && (await openAuthorizationsOfClosedOrders(db)) === 0 && (await settlementsRunning(db)) === 0,
    ms,
    "every order settled",
  );
}

/**
 * Settlement runs holding a live claim: a run between its gateway call and its ledger write has
 * the gateway ahead of the ledger, so the invariant is only checked once none is running. Checked
 * last: a run still under way when the others were read holds its claim now; one that started
 * after found nothing left to do.
 */
async function settlementsRunning(db: Db): Promise<number> {
  const r = await sql<{ n: string }>`select count(*) as n from payment_settlements where lease_until > now()`.execute(db.kysely);
  return Number(r.rows[0]?.n ?? 0);
}

/** Authorizations the gateway holds open for cancelled or delivered orders (a release still to come). */
async function openAuthorizationsOfClosedOrders(db: Db): Promise<number> {
  const r = await sql<{ n: string }>`
    select count(*) as n from test_gateway_operations a
    join (select distinct l.idempotency_key, l.order_id from payment_ledger l where l.operation = 'authorize') k on k.idempotency_key = a.key
    join orders o on o.id = k.order_id and o.status in ('CANCELLED','DELIVERED')
    where a.operation = 'authorize' and a.outcome = 'approved'
      and not exists (select 1 from test_gateway_operations f where f.authorization_key = a.key and f.outcome = 'approved' and f.operation in ('capture','void'))`.execute(db.kysely);
  return Number(r.rows[0]?.n ?? 0);
}

/** Polls GetOrder (as ops) until `cond` holds. */
export async function waitOrder(env: PaymentsEnv, id: string, cond: (o: Order) => boolean, what: string, ms = 20_000): Promise<Order> {
  const ops = auth(await env.token("ops", "op-wait"));
  let last: Order | undefined;
  await until(async () => {
    last = (await env.client(0).getOrder({ orderId: id }, ops)).order!;
    return cond(last);
  }, ms, what);
  return last!;
}
