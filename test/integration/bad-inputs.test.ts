import assert from "node:assert/strict";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { SignJWT } from "jose";
import { sql } from "kysely";
import { CatalogService } from "../../gen/dabba/catalog/v1/catalog_service_pb.js";
import { OrderService } from "../../gen/dabba/order/v1/order_service_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { PlaceOrderRequestSchema } from "../../gen/dabba/order/v1/order_service_pb.js";
import { createCatalogStore } from "../../services/catalog/store.js";
import { mintToken } from "../../services/platform/auth.js";
import { uniqueId } from "../helpers/backends.js";
import { NEARBY, fixtureRestaurant } from "../helpers/fixtures.js";
import { startTestMesh, type Backend, type TestMesh } from "../helpers/mesh.js";

type Cart = MessageInitShape<typeof PlaceOrderRequestSchema>;

/** Row counts of everything a bad call could have written. */
async function footprint(t: TestMesh): Promise<Record<string, number>> {
  const k = t.mesh.db.kysely;
  const count = async (table: string) => Number((await sql<{ n: string }>`select count(*) as n from ${sql.table(table)}`.execute(k)).rows[0].n);
  const versions = await sql<{ v: string }>`select coalesce(sum(version), 0) as v from orders`.execute(k);
  const available = await sql<{ n: string }>`select count(*) as n from catalog_items where available`.execute(k);
  const open = await sql<{ n: string }>`select count(*) as n from catalog_restaurants where is_open`.execute(k);
  return {
    orders: await count("orders"),
    history: await count("order_status_history"),
    idempotency: await count("idempotency_keys"),
    outbox: await count("outbox"),
    versions: Number(versions.rows[0].v),
    availableItems: Number(available.rows[0].n),
    openRestaurants: Number(open.rows[0].n),
  };
}

