import assert from "node:assert/strict";
import { fromBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, createClient, createRouterTransport, type CallOptions, type Client, type Transport } from "@connectrpc/connect";
import { sql, type Kysely } from "kysely";
import type { CartLine } from "../../gen/dabba/catalog/v1/catalog_service_pb.js";
import { ActorRole } from "../../gen/dabba/common/v1/common_pb.js";
import { EventSchema, type Event } from "../../gen/dabba/events/v1/events_pb.js";
import { OrderStatus, TimelineKind, type Order } from "../../gen/dabba/order/v1/order_pb.js";
import { OrderService, type WatchRestaurantOrdersResponse } from "../../gen/dabba/order/v1/order_service_pb.js";
import { createCatalogService } from "../../services/catalog/index.js";
import { createCatalogStore } from "../../services/catalog/store.js";
import { createOrderService } from "../../services/order/index.js";
import { authInterceptor, bearer, createVerifier, mintToken, type Role } from "../../services/platform/auth.js";
import { defaultOrderConfig, testConfig, type Config } from "../../services/platform/config.js";
import { openDb, type Db } from "../../services/platform/db.js";
import { createLogger } from "../../services/platform/logger.js";
import { openRedis, type RedisPorts } from "../../services/platform/redis.js";
import type { ServiceDeps, ServiceModule } from "../../services/platform/service.js";
import { redisUrl, requireReal, uniqueId } from "../helpers/backends.js";
import { fixtureRestaurant } from "../helpers/fixtures.js";
import { createRunDatabase } from "../helpers/run-database.js";
import { expectCode } from "../helpers/expect.js";

// ---------------------------------------------------------------------------------------------
// Environment: the real catalog and the order service behind the auth interceptor, over a
// router transport; embedded PGlite + in-process Redis twin, or real Postgres + real Redis.

const PLACE_RATE = 6;

interface Env {
  cfg: Config;
  db: Db;
  redis: RedisPorts;
  order: ServiceModule;
  client: Client<typeof OrderService>;
  rid: string;
  closedRid: string;
  token(role: Role, sub: string, restaurantId?: string): Promise<string>;
  /** A client of a second order service on the same database and Redis, with these dispatch settings. */
  orderClient(dispatch: Partial<Config["dispatch"]>): Promise<Client<typeof OrderService>>;
  close(): Promise<void>;
}

async function openEnv(kind: "embedded" | "real", overrides: Partial<Config["orders"]> = {}): Promise<Env> {
  const cfg = testConfig({ orders: { ...defaultOrderConfig, placeRatePerMinute: PLACE_RATE, ...overrides } });
  const logger = createLogger("silent");
  const run = uniqueId();
  const runDb = kind === "real" ? await createRunDatabase("order_test") : undefined;
  const db = runDb
    ? await openDb({ databaseUrl: runDb.url, dataDir: "memory://", poolSize: 20 })
    : await openDb({ dataDir: "memory://" });
  let redis: RedisPorts | undefined;
  const cleanup = async () => {
    await redis?.close().catch(() => {});
    await db.close().catch(() => {});
    await runDb?.drop();
  };
  try {
    redis = await openRedis({ redisUrl: kind === "real" ? redisUrl() : undefined, keyPrefix: `test:${run}:` });
    const verifier = await createVerifier(cfg.auth);
    const interceptors = [authInterceptor(verifier)];
    const serviceToken = await mintToken(cfg.auth, { role: "service", sub: "order" });
    let catalog: ServiceModule | undefined;
    const deps: ServiceDeps = {
      config: cfg,
      db,
      redis,
      logger,
      peer: (name) => {
        assert.equal(name, "catalog");
        return createRouterTransport(({ service }) => service(catalog!.desc, catalog!.impl), {
          router: { interceptors },
          transport: { interceptors: [bearer(serviceToken)] },
        });
      },
    };
    catalog = createCatalogService(deps);
    const order = createOrderService(deps);
    await db.migrate("catalog", catalog.migrations);
    await db.migrate("order", order.migrations);
    // Own tables only (a fresh database is empty already; this keeps the suite honest if that changes).
    for (const t of ["order_status_history", "idempotency_keys", "orders", "outbox"]) await sql`delete from ${sql.table(t)}`.execute(db.kysely);

    const rid = `rst-ord-${run}`;
    const closedRid = `rst-ord-closed-${run}`;
    await createCatalogStore(db).insertRestaurants([fixtureRestaurant(rid), fixtureRestaurant(closedRid, { isOpen: false })]);
    await catalog.start();
    await order.start();

    const transport: Transport = createRouterTransport(
      ({ service }) => {
        service(catalog!.desc, catalog!.impl);
        service(order.desc, order.impl);
      },
      { router: { interceptors } },
    );
    const extra: ServiceModule[] = [];
    return {
      cfg,
      db,
      redis,
      order,
      client: createClient(OrderService, transport),
      rid,
      closedRid,
      token: (role, sub, restaurantId) => mintToken(cfg.auth, { role, sub, restaurantId }),
      async orderClient(dispatch) {
        const other = createOrderService({ ...deps, config: { ...cfg, dispatch: { ...cfg.dispatch, ...dispatch } } });
        await other.start();
        extra.push(other);
        return createClient(OrderService, createRouterTransport(({ service }) => service(other.desc, other.impl), { router: { interceptors } }));
      },
      async close() {
        for (const m of extra) await m.stop();
        await order.stop();
        await catalog!.stop();
        await cleanup();
      },
    };
  } catch (err) {
    await cleanup();
    throw err;
  }
}


function auth(token: string, headers: Record<string, string> = {}): CallOptions {
  return { headers: { authorization: `Bearer ${token}`, ...headers } };
}

