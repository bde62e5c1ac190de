import assert from "node:assert/strict";
import { Code, ConnectError, createClient, createRouterTransport, type CallOptions, type Client } from "@connectrpc/connect";
import type { Kysely } from "kysely";
import pg from "pg";
import type { CartLine } from "../../gen/dabba/catalog/v1/catalog_service_pb.js";
import { OrderStatus, type Order } from "../../gen/dabba/order/v1/order_pb.js";
import { OrderService } from "../../gen/dabba/order/v1/order_service_pb.js";
import { createCatalogService } from "../../services/catalog/index.js";
import { createCatalogStore } from "../../services/catalog/store.js";
import { createOrderService } from "../../services/order/index.js";
import { authInterceptor, bearer, createVerifier, mintToken, type Role } from "../../services/platform/auth.js";
import { defaultOrderConfig, testConfig, type Config } from "../../services/platform/config.js";
import { openDb, type Db } from "../../services/platform/db.js";
import { createLogger } from "../../services/platform/logger.js";
import { openRedis, type RedisPorts } from "../../services/platform/redis.js";
import type { ServiceDeps, ServiceModule } from "../../services/platform/service.js";
import { postgresUrl, redisUrl, requireReal, uniqueId } from "../helpers/backends.js";

// Concurrency against real Postgres and Redis only. Two order service instances, each with its
// own connection pool, share one database (as two processes would); calls alternate between them.

async function admin(query: string): Promise<void> {
  const c = new pg.Client({ connectionString: postgresUrl() });
  await c.connect();
  try {
    await c.query(query);
  } finally {
    await c.end();
  }
}

function settle<T>(ps: Promise<T>[]): Promise<({ ok: true; value: T } | { ok: false; error: ConnectError })[]> {
  return Promise.all(ps.map((p) => p.then((value) => ({ ok: true as const, value }), (e) => ({ ok: false as const, error: ConnectError.from(e) }))));
}