for (const backend of ["real", "embedded"] as Backend[]) {
  describe(`bad input gets a clear status and writes nothing (${backend} storage, grpc-js client)`, function () {
    this.timeout(60_000);
    let t: TestMesh;
    let otherRid: string;
    let existingOrderId: string;
    const owner = `cust-${uniqueId()}`;
    const cart = (over: Partial<Cart> = {}): Cart => ({
      restaurantId: t.restaurantId,
      lines: [{ itemId: `${t.restaurantId}-dosa`, quantity: 1 }],
      delivery: { location: NEARBY, addressLine: "1 Church Street" },
      paymentToken: "tok_visa",
      ...over,
    }) as Cart;

    before(async () => {
      t = await startTestMesh(backend);
      otherRid = `r-${uniqueId()}`;
      await createCatalogStore(t.mesh.db).insertRestaurants([fixtureRestaurant(otherRid), fixtureRestaurant(`${otherRid}-closed`, { isOpen: false })]);
      const orders = await t.client(OrderService, "grpc-js", "customer", owner);
      existingOrderId = (await orders.placeOrder(cart(), { headers: { "idempotency-key": `k-${uniqueId()}` } })).order!.id;
    });
    after(async () => t?.close());

    const place = (c: Cart, role: "customer" | "driver" = "customer", sub = `cust-${uniqueId()}`) => async () =>
      (await t.client(OrderService, "grpc-js", role, sub)).placeOrder(c, { headers: { "idempotency-key": `k-${uniqueId()}` } });

    const cases: { name: string; code: Code; field?: RegExp; call: () => () => Promise<unknown> }[] = [
      { name: "NaN latitude", code: Code.InvalidArgument, field: /delivery\.location\.lat/, call: () => place(cart({ delivery: { location: { lat: NaN, lng: 77.6 } } })) },
      { name: "latitude 91", code: Code.InvalidArgument, field: /lat/, call: () => place(cart({ delivery: { location: { lat: 91, lng: 77.6 } } })) },
      { name: "longitude -181", code: Code.InvalidArgument, field: /lng/, call: () => place(cart({ delivery: { location: { lat: 12.9, lng: -181 } } })) },
      { name: "infinite longitude in search", code: Code.InvalidArgument, field: /location/, call: () => async () => (await t.client(CatalogService, "grpc-js", "customer", "c")).searchRestaurants({ location: { lat: 12.9, lng: Infinity } }) },
      { name: "missing delivery location", code: Code.InvalidArgument, field: /delivery/, call: () => place(cart({ delivery: { addressLine: "x" } })) },
      { name: "empty cart", code: Code.InvalidArgument, field: /lines/, call: () => place(cart({ lines: [] })) },
      { name: "unknown item", code: Code.InvalidArgument, field: /lines\[0\]\.item_id/, call: () => place(cart({ lines: [{ itemId: "no-such-item", quantity: 1 }] })) },
      { name: "another restaurant's item", code: Code.InvalidArgument, field: /lines\[1\]\.item_id/, call: () => place(cart({ lines: [{ itemId: `${t.restaurantId}-dosa`, quantity: 1 }, { itemId: `${otherRid}-dosa`, quantity: 1 }] })) },
      { name: "quantity 0", code: Code.InvalidArgument, field: /lines\[0\]\.quantity/, call: () => place(cart({ lines: [{ itemId: `${t.restaurantId}-dosa`, quantity: 0 }] })) },
      { name: "quantity a million", code: Code.InvalidArgument, field: /lines\[0\]\.quantity/, call: () => place(cart({ lines: [{ itemId: `${t.restaurantId}-dosa`, quantity: 1_000_000 }] })) },
      { name: "option of another item", code: Code.InvalidArgument, field: /option/, call: () => place(cart({ lines: [{ itemId: `${t.restaurantId}-dosa`, quantity: 1, optionIds: [`${t.restaurantId}-raita`] }] })) },
      { name: "negative tip", code: Code.InvalidArgument, field: /tip/, call: () => place(cart({ tipMinor: -5n })) },
      { name: "address longer than 200 characters", code: Code.InvalidArgument, field: /address/, call: () => place(cart({ delivery: { location: NEARBY, addressLine: "x".repeat(201) } })) },
      { name: "oversized message beyond the configured limit", code: Code.ResourceExhausted, call: () => place(cart({ delivery: { location: NEARBY, instructions: "x".repeat(t.config.maxMessageBytes + 1) } })) },
      { name: "closed restaurant", code: Code.FailedPrecondition, field: /closed/i, call: () => place(cart({ restaurantId: `${otherRid}-closed`, lines: [{ itemId: `${otherRid}-closed-dosa`, quantity: 1 }] })) },
      { name: "unknown restaurant", code: Code.NotFound, call: () => place(cart({ restaurantId: "no-such-restaurant" })) },
      {
        name: "missing idempotency-key header",
        code: Code.InvalidArgument,
        field: /idempotency-key/,
        call: () => async () => (await t.client(OrderService, "grpc-js", "customer", "c")).placeOrder(cart()),
      },
      { name: "missing token", code: Code.Unauthenticated, call: () => () => createClient(OrderService, t.transport("grpc-js")).placeOrder(cart(), { headers: { "idempotency-key": "k" } }) },
      {
        name: "forged token (signed with another secret)",
        code: Code.Unauthenticated,
        call: () => async () => {
          const forged = await mintToken({ ...t.config.auth, hsSecret: "another-secret-another-secret-another" }, { role: "ops", sub: "mallory" });
          return createClient(OrderService, t.transport("grpc-js")).placeOrder(cart(), { headers: { "idempotency-key": "k", authorization: `Bearer ${forged}` } });
        },
      },
      {
        name: "unsigned token (alg none)",
        code: Code.Unauthenticated,
        call: () => async () => {
          const body = Buffer.from(JSON.stringify({ sub: "mallory", role: "ops", iss: "dabba", aud: "dabba", exp: 9999999999 })).toString("base64url");
          const none = `${Buffer.from('{"alg":"none"}').toString("base64url")}.${body}.`;
          return createClient(OrderService, t.transport("grpc-js")).placeOrder(cart(), { headers: { "idempotency-key": "k", authorization: `Bearer ${none}` } });
        },
      },
      {
        name: "expired token",
        code: Code.Unauthenticated,
        call: () => async () => {
          const expired = await mintToken(t.config.auth, { role: "customer", sub: "c-old" }, -3600);
          return createClient(OrderService, t.transport("grpc-js")).placeOrder(cart(), { headers: { "idempotency-key": "k", authorization: `Bearer ${expired}` } });
        },
      },
      {
        name: "token without a role",
        code: Code.Unauthenticated,
        call: () => async () => {
          const noRole = await new SignJWT({}).setProtectedHeader({ alg: "HS256" }).setSubject("x").setIssuer("dabba").setAudience("dabba").setExpirationTime("1h").sign(new TextEncoder().encode(t.config.auth.hsSecret!));
          return createClient(OrderService, t.transport("grpc-js")).placeOrder(cart(), { headers: { "idempotency-key": "k", authorization: `Bearer ${noRole}` } });
        },
      },
      { name: "wrong role (a driver placing an order)", code: Code.PermissionDenied, call: () => place(cart(), "driver", "d1") },
      {
        name: "another customer's order (GetOrder) does not reveal it exists",
        code: Code.NotFound,
        call: () => async () => (await t.client(OrderService, "grpc-js", "customer", "someone-else")).getOrder({ orderId: existingOrderId }),
      },
      {
        name: "another customer's order (CancelOrder)",
        code: Code.NotFound,
        call: () => async () => (await t.client(OrderService, "grpc-js", "customer", "someone-else")).cancelOrder({ orderId: existingOrderId, reason: "mine now" }),
      },
      {
        name: "another restaurant accepting the order",
        code: Code.NotFound,
        call: () => async () => (await t.client(OrderService, "grpc-js", "restaurant", "staff", otherRid)).acceptOrder({ orderId: existingOrderId }),
      },
      {
        name: "a driver who is not assigned confirming pickup",
        code: Code.NotFound,
        call: () => async () => (await t.client(OrderService, "grpc-js", "driver", "d-x")).confirmPickup({ orderId: existingOrderId }),
      },
      {
        name: "customer confirming delivery of a PLACED order",
        code: Code.PermissionDenied,
        call: () => async () => (await t.client(OrderService, "grpc-js", "customer", owner)).confirmDelivery({ orderId: existingOrderId }),
      },
      {
        name: "restaurant changing another restaurant's menu",
        code: Code.PermissionDenied,
        call: () => async () => (await t.client(CatalogService, "grpc-js", "restaurant", "staff", otherRid)).setItemAvailability({ restaurantId: t.restaurantId, itemId: `${t.restaurantId}-dosa`, available: false }),
      },
      {
        name: "restaurant closing another restaurant",
        code: Code.PermissionDenied,
        call: () => async () => (await t.client(CatalogService, "grpc-js", "restaurant", "staff", otherRid)).setRestaurantOpen({ restaurantId: t.restaurantId, isOpen: false }),
      },
      { name: "unknown order id", code: Code.NotFound, call: () => async () => (await t.client(OrderService, "grpc-js", "ops", "op")).getOrder({ orderId: "ord-does-not-exist" }) },
    ];

    for (const c of cases) {
      it(`${c.name} -> ${Code[c.code]}`, async () => {
        const before = await footprint(t);
        await assert.rejects(c.call()(), (e: unknown) => {
          assert.ok(e instanceof ConnectError, `expected a ConnectError, got ${e}`);
          assert.equal(Code[e.code], Code[c.code], e.rawMessage);
          if (c.field) assert.match(e.rawMessage, c.field);
          assert.doesNotMatch(e.rawMessage, /\n\s+at |node_modules|\.ts:\d+/, "no stack trace leaks");
          return true;
        });
        assert.deepEqual(await footprint(t), before, "nothing was written");
      });
    }
  });
}