async function count(db: Db, table: string, where?: { col: string; val: string }): Promise<number> {
  const k = db.kysely as Kysely<any>;
  let q = k.selectFrom(table).select((eb) => eb.fn.countAll<number>().as("n"));
  if (where) q = q.where(where.col, "=", where.val);
  const row = await q.executeTakeFirstOrThrow();
  return Number(row.n);
}

/**
 * The order's status and assignment events, oldest first. Payment events (the payment worker's,
 * asynchronous) take sequences in between; they are left out here, and the others renumbered
 * 1.. in order after checking the sequences increase.
 */
async function outboxEvents(db: Db, orderId: string): Promise<Event[]> {
  const rows = await (db.kysely as Kysely<any>).selectFrom("outbox").selectAll().where("event_key", "=", orderId).orderBy("id").execute();
  const all = rows.map((r) => {
    const e = fromBinary(EventSchema, new Uint8Array(r.payload));
    assert.equal(r.event_id, e.eventId);
    assert.equal(r.stream, "events:orders");
    return e;
  });
  all.forEach((e, i) => i > 0 && assert.ok(e.sequence > all[i - 1]!.sequence, "event sequences increase"));
  return all.filter((e) => e.payload.case !== "payment").map((e, i) => Object.assign(e, { sequence: BigInt(i + 1) }));
}

// ---------------------------------------------------------------------------------------------