describe("OrderService races (Postgres + Redis)", function () {
  this.timeout(120_000);
  const run = uniqueId();
  const dbName = `order_race_${run}`;
  const rid = `rst-race-${run}`;
  const cfg = testConfig({ orders: { ...defaultOrderConfig, placeRatePerMinute: 100_000 } });
  const dbs: Db[] = [];
  const redises: RedisPorts[] = [];
  const modules: ServiceModule[] = [];
  const clients: Client<typeof OrderService>[] = [];
  let db: Db;
  let created = false;

  const token = (role: Role, sub: string, restaurantId?: string) => mintToken(cfg.auth, { role, sub, restaurantId });
  const auth = (tok: string, headers: Record<string, string> = {}): CallOptions => ({ headers: { authorization: `Bearer ${tok}`, ...headers } });
  const client = (i: number) => clients[i % clients.length];
  const k = () => db.kysely as Kysely<any>;

  let dbUrl = "";
  let interceptors: ReturnType<typeof authInterceptor>[] = [];
  let serviceToken = "";

  /**
   * Two order service instances on the database, each with its own pool and Redis connection (as
   * two processes); the first call also migrates and seeds the catalog. Closed in after().
   */
  async function openInstances(config: Config, poolSize: number): Promise<Client<typeof OrderService>[]> {
    const out: Client<typeof OrderService>[] = [];
    for (let i = 0; i < 2; i++) {
      const idb = await openDb({ databaseUrl: dbUrl, dataDir: "memory://", poolSize });
      const redis = await openRedis({ redisUrl: redisUrl(), keyPrefix: `test:${run}:` });
      dbs.push(idb);
      redises.push(redis);
      let catalog: ServiceModule | undefined;
      const deps: ServiceDeps = {
        config,
        db: idb,
        redis,
        logger: createLogger("silent"),
        peer: () =>
          createRouterTransport(({ service }) => service(catalog!.desc, catalog!.impl), {
            router: { interceptors },
            transport: { interceptors: [bearer(serviceToken)] },
          }),
      };
      catalog = createCatalogService(deps);
      const order = createOrderService(deps);
      if (dbs.length === 1) {
        await idb.migrate("catalog", catalog.migrations);
        await idb.migrate("order", order.migrations);
        const hours = [0, 1, 2, 3, 4, 5, 6].map((d) => ({ dayOfWeek: d, openMinute: 0, closeMinute: 1440 }));
        await createCatalogStore(idb).insertRestaurants([
          {
            id: rid, name: "Race Kitchen", description: "", lat: 12.9716, lng: 77.5946, address: "", cuisines: ["indian"], rating: 4,
            ratingCount: 1, priceLevel: 2, hours, isOpen: true, deliveryRadiusKm: 10, avgPrepMinutes: 15, popularity: 0.5,
            currency: "USD", city: "bengaluru", utcOffsetMinutes: 330, searchText: "race kitchen",
            categories: [{ id: `${rid}-c`, name: "Mains", items: [
              { id: `${rid}-dosa`, restaurantId: rid, categoryId: `${rid}-c`, name: "Dosa", description: "", priceMinor: 450, currency: "USD", available: true, groups: [] },
            ] }],
          },
        ]);
      }
      await order.start();
      modules.push(order);
      out.push(createClient(OrderService, createRouterTransport(({ service }) => {
        service(catalog!.desc, catalog!.impl);
        service(order.desc, order.impl);
      }, { router: { interceptors } })));
    }
    return out;
  }

  before(async function () {
    await requireReal("postgres", this);
    await requireReal("redis", this);
    await admin(`create database ${dbName}`);
    created = true;
    const u = new URL(postgresUrl());
    u.pathname = `/${dbName}`;
    dbUrl = u.toString();
    interceptors = [authInterceptor(await createVerifier(cfg.auth))];
    serviceToken = await mintToken(cfg.auth, { role: "service", sub: "order" });
    clients.push(...(await openInstances(cfg, 25)));
    db = dbs[0];
  });

  after(async () => {
    for (const m of modules) await m.stop();
    for (const r of redises) await r.close();
    for (const d of dbs) await d.close();
    if (created) await admin(`drop database if exists ${dbName} with (force)`);
  });

  const request = () => ({
    restaurantId: rid,
    lines: [{ itemId: `${rid}-dosa`, quantity: 2, optionIds: [], note: "" }] as unknown as CartLine[],
    delivery: { location: { lat: 12.98, lng: 77.6 }, addressLine: "Church Street 5", instructions: "" },
    tipMinor: 0n, paymentToken: "tok_visa",
  });

  async function placed(): Promise<{ order: Order; customer: string }> {
    const customer = `cust-${uniqueId()}`;
    const res = await client(0).placeOrder(request(), auth(await token("customer", customer), { "idempotency-key": uniqueId() }));
    return { order: res.order!, customer };
  }

  async function confirmed(): Promise<Order> {
    const { order } = await placed();
    return (await client(0).acceptOrder({ orderId: order.id }, auth(await token("restaurant", "tablet", rid)))).order!;
  }

  async function historyOf(orderId: string) {
    return k().selectFrom("order_status_history").selectAll().where("order_id", "=", orderId).orderBy("seq").execute();
  }

  it("50 concurrent PlaceOrder with one key create exactly one order", async () => {
    const customer = `cust-${uniqueId()}`;
    const tok = await token("customer", customer);
    const key = `race-${uniqueId()}`;
    const results = await settle(Array.from({ length: 50 }, (_, i) => client(i).placeOrder(request(), auth(tok, { "idempotency-key": key }))));
    const failures = results.filter((r) => !r.ok);
    assert.deepEqual(failures.map((f) => !f.ok && f.error.message), []);
    const ids = new Set(results.map((r) => r.ok && r.value.order!.id));
    assert.equal(ids.size, 1);
    const [id] = [...ids] as string[];
    const orders = await k().selectFrom("orders").select("id").where("customer_id", "=", customer).execute();
    assert.deepEqual(orders.map((o) => o.id), [id]);
    const keys = await k().selectFrom("idempotency_keys").selectAll().where("customer_id", "=", customer).execute();
    assert.equal(keys.length, 1);
    assert.equal(keys[0].order_id, id);
    const history = await historyOf(id);
    assert.deepEqual(history.map((h) => h.status), ["PLACED"]);
    const outbox = await k().selectFrom("outbox").select("event_type").where("event_key", "=", id).execute();
    assert.deepEqual(outbox.map((o) => o.event_type), ["placed"]);
  });

  it("100 concurrent AcceptOrder/RejectOrder on one order have exactly one winner", async () => {
    const { order } = await placed();
    const r = auth(await token("restaurant", "tablet", rid));
    const calls = Array.from({ length: 100 }, (_, i) =>
      i % 2 === 0
        ? client(i).acceptOrder({ orderId: order.id }, r).then((x) => ({ cmd: "accept", order: x.order! }))
        : client(i).rejectOrder({ orderId: order.id, reason: "busy" }, r).then((x) => ({ cmd: "reject", order: x.order! })),
    );
    const results = await settle(calls);
    const row = await k().selectFrom("orders").selectAll().where("id", "=", order.id).executeTakeFirstOrThrow();
    const winner = row.status === "CONFIRMED" ? "accept" : "reject";
    assert.ok(["CONFIRMED", "CANCELLED"].includes(row.status));
    assert.equal(Number(row.version), 2, "version incremented exactly once");
    for (const res of results) {
      if (res.ok) {
        assert.equal(res.value.cmd, winner, "only the winning command's callers succeed (first or repeated)");
        assert.equal(res.value.order.version, 2n);
      } else {
        assert.equal(Code[res.error.code], "FailedPrecondition", res.error.message);
      }
    }
    assert.equal(results.filter((x) => x.ok).length, 50);
    const history = await historyOf(order.id);
    assert.deepEqual(history.map((h) => [Number(h.seq), h.status]), [[1, "PLACED"], [2, row.status]]);
    const events = await k().selectFrom("outbox").select("event_type").where("event_key", "=", order.id).where("event_type", "<>", "payment").orderBy("id").execute();
    assert.deepEqual(events.map((e) => e.event_type), ["placed", winner === "accept" ? "confirmed" : "rejected"]);
  });

  it("accepts, rejects and customer cancels racing leave exactly one transition out of PLACED", async () => {
    const { order, customer } = await placed();
    const r = auth(await token("restaurant", "tablet", rid));
    const c = auth(await token("customer", customer));
    const calls: Promise<unknown>[] = [];
    for (let i = 0; i < 120; i++) {
      const cl = client(i);
      if (i % 3 === 0) calls.push(cl.acceptOrder({ orderId: order.id }, r));
      else if (i % 3 === 1) calls.push(cl.rejectOrder({ orderId: order.id, reason: "busy" }, r));
      else calls.push(cl.cancelOrder({ orderId: order.id, reason: "changed my mind" }, c));
    }
    const results = await settle(calls);
    for (const res of results) if (!res.ok) assert.equal(Code[res.error.code], "FailedPrecondition", res.error.message);
    const history = await historyOf(order.id);
    const row = await k().selectFrom("orders").selectAll().where("id", "=", order.id).executeTakeFirstOrThrow();
    // One row per change, gap-free, and exactly one of them leaves PLACED.
    assert.deepEqual(history.map((h) => Number(h.seq)), history.map((_, i) => i + 1));
    assert.equal(Number(row.version), history.length);
    assert.ok(history.length >= 2 && ["CONFIRMED", "CANCELLED"].includes(history[1].status), "the order left PLACED once");
    assert.ok(history.filter((h) => h.status === "CANCELLED").length <= 1);
    assert.ok(history.filter((h) => h.status === "CONFIRMED").length <= 1);
    // A cancel can only follow an accept (the customer cancelling the confirmed order), never a second exit from PLACED.
    if (history.length === 3) assert.deepEqual(history.map((h) => h.status), ["PLACED", "CONFIRMED", "CANCELLED"]);
    assert.ok(history.length <= 3);
  });

  it("50 concurrent AssignDriver of different drivers assign exactly one", async () => {
    const order = await confirmed();
    const svc = auth(await token("service", "dispatch"));
    const drivers = Array.from({ length: 50 }, (_, i) => `drv-${run}-${i}`);
    const results = await settle(drivers.map((d, i) => client(i).assignDriver({ orderId: order.id, driverId: d, fencingToken: BigInt(i + 1) }, svc)));
    const ok = results.filter((r) => r.ok);
    assert.equal(ok.length, 1);
    for (const r of results) if (!r.ok) assert.equal(Code[r.error.code], "FailedPrecondition", r.error.message);
    const row = await k().selectFrom("orders").selectAll().where("id", "=", order.id).executeTakeFirstOrThrow();
    assert.equal(row.driver_id, ok[0].ok && ok[0].value.order!.driverId);
    assert.equal(Number(row.version), 3);
    const assigned = (await historyOf(order.id)).filter((h) => h.kind === "driver_assigned");
    assert.equal(assigned.length, 1);
    assert.equal(assigned[0].driver_id, row.driver_id);
  });

  it("one driver assigned concurrently to 20 orders gets exactly one", async () => {
    const orders = await Promise.all(Array.from({ length: 20 }, () => confirmed()));
    const svc = auth(await token("service", "dispatch"));
    const driver = `drv-solo-${run}`;
    const results = await settle(orders.map((o, i) => client(i).assignDriver({ orderId: o.id, driverId: driver, fencingToken: 1n }, svc)));
    assert.equal(results.filter((r) => r.ok).length, 1);
    for (const r of results) {
      if (!r.ok) {
        assert.equal(Code[r.error.code], "FailedPrecondition");
        assert.match(r.error.rawMessage, /driver already carries 1 active orders \(limit 1\)/);
      }
    }
    const held = await k().selectFrom("orders").select("id").where("driver_id", "=", driver).execute();
    assert.equal(held.length, 1);
    const assigned = await k().selectFrom("order_status_history").select("order_id").where("driver_id", "=", driver).where("kind", "=", "driver_assigned").execute();
    assert.equal(assigned.length, 1);
    // Once that order is delivered the driver is free again.
    const heldId = held[0].id;
    const r = auth(await token("restaurant", "tablet", rid));
    const d = auth(await token("driver", driver));
    await client(0).startPreparing({ orderId: heldId }, r);
    await client(1).confirmPickup({ orderId: heldId }, d);
    const delivered = (await client(0).confirmDelivery({ orderId: heldId }, d)).order!;
    assert.equal(delivered.status, OrderStatus.DELIVERED);
    const other = orders.find((o) => o.id !== heldId)!;
    await client(1).assignDriver({ orderId: other.id, driverId: driver, fencingToken: 2n }, svc);
  });

  for (const stackSize of [1, 2]) {
    it(`one driver assigned concurrently to 40 orders with stackSize ${stackSize} gets exactly ${stackSize}`, async () => {
      // stackSize 1 runs on the suite's instances (the default config); 2 on a pair of its own.
      const cs = stackSize === 1 ? clients : await openInstances({ ...cfg, dispatch: { ...cfg.dispatch, stackSize } }, 12);
      const via = (i: number) => cs[i % cs.length]!;
      const orders = await Promise.all(Array.from({ length: 40 }, () => confirmed()));
      const svc = auth(await token("service", "dispatch"));
      const driver = `drv-stack${stackSize}-${run}`;
      const results = await settle(orders.map((o, i) => via(i).assignDriver({ orderId: o.id, driverId: driver, fencingToken: BigInt(i + 1) }, svc)));
      const won = results.filter((r) => r.ok);
      assert.equal(won.length, stackSize);
      const limit = new RegExp(`^driver already carries ${stackSize} active orders \\(limit ${stackSize}\\)$`);
      for (const r of results) {
        if (!r.ok) {
          assert.equal(Code[r.error.code], "FailedPrecondition", r.error.message);
          assert.match(r.error.rawMessage, limit);
        }
      }
      const held = await k().selectFrom("orders").select(["id", "version", "last_fencing_token"]).where("driver_id", "=", driver).execute();
      assert.deepEqual(held.map((h) => h.id).sort(), won.map((r) => r.ok && r.value.order!.id).sort());
      for (const h of held) assert.equal(Number(h.version), 3);
      const assigned = await k().selectFrom("order_status_history").select("order_id").where("driver_id", "=", driver).where("kind", "=", "driver_assigned").execute();
      assert.equal(assigned.length, stackSize);
      const events = await k().selectFrom("outbox").select("event_key").where("event_type", "=", "driver_assigned").where("event_key", "in", orders.map((o) => o.id)).execute();
      assert.deepEqual(events.map((e) => e.event_key).sort(), held.map((h) => h.id).sort());
      // The losers were left as they were.
      const losers = await k().selectFrom("orders").select(["status", "version", "driver_id"]).where("id", "in", orders.map((o) => o.id)).where("driver_id", "is", null).execute();
      assert.equal(losers.length, 40 - stackSize);
      for (const l of losers) assert.deepEqual([l.status, Number(l.version)], ["CONFIRMED", 2]);
    });
  }
});