for (const kind of ["embedded", "real"] as const) {
  describe(`OrderService (${kind === "embedded" ? "PGlite + in-process redis" : "Postgres + Redis"})`, function () {
    this.timeout(60_000);
    let env: Env;
    let t: Record<string, string>;
    let n = 0;
    /** A fresh customer per test keeps the rate limiter and histories independent. */
    const freshCustomer = async () => {
      const sub = `cust-${++n}-${uniqueId()}`;
      return { sub, token: await env.token("customer", sub) };
    };

    before(async function () {
      if (kind === "real") {
        await requireReal("postgres", this);
        await requireReal("redis", this);
      }
      env = await openEnv(kind);
      t = {
        restaurant: await env.token("restaurant", "tablet-1", env.rid),
        otherRestaurant: await env.token("restaurant", "tablet-9", "rst-elsewhere"),
        d1: await env.token("driver", "drv-1"),
        d2: await env.token("driver", "drv-2"),
        ops: await env.token("ops", "op-1"),
        service: await env.token("service", "dispatch"),
      };
    });
    after(async () => {
      await env?.close();
    });

    const cart = (): CartLine[] =>
      [
        { itemId: `${env.rid}-dosa`, quantity: 2, optionIds: [], note: "extra crisp" },
        { itemId: `${env.rid}-biryani`, quantity: 1, optionIds: [`${env.rid}-raita`], note: "" },
      ] as CartLine[];
    const delivery = { location: { lat: 12.98, lng: 77.6 }, addressLine: "Church Street 5", instructions: "ring twice" };
    const request = (extra: { tipMinor?: bigint } = {}) => ({ restaurantId: env.rid, lines: cart(), delivery, tipMinor: extra.tipMinor ?? 150n, paymentToken: "tok_visa" });

    async function place(token: string, key = uniqueId(), body = request()): Promise<Order> {
      const res = await env.client.placeOrder(body, auth(token, { "idempotency-key": key }));
      return res.order!;
    }
    /** An order moved along the kitchen path by the restaurant (and a driver when asked). */
    async function orderAt(status: "PLACED" | "CONFIRMED" | "PREPARING" | "READY_FOR_PICKUP" | "PICKED_UP" | "EN_ROUTE", opts: { driver?: string } = {}) {
      const c = await freshCustomer();
      let o = await place(c.token);
      const r = auth(t.restaurant);
      if (status === "PLACED") return { order: o, customer: c };
      o = (await env.client.acceptOrder({ orderId: o.id, prepMinutes: 12 }, r)).order!;
      if (opts.driver || ["PICKED_UP", "EN_ROUTE"].includes(status)) {
        o = (await env.client.assignDriver({ orderId: o.id, driverId: opts.driver ?? "drv-1", fencingToken: 1n }, auth(t.service))).order!;
      }
      if (status === "CONFIRMED") return { order: o, customer: c };
      o = (await env.client.startPreparing({ orderId: o.id }, r)).order!;
      if (status === "PREPARING") return { order: o, customer: c };
      o = (await env.client.markReady({ orderId: o.id }, r)).order!;
      if (status === "READY_FOR_PICKUP") return { order: o, customer: c };
      const drv = auth(await env.token("driver", opts.driver ?? "drv-1"));
      o = (await env.client.confirmPickup({ orderId: o.id }, drv)).order!;
      if (status === "PICKED_UP") return { order: o, customer: c };
      o = (await env.client.markEnRoute({ orderId: o.id }, drv)).order!;
      return { order: o, customer: c };
    }

    describe("QuoteOrder", () => {
      it("prices the cart from the catalog, adds tax and tip, and writes nothing", async () => {
        const c = await freshCustomer();
        const before = await count(env.db, "orders");
        const outboxBefore = await count(env.db, "outbox");
        const q = await env.client.quoteOrder(request({ tipMinor: 150n }), auth(c.token));
        // 2 x 450 + (1200 + 80)
        assert.equal(q.subtotal?.amountMinor, 2180n);
        assert.equal(q.subtotal?.currency, "USD");
        assert.equal(q.tax?.amountMinor, 109n); // 5% of 2180
        assert.equal(q.tip?.amountMinor, 150n);
        assert.ok((q.deliveryFee?.amountMinor ?? 0n) > 0n);
        assert.equal(q.total?.amountMinor, 2180n + 109n + 150n + q.deliveryFee!.amountMinor);
        assert.deepEqual(q.lines.map((l) => [l.name, l.quantity, l.unitPrice?.amountMinor, l.lineTotal?.amountMinor]), [
          ["Masala Dosa", 2, 450n, 900n],
          ["Chicken Biryani", 1, 1280n, 1280n],
        ]);
        assert.ok(q.distanceKm > 0 && q.distanceKm < 10);
        assert.ok(q.eta && q.eta.minMinutes > 0 && q.eta.maxMinutes >= q.eta.minMinutes);
        assert.equal(await count(env.db, "orders"), before);
        assert.equal(await count(env.db, "outbox"), outboxBefore);
      });

      it("passes catalog errors through with their code and message", async () => {
        const c = await freshCustomer();
        await expectCode(env.client.quoteOrder({ ...request(), restaurantId: "rst-missing" }, auth(c.token)), Code.NotFound, /rst-missing/);
        await expectCode(
          env.client.quoteOrder({ ...request(), lines: [{ itemId: "nope", quantity: 1, optionIds: [], note: "" }] as unknown as CartLine[] }, auth(c.token)),
          Code.InvalidArgument,
          /lines\[0\]\.item_id/,
        );
        await expectCode(
          env.client.quoteOrder({ ...request(), restaurantId: env.closedRid, lines: [{ itemId: `${env.closedRid}-dosa`, quantity: 1, optionIds: [], note: "" }] as unknown as CartLine[] }, auth(c.token)),
          Code.FailedPrecondition,
          /closed/,
        );
      });

      it("rejects bad input naming the field", async () => {
        const c = await freshCustomer();
        const a = auth(c.token);
        const cases: [Record<string, unknown>, RegExp][] = [
          [{ lines: [] }, /^lines: /],
          [{ lines: Array.from({ length: 51 }, () => cart()[0]) }, /^lines: /],
          [{ lines: [{ ...cart()[0], quantity: 0 }] }, /lines\[0\]\.quantity/],
          [{ lines: [{ ...cart()[0], quantity: 100 }] }, /lines\[0\]\.quantity/],
          [{ lines: [{ ...cart()[0], note: "x".repeat(201) }] }, /lines\[0\]\.note/],
          [{ delivery: undefined }, /^delivery: /],
          [{ delivery: { ...delivery, location: undefined } }, /delivery\.location/],
          [{ delivery: { ...delivery, location: { lat: Number.NaN, lng: 77 } } }, /delivery\.location\.lat/],
          [{ delivery: { ...delivery, location: { lat: 12, lng: 181 } } }, /delivery\.location\.lng/],
          [{ delivery: { ...delivery, addressLine: "a".repeat(201) } }, /delivery\.address_line/],
          [{ delivery: { ...delivery, instructions: "a".repeat(501) } }, /delivery\.instructions/],
          [{ tipMinor: 100_001n }, /tip_minor/],
          [{ tipMinor: -1n }, /tip_minor/],
          [{ restaurantId: "" }, /restaurant_id/],
          [{ restaurantId: "r".repeat(129) }, /restaurant_id/],
        ];
        for (const [patch, re] of cases) {
          await expectCode(env.client.quoteOrder({ ...request(), ...patch } as never, a), Code.InvalidArgument, re);
        }
      });
    });

    describe("PlaceOrder", () => {
      it("creates a PLACED order with the quoted money, and the same key returns the same order", async () => {
        const c = await freshCustomer();
        const q = await env.client.quoteOrder(request(), auth(c.token));
        const key = `key-${uniqueId()}`;
        const first = await place(c.token, key);
        assert.equal(first.status, OrderStatus.PLACED);
        assert.equal(first.customerId, c.sub);
        assert.equal(first.restaurantId, env.rid);
        assert.match(first.restaurantName, /Dosa Test Kitchen/);
        assert.equal(first.total?.amountMinor, q.total?.amountMinor);
        assert.equal(first.tax?.amountMinor, q.tax?.amountMinor);
        assert.equal(first.version, 1n);
        assert.equal(first.lines.length, 2);
        assert.equal(first.lines[0].note, "extra crisp");
        assert.equal(first.delivery?.addressLine, "Church Street 5");
        assert.deepEqual([first.pickupLocation?.lat, first.pickupLocation?.lng], [12.9716, 77.5946]);

        const again = await place(c.token, key);
        assert.equal(again.id, first.id);
        assert.equal(await count(env.db, "orders", { col: "customer_id", val: c.sub }), 1);
        assert.equal(await count(env.db, "idempotency_keys", { col: "customer_id", val: c.sub }), 1);
      });

      it("scopes keys to the customer", async () => {
        const a = await freshCustomer();
        const b = await freshCustomer();
        const key = `shared-${uniqueId()}`;
        const oa = await place(a.token, key);
        const ob = await place(b.token, key);
        assert.notEqual(oa.id, ob.id);
      });

      it("answers ALREADY_EXISTS for the same key with a different request", async () => {
        const c = await freshCustomer();
        const key = `key-${uniqueId()}`;
        await place(c.token, key);
        await expectCode(place(c.token, key, request({ tipMinor: 999n })), Code.AlreadyExists, /idempotency-key/);
        assert.equal(await count(env.db, "orders", { col: "customer_id", val: c.sub }), 1);
      });

      it("requires a bounded idempotency-key header and writes nothing without it", async () => {
        const c = await freshCustomer();
        await expectCode(env.client.placeOrder(request(), auth(c.token)), Code.InvalidArgument, /idempotency-key/);
        await expectCode(env.client.placeOrder(request(), auth(c.token, { "idempotency-key": "k".repeat(129) })), Code.InvalidArgument, /idempotency-key/);
        await expectCode(place(c.token, uniqueId(), { ...request(), lines: [] }), Code.InvalidArgument, /lines/);
        assert.equal(await count(env.db, "orders", { col: "customer_id", val: c.sub }), 0);
        assert.equal(await count(env.db, "idempotency_keys", { col: "customer_id", val: c.sub }), 0);
      });

      it("ignores and replaces an expired key", async () => {
        const c = await freshCustomer();
        const key = `key-${uniqueId()}`;
        const old = await place(c.token, key);
        await (env.db.kysely as Kysely<any>)
          .updateTable("idempotency_keys")
          .set({ expires_at: new Date(Date.now() - 1000) })
          .where("customer_id", "=", c.sub)
          .execute();
        const fresh = await place(c.token, key, request({ tipMinor: 5n }));
        assert.notEqual(fresh.id, old.id);
        assert.equal(await count(env.db, "idempotency_keys", { col: "customer_id", val: c.sub }), 1);
      });

      it("is only for customers", async () => {
        await expectCode(env.client.placeOrder(request(), auth(t.restaurant, { "idempotency-key": "k" })), Code.PermissionDenied);
        await expectCode(env.client.placeOrder(request(), { headers: { "idempotency-key": "k" } }), Code.Unauthenticated);
      });

      it("rate limits placement per customer with RESOURCE_EXHAUSTED", async () => {
        const c = await freshCustomer();
        for (let i = 0; i < PLACE_RATE; i++) await place(c.token);
        await expectCode(place(c.token), Code.ResourceExhausted);
        // Another customer is not affected.
        const other = await freshCustomer();
        await place(other.token);
      });
    });

    describe("the order lifecycle", () => {
      it("goes PLACED to DELIVERED with a timeline and outbox events in sequence", async () => {
        const c = await freshCustomer();
        const o = await place(c.token);
        const r = auth(t.restaurant);
        await env.client.acceptOrder({ orderId: o.id, prepMinutes: 12 }, r);
        await env.client.startPreparing({ orderId: o.id }, r);
        await env.client.assignDriver({ orderId: o.id, driverId: "drv-1", fencingToken: 7n }, auth(t.service));
        await env.client.markReady({ orderId: o.id }, r);
        await env.client.confirmPickup({ orderId: o.id }, auth(t.d1));
        await env.client.markEnRoute({ orderId: o.id }, auth(t.service));
        const done = (await env.client.confirmDelivery({ orderId: o.id }, auth(t.d1))).order!;
        assert.equal(done.status, OrderStatus.DELIVERED);
        assert.equal(done.driverId, "drv-1");
        assert.equal(done.version, 8n);

        const got = (await env.client.getOrder({ orderId: o.id }, auth(c.token))).order!;
        assert.deepEqual(
          got.timeline.map((e, i) => [i + 1, TimelineKind[e.kind], OrderStatus[e.status], ActorRole[e.actor!.role], e.actor!.id, e.driverId]),
          [
            [1, "STATUS", "PLACED", "CUSTOMER", c.sub, ""],
            [2, "STATUS", "CONFIRMED", "RESTAURANT", env.rid, ""],
            [3, "STATUS", "PREPARING", "RESTAURANT", env.rid, ""],
            [4, "DRIVER_ASSIGNED", "PREPARING", "SERVICE", "dispatch", "drv-1"],
            [5, "STATUS", "READY_FOR_PICKUP", "RESTAURANT", env.rid, ""],
            [6, "STATUS", "PICKED_UP", "DRIVER", "drv-1", ""],
            [7, "STATUS", "EN_ROUTE", "SERVICE", "dispatch", ""],
            [8, "STATUS", "DELIVERED", "DRIVER", "drv-1", ""],
          ],
        );
        const events = await outboxEvents(env.db, o.id);
        assert.deepEqual(
          events.map((e) => [Number(e.sequence), e.payload.case, OrderStatus[e.order!.status], Number(e.order!.version)]),
          [
            [1, "placed", "PLACED", 1],
            [2, "confirmed", "CONFIRMED", 2],
            [3, "preparing", "PREPARING", 3],
            [4, "driverAssigned", "PREPARING", 4],
            [5, "ready", "READY_FOR_PICKUP", 5],
            [6, "pickedUp", "PICKED_UP", 6],
            [7, "enRoute", "EN_ROUTE", 7],
            [8, "delivered", "DELIVERED", 8],
          ],
        );
        assert.equal(events[1].payload.case === "confirmed" && events[1].payload.value.prepMinutes, 12);
        assert.equal(events[3].payload.case === "driverAssigned" && events[3].payload.value.fencingToken, 7n);
        assert.equal(events[0].eventId, `${o.id}-1`);
      });

      it("records READY then PICKED_UP when the driver picks up while PREPARING", async () => {
        const { order } = await orderAt("PREPARING", { driver: "drv-pp" });
        const drv = auth(await env.token("driver", "drv-pp"));
        const o = (await env.client.confirmPickup({ orderId: order.id }, drv)).order!;
        assert.equal(o.status, OrderStatus.PICKED_UP);
        const tl = (await env.client.getOrder({ orderId: order.id }, auth(t.ops))).order!.timeline;
        assert.deepEqual(tl.slice(-2).map((e) => OrderStatus[e.status]), ["READY_FOR_PICKUP", "PICKED_UP"]);
        const ev = await outboxEvents(env.db, order.id);
        assert.deepEqual(ev.slice(-2).map((e) => [e.payload.case, OrderStatus[e.order!.status]]), [["ready", "READY_FOR_PICKUP"], ["pickedUp", "PICKED_UP"]]);
        await env.client.confirmDelivery({ orderId: order.id }, drv);
      });

      it("only lets the assigned driver confirm pickup and delivery", async () => {
        const { order } = await orderAt("READY_FOR_PICKUP", { driver: "drv-a" });
        await expectCode(env.client.confirmPickup({ orderId: order.id }, auth(t.d2)), Code.NotFound);
        await expectCode(env.client.confirmPickup({ orderId: order.id }, auth(t.restaurant)), Code.PermissionDenied);
        const drv = auth(await env.token("driver", "drv-a"));
        await env.client.confirmPickup({ orderId: order.id }, drv);
        await expectCode(env.client.confirmDelivery({ orderId: order.id }, auth(t.d2)), Code.NotFound);
        await env.client.confirmDelivery({ orderId: order.id }, drv);
      });

      it("answers a repeated command with the current order", async () => {
        const { order } = await orderAt("PLACED");
        const r = auth(t.restaurant);
        const a1 = (await env.client.acceptOrder({ orderId: order.id }, r)).order!;
        const a2 = (await env.client.acceptOrder({ orderId: order.id }, r)).order!;
        assert.equal(a2.version, a1.version);
        assert.equal(a2.status, OrderStatus.CONFIRMED);
        await env.client.startPreparing({ orderId: order.id }, r);
        const a3 = (await env.client.acceptOrder({ orderId: order.id }, r)).order!;
        assert.equal(a3.status, OrderStatus.PREPARING);
        const history = await count(env.db, "order_status_history", { col: "order_id", val: order.id });
        assert.equal(history, 3);
      });

      it("answers a conflicting command with FAILED_PRECONDITION naming both states", async () => {
        const { order } = await orderAt("CONFIRMED");
        await expectCode(env.client.rejectOrder({ orderId: order.id, reason: "too busy" }, auth(t.restaurant)), Code.FailedPrecondition, /CONFIRMED.*PLACED/);
        await expectCode(env.client.markReady({ orderId: order.id }, auth(t.restaurant)), Code.FailedPrecondition, /CONFIRMED.*PREPARING/);
        await expectCode(env.client.rejectOrder({ orderId: order.id, reason: "" }, auth(t.restaurant)), Code.InvalidArgument, /reason/);
      });
    });

    describe("cancellation", () => {
      it("gives a customer a full refund before PREPARING", async () => {
        const { order, customer } = await orderAt("CONFIRMED");
        const o = (await env.client.cancelOrder({ orderId: order.id, reason: "changed my mind" }, auth(customer.token))).order!;
        assert.equal(o.status, OrderStatus.CANCELLED);
        assert.equal(o.cancellationFee?.amountMinor, 0n);
        assert.equal(o.cancellationReason, "changed my mind");
        assert.equal(ActorRole[o.cancelledBy!.role], "CUSTOMER");
        const again = (await env.client.cancelOrder({ orderId: order.id, reason: "again" }, auth(customer.token))).order!;
        assert.equal(again.version, o.version);
        const last = (await outboxEvents(env.db, order.id)).at(-1)!;
        assert.equal(last.payload.case, "cancelled");
        if (last.payload.case === "cancelled") {
          assert.equal(last.payload.value.previousStatus, OrderStatus.CONFIRMED);
          assert.equal(last.payload.value.fee?.amountMinor, 0n);
        }
      });

      it("keeps the late fee when a customer cancels while PREPARING", async () => {
        const { order, customer } = await orderAt("PREPARING");
        const o = (await env.client.cancelOrder({ orderId: order.id, reason: "" }, auth(customer.token))).order!;
        assert.equal(o.cancellationFee?.amountMinor, 1090n); // 50% of 2180
        const { order: ready, customer: c2 } = await orderAt("READY_FOR_PICKUP");
        const o2 = (await env.client.cancelOrder({ orderId: ready.id }, auth(c2.token))).order!;
        assert.equal(o2.cancellationFee?.amountMinor, 1090n);
      });

      it("refuses a customer cancellation after pickup, and any driver cancellation", async () => {
        const { order, customer } = await orderAt("PICKED_UP", { driver: "drv-c" });
        await expectCode(env.client.cancelOrder({ orderId: order.id }, auth(customer.token)), Code.FailedPrecondition, /PICKED_UP/);
        await expectCode(env.client.cancelOrder({ orderId: order.id }, auth(t.restaurant)), Code.FailedPrecondition, /PICKED_UP/);
        await expectCode(env.client.cancelOrder({ orderId: order.id }, auth(await env.token("driver", "drv-c"))), Code.PermissionDenied);
        const o = (await env.client.cancelOrder({ orderId: order.id, reason: "fraud" }, auth(t.ops))).order!;
        assert.equal(o.status, OrderStatus.CANCELLED);
        assert.equal(o.cancellationFee?.amountMinor, 0n);
      });

      it("lets the restaurant reject a PLACED order", async () => {
        const { order } = await orderAt("PLACED");
        const o = (await env.client.rejectOrder({ orderId: order.id, reason: "out of rice" }, auth(t.restaurant))).order!;
        assert.equal(o.status, OrderStatus.CANCELLED);
        assert.equal(o.cancelledBy?.id, env.rid);
        const last = (await outboxEvents(env.db, order.id)).at(-1)!;
        assert.equal(last.payload.case, "rejected");
      });

      it("releases the driver when the restaurant cancels an assigned order", async () => {
        const { order } = await orderAt("PREPARING", { driver: "drv-rel" });
        assert.equal(order.driverId, "drv-rel");
        const o = (await env.client.cancelOrder({ orderId: order.id, reason: "fire" }, auth(t.restaurant))).order!;
        assert.equal(o.driverId, "");
        assert.equal(o.cancellationFee?.amountMinor, 0n);
        const last = (await outboxEvents(env.db, order.id)).at(-1)!;
        assert.ok(last.payload.case === "cancelled" && last.payload.value.releasedDriverId === "drv-rel");
        const tl = (await env.client.getOrder({ orderId: order.id }, auth(t.ops))).order!.timeline;
        assert.equal(tl.at(-1)!.driverId, "drv-rel");
        // The driver is free for another order.
        const { order: next } = await orderAt("CONFIRMED");
        await env.client.assignDriver({ orderId: next.id, driverId: "drv-rel", fencingToken: 1n }, auth(t.service));
      });
    });

    describe("visibility", () => {
      it("answers NOT_FOUND to anyone who may not see the order", async () => {
        const { order } = await orderAt("CONFIRMED", { driver: "drv-vis" });
        const stranger = await freshCustomer();
        await expectCode(env.client.getOrder({ orderId: order.id }, auth(stranger.token)), Code.NotFound);
        await expectCode(env.client.cancelOrder({ orderId: order.id }, auth(stranger.token)), Code.NotFound);
        await expectCode(env.client.getOrder({ orderId: order.id }, auth(t.otherRestaurant)), Code.NotFound);
        await expectCode(env.client.acceptOrder({ orderId: order.id }, auth(t.otherRestaurant)), Code.NotFound);
        await expectCode(env.client.getOrder({ orderId: order.id }, auth(t.d2)), Code.NotFound);
        await expectCode(env.client.getOrder({ orderId: "ord_missing" }, auth(t.ops)), Code.NotFound);
        for (const tok of [t.restaurant, t.ops, t.service, await env.token("driver", "drv-vis")]) {
          assert.equal((await env.client.getOrder({ orderId: order.id }, auth(tok))).order!.id, order.id);
        }
        await expectCode(env.client.getOrder({ orderId: "" }, auth(t.ops)), Code.InvalidArgument, /order_id/);
      });
    });

    describe("driver assignment", () => {
      it("keeps one active order per driver and honours fencing tokens", async () => {
        const { order: a } = await orderAt("CONFIRMED");
        const { order: b } = await orderAt("CONFIRMED");
        const svc = auth(t.service);
        await env.client.assignDriver({ orderId: a.id, driverId: "drv-busy", fencingToken: 5n }, svc);
        const same = (await env.client.assignDriver({ orderId: a.id, driverId: "drv-busy", fencingToken: 5n }, svc)).order!;
        assert.equal(same.driverId, "drv-busy");
        await expectCode(env.client.assignDriver({ orderId: b.id, driverId: "drv-busy", fencingToken: 1n }, svc), Code.FailedPrecondition, /driver already carries 1 active orders \(limit 1\)/);
        await expectCode(env.client.assignDriver({ orderId: a.id, driverId: "drv-other", fencingToken: 6n }, svc), Code.FailedPrecondition);
        await expectCode(env.client.unassignDriver({ orderId: a.id, driverId: "drv-other", reason: "x" }, svc), Code.FailedPrecondition, /another driver/);
        const un = (await env.client.unassignDriver({ orderId: a.id, driverId: "drv-busy", reason: "no-show" }, svc)).order!;
        assert.equal(un.driverId, "");
        await expectCode(env.client.assignDriver({ orderId: a.id, driverId: "drv-late", fencingToken: 4n }, svc), Code.FailedPrecondition, /fencing/);
        await env.client.assignDriver({ orderId: b.id, driverId: "drv-busy", fencingToken: 1n }, svc);
        await expectCode(env.client.assignDriver({ orderId: a.id, driverId: "drv-x", fencingToken: 1n }, auth(t.restaurant)), Code.PermissionDenied);
        const ev = (await outboxEvents(env.db, a.id)).map((e) => e.payload.case);
        assert.deepEqual(ev.slice(-2), ["driverAssigned", "driverUnassigned"]);
      });

      it("lets a driver carry up to dispatch.stackSize active orders", async () => {
        const driver = `drv-stack-${uniqueId()}`;
        const svc = auth(t.service);
        const orders: Order[] = [];
        for (let i = 0; i < 4; i++) orders.push((await orderAt("CONFIRMED")).order);
        const [a, b, c, d] = orders as [Order, Order, Order, Order];
        const assign = (client: Client<typeof OrderService>, o: Order) => client.assignDriver({ orderId: o.id, driverId: driver, fencingToken: 1n }, svc);

        // stackSize 1 (the default): a second order is refused and nothing is written for it.
        await assign(env.client, a);
        await expectCode(assign(env.client, b), Code.FailedPrecondition, /^driver already carries 1 active orders \(limit 1\)$/);
        const refused = (await env.client.getOrder({ orderId: b.id }, auth(t.ops))).order!;
        assert.equal(refused.driverId, "");
        assert.equal(refused.version, b.version);
        assert.deepEqual((await outboxEvents(env.db, b.id)).map((e) => e.payload.case), ["placed", "confirmed"]);

        // stackSize 2: the second is taken, the third refused.
        const stack2 = await env.orderClient({ stackSize: 2 });
        const second = (await assign(stack2, b)).order!;
        assert.equal(second.driverId, driver);
        await expectCode(assign(stack2, c), Code.FailedPrecondition, /^driver already carries 2 active orders \(limit 2\)$/);
        // The timeline and events of a stacked assignment are those of any assignment.
        const tl = (await env.client.getOrder({ orderId: b.id }, auth(t.ops))).order!.timeline;
        assert.deepEqual(tl.map((e) => [e.kind, e.driverId]), [
          [TimelineKind.STATUS, ""],
          [TimelineKind.STATUS, ""],
          [TimelineKind.DRIVER_ASSIGNED, driver],
        ]);
        assert.deepEqual((await outboxEvents(env.db, b.id)).map((e) => e.payload.case), ["placed", "confirmed", "driverAssigned"]);

        // A closed order frees its slot; a stack-1 service still sees the driver as full.
        await env.client.cancelOrder({ orderId: a.id, reason: "fire" }, auth(t.restaurant));
        await expectCode(assign(env.client, c), Code.FailedPrecondition, /carries 1 active orders \(limit 1\)/);
        assert.equal((await assign(stack2, c)).order!.driverId, driver);
        await expectCode(assign(stack2, d), Code.FailedPrecondition, /carries 2 active orders \(limit 2\)/);
      });
    });

    describe("FlagDispatch", () => {
      it("records the flag once: a timeline entry and a dispatch_flagged event in the order's sequence", async () => {
        const { order, customer } = await orderAt("PREPARING");
        const svc = auth(t.service);
        const flagged = (await env.client.flagDispatch({ orderId: order.id, attempts: 4 }, svc)).order!;
        assert.equal(flagged.status, OrderStatus.PREPARING);
        assert.equal(flagged.version, order.version + 1n);
        assert.ok(flagged.dispatchFlaggedAt && flagged.dispatchFlaggedAt.seconds > 0n);
        assert.equal(order.dispatchFlaggedAt, undefined, "unset before the flag");

        const again = (await env.client.flagDispatch({ orderId: order.id, attempts: 9 }, auth(t.ops))).order!;
        assert.equal(again.version, flagged.version);
        assert.deepEqual(again.dispatchFlaggedAt, flagged.dispatchFlaggedAt);

        const got = (await env.client.getOrder({ orderId: order.id }, auth(customer.token))).order!;
        assert.deepEqual(got.dispatchFlaggedAt, flagged.dispatchFlaggedAt);
        assert.deepEqual(
          got.timeline.map((e, i) => [i + 1, TimelineKind[e.kind], OrderStatus[e.status], ActorRole[e.actor!.role], e.actor!.id]),
          [
            [1, "STATUS", "PLACED", "CUSTOMER", customer.sub],
            [2, "STATUS", "CONFIRMED", "RESTAURANT", env.rid],
            [3, "STATUS", "PREPARING", "RESTAURANT", env.rid],
            [4, "DISPATCH_FLAGGED", "PREPARING", "SERVICE", "dispatch"],
          ],
        );
        const events = await outboxEvents(env.db, order.id);
        assert.deepEqual(events.map((e) => [Number(e.sequence), e.payload.case]), [[1, "placed"], [2, "confirmed"], [3, "preparing"], [4, "dispatchFlagged"]]);
        const ev = events[3]!;
        assert.equal(ev.payload.case === "dispatchFlagged" && ev.payload.value.attempts, 4);
        assert.equal(ev.eventId, `${order.id}-4`);
        assert.deepEqual(ev.order?.dispatchFlaggedAt, flagged.dispatchFlaggedAt);
        const [row] = await (env.db.kysely as Kysely<any>).selectFrom("outbox").select("event_type").where("event_id", "=", ev.eventId).execute();
        assert.equal(row.event_type, "dispatch_flagged");

        // A driver found later is assigned as usual; the flag stays, and the sequence goes on.
        const assigned = (await env.client.assignDriver({ orderId: order.id, driverId: `drv-late-${uniqueId()}`, fencingToken: 2n }, svc)).order!;
        assert.deepEqual(assigned.dispatchFlaggedAt, flagged.dispatchFlaggedAt);
        assert.equal((await outboxEvents(env.db, order.id)).at(-1)!.sequence, 5n);
      });

      it("is for service and ops; others get PERMISSION_DENIED without the order being read", async () => {
        const { order, customer } = await orderAt("CONFIRMED");
        for (const tok of [customer.token, t.restaurant, t.d1, (await freshCustomer()).token]) {
          await expectCode(env.client.flagDispatch({ orderId: order.id, attempts: 1 }, auth(tok)), Code.PermissionDenied);
        }
        await expectCode(env.client.flagDispatch({ orderId: `ord_missing_${uniqueId()}`, attempts: 1 }, auth(t.restaurant)), Code.PermissionDenied);
        await expectCode(env.client.flagDispatch({ orderId: `ord_missing_${uniqueId()}`, attempts: 1 }, auth(t.service)), Code.NotFound);
        await expectCode(env.client.flagDispatch({ orderId: "", attempts: 1 }, auth(t.service)), Code.InvalidArgument, /^order_id/);
        await expectCode(env.client.flagDispatch({ orderId: order.id, attempts: -1 }, auth(t.service)), Code.InvalidArgument, /^attempts/);
        assert.equal((await env.client.getOrder({ orderId: order.id }, auth(t.ops))).order!.dispatchFlaggedAt, undefined);
      });

      it("answers FAILED_PRECONDITION naming the state outside CONFIRMED, PREPARING, READY_FOR_PICKUP or with a driver", async () => {
        const svc = auth(t.service);
        const { order: placed } = await orderAt("PLACED");
        await expectCode(env.client.flagDispatch({ orderId: placed.id, attempts: 1 }, svc), Code.FailedPrecondition, /^order is PLACED; FlagDispatch requires CONFIRMED, PREPARING or READY_FOR_PICKUP$/);
        const { order: held } = await orderAt("READY_FOR_PICKUP", { driver: `drv-held-${uniqueId()}` });
        await expectCode(env.client.flagDispatch({ orderId: held.id, attempts: 1 }, svc), Code.FailedPrecondition, /^order is READY_FOR_PICKUP with a driver assigned/);
        const { order: cancelled, customer } = await orderAt("CONFIRMED");
        await env.client.cancelOrder({ orderId: cancelled.id }, auth(customer.token));
        await expectCode(env.client.flagDispatch({ orderId: cancelled.id, attempts: 1 }, svc), Code.FailedPrecondition, /order is CANCELLED/);
        for (const o of [placed, held, cancelled]) {
          assert.ok(!(await outboxEvents(env.db, o.id)).some((e) => e.payload.case === "dispatchFlagged"));
        }
      });

      it("gives the customer a full refund when cancelling a flagged order while PREPARING or READY_FOR_PICKUP", async () => {
        for (const status of ["PREPARING", "READY_FOR_PICKUP"] as const) {
          const { order, customer } = await orderAt(status);
          await env.client.flagDispatch({ orderId: order.id, attempts: 6 }, auth(t.service));
          const o = (await env.client.cancelOrder({ orderId: order.id, reason: "nobody is coming" }, auth(customer.token))).order!;
          assert.equal(o.status, OrderStatus.CANCELLED);
          assert.equal(o.cancellationFee?.amountMinor, 0n, status);
          const last = (await outboxEvents(env.db, order.id)).at(-1)!;
          assert.ok(last.payload.case === "cancelled" && last.payload.value.fee?.amountMinor === 0n, status);
        }
      });
    });

    describe("ListOrders", () => {
      it("lists a customer's orders newest first with page tokens", async () => {
        const c = await freshCustomer();
        const ids: string[] = [];
        for (let i = 0; i < 5; i++) ids.push((await place(c.token)).id);
        const seen: string[] = [];
        let pageToken = "";
        do {
          const res = await env.client.listOrders({ pageSize: 2, pageToken }, auth(c.token));
          assert.ok(res.orders.length <= 2);
          seen.push(...res.orders.map((o) => o.id));
          pageToken = res.nextPageToken;
        } while (pageToken);
        assert.deepEqual(seen, [...ids].reverse());
        await expectCode(env.client.listOrders({ pageToken: "garbage" }, auth(c.token)), Code.InvalidArgument, /page_token/);
        await expectCode(env.client.listOrders({ pageSize: 101 }, auth(c.token)), Code.InvalidArgument, /page_size/);
      });

      it("lists a restaurant's active orders, and closed ones on request", async () => {
        const { order: open } = await orderAt("PLACED");
        const { order: closed, customer } = await orderAt("PLACED");
        await env.client.cancelOrder({ orderId: closed.id }, auth(customer.token));
        const active = (await env.client.listOrders({ pageSize: 100 }, auth(t.restaurant))).orders.map((o) => o.id);
        assert.ok(active.includes(open.id));
        assert.ok(!active.includes(closed.id));
        const all = (await env.client.listOrders({ pageSize: 100, includeClosed: true }, auth(t.restaurant))).orders.map((o) => o.id);
        assert.ok(all.includes(closed.id));
        await expectCode(env.client.listOrders({ restaurantId: "rst-elsewhere" }, auth(t.restaurant)), Code.PermissionDenied);
        await expectCode(env.client.listOrders({}, auth(t.ops)), Code.InvalidArgument, /restaurant_id/);
        const viaOps = (await env.client.listOrders({ restaurantId: env.rid, pageSize: 100 }, auth(t.ops))).orders.map((o) => o.id);
        assert.ok(viaOps.includes(open.id));
      });
    });

    describe("WatchRestaurantOrders", () => {
      it("sends the open orders first, then every change", async () => {
        const { order: existing } = await orderAt("PLACED");
        const ac = new AbortController();
        const stream = env.client.watchRestaurantOrders({ restaurantId: env.rid }, { ...auth(t.restaurant), signal: ac.signal });
        const it = stream[Symbol.asyncIterator]();
        const next = async (): Promise<WatchRestaurantOrdersResponse> => {
          const r = await Promise.race([it.next(), new Promise<never>((_, rej) => setTimeout(() => rej(new Error("no feed message within 10 s")), 10_000))]);
          assert.ok(!r.done);
          return r.value;
        };
        const snap = await next();
        assert.equal(snap.snapshot, true);
        assert.ok(snap.orders.some((o) => o.id === existing.id && o.status === OrderStatus.PLACED));

        await env.client.acceptOrder({ orderId: existing.id }, auth(t.restaurant));
        const c = await freshCustomer();
        const fresh = await place(c.token);
        const updates: Order[] = [];
        while (!(updates.some((o) => o.id === existing.id && o.status === OrderStatus.CONFIRMED) && updates.some((o) => o.id === fresh.id))) {
          const m = await next();
          assert.equal(m.snapshot, false);
          assert.equal(m.orders.length, 1);
          updates.push(m.orders[0]);
        }
        // Versions only move forward per order.
        const byOrder = new Map<string, bigint>();
        for (const o of updates) {
          assert.ok(o.version > (byOrder.get(o.id) ?? 0n));
          byOrder.set(o.id, o.version);
        }
        ac.abort();
        await it.return?.();
      });

      it("is for the restaurant itself and ops", async () => {
        const consume = async (tok: string, restaurantId: string) => {
          for await (const _ of env.client.watchRestaurantOrders({ restaurantId }, auth(tok))) break;
        };
        await expectCode(consume(t.restaurant, "rst-elsewhere"), Code.PermissionDenied);
        const c = await freshCustomer();
        await expectCode(consume(c.token, env.rid), Code.PermissionDenied);
        await consume(t.ops, env.rid);
      });
    });

    describe("outbox relay", () => {
      it("relays the events to the event log in per-order sequence", async () => {
        const { order } = await orderAt("READY_FOR_PICKUP", { driver: "drv-relay" });
        const group = `test-reader-${uniqueId()}`;
        await env.redis.eventLog.ensureGroup("events:orders", group, "0");
        const got: Event[] = [];
        const deadline = Date.now() + 15_000;
        const types: string[] = [];
        while (got.length < 5 && Date.now() < deadline) {
          const entries = await env.redis.eventLog.readGroup("events:orders", group, "reader", { count: 500, blockMs: 200 });
          for (const e of entries) {
            // Payment events (the capture on acceptance) take sequences in between, asynchronously.
            if (e.key !== order.id || e.type === "payment") continue;
            got.push(fromBinary(EventSchema, e.data));
            types.push(e.type);
          }
          if (entries.length) await env.redis.eventLog.ack("events:orders", group, entries.map((e) => e.id));
        }
        assert.ok(got.every((e, i) => i === 0 || e.sequence > got[i - 1]!.sequence), "per-order sequence increases");
        assert.deepEqual(types, ["placed", "confirmed", "driver_assigned", "preparing", "ready"]);
        assert.ok(got.every((e) => e.orderId === order.id && e.order?.id === order.id));
        // Published rows are marked (the relay commits that right after appending).
        const unpublished = async () =>
          (await (env.db.kysely as Kysely<any>).selectFrom("outbox").select("id").where("event_key", "=", order.id).where("published_at", "is", null).execute()).length;
        const until = Date.now() + 5000;
        while ((await unpublished()) > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
        assert.equal(await unpublished(), 0);
      });
    });
  });
}
