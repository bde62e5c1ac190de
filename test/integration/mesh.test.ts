import assert from "node:assert/strict";
import { Code, ConnectError } from "@connectrpc/connect";
import { CatalogService } from "../../gen/dabba/catalog/v1/catalog_service_pb.js";
import { VehicleType } from "../../gen/dabba/dispatch/v1/dispatch_pb.js";
import { DispatchService } from "../../gen/dabba/dispatch/v1/dispatch_service_pb.js";
import { LocationService } from "../../gen/dabba/location/v1/location_service_pb.js";
import { OrderStatus, type Order } from "../../gen/dabba/order/v1/order_pb.js";
import { OrderService } from "../../gen/dabba/order/v1/order_service_pb.js";
import { TrackingService } from "../../gen/dabba/tracking/v1/tracking_service_pb.js";
import { uniqueId } from "../helpers/backends.js";
import { NEARBY } from "../helpers/fixtures.js";
import { until } from "../helpers/wait.js";
import { CLIENT_KINDS, startTestMesh, type Backend, type ClientKind, type TestMesh } from "../helpers/mesh.js";

/** What a client sees of one order's life, normalised so runs over different clients compare equal. */
interface Journey {
  searchHit: boolean;
  quoteTotal: bigint;
  placedStatus: OrderStatus;
  replaySameId: boolean;
  statuses: OrderStatus[];
  timeline: OrderStatus[];
  feed: { snapshot: boolean; statuses: OrderStatus[] }[];
}

async function journey(t: TestMesh, kind: ClientKind): Promise<Journey> {
  const customer = `cust-${uniqueId()}`;
  const catalog = await t.client(CatalogService, kind, "customer", customer);
  const orders = await t.client(OrderService, kind, "customer", customer);
  const kitchen = await t.client(OrderService, kind, "restaurant", "staff-1", t.restaurantId);

  const search = await catalog.searchRestaurants({ location: NEARBY, query: "dosa", radiusKm: 5 });
  const searchHit = search.results.some((r) => r.restaurant?.id === t.restaurantId);

  const cart = {
    restaurantId: t.restaurantId,
    lines: [
      { itemId: `${t.restaurantId}-biryani`, quantity: 2, optionIds: [`${t.restaurantId}-raita`] },
      { itemId: `${t.restaurantId}-dosa`, quantity: 1 },
    ],
    delivery: { location: NEARBY, addressLine: "12 Church Street" },
    tipMinor: 100n, paymentToken: "tok_visa",
  };
  const quote = await orders.quoteOrder(cart);

  // The restaurant's live feed: snapshot first, then each change of our order.
  const abort = new AbortController();
  const feed: Journey["feed"] = [];
  const feedSeen = new Set<string>();
  const feedDone = (async () => {
    try {
      for await (const msg of kitchen.watchRestaurantOrders({ restaurantId: t.restaurantId }, { signal: abort.signal })) {
        const mine = msg.orders.filter((o) => o.customerId === customer);
        if (msg.snapshot || mine.length > 0) feed.push({ snapshot: msg.snapshot, statuses: mine.map((o) => o.status) });
        for (const o of mine) feedSeen.add(OrderStatus[o.status]);
      }
    } catch (err) {
      if (!(err instanceof ConnectError && err.code === Code.Canceled)) throw err;
    }
  })();
  await until(() => feed.length > 0, 10_000, "feed snapshot");

  const key = `key-${uniqueId()}`;
  const placed = await orders.placeOrder(cart, { headers: { "idempotency-key": key } });
  const replay = await orders.placeOrder(cart, { headers: { "idempotency-key": key } });
  const id = placed.order!.id;
  const statuses: OrderStatus[] = [];
  const step = async (o: Promise<{ order?: Order }>) => statuses.push((await o).order!.status);
  await step(kitchen.acceptOrder({ orderId: id }));
  await step(kitchen.startPreparing({ orderId: id }));
  await step(kitchen.markReady({ orderId: id }));
  const got = await orders.getOrder({ orderId: id });
  await until(() => feedSeen.has("READY_FOR_PICKUP"), 10_000, "feed update READY_FOR_PICKUP");
  abort.abort();
  await feedDone;

  return {
    searchHit,
    quoteTotal: quote.total!.amountMinor,
    placedStatus: placed.order!.status,
    replaySameId: replay.order!.id === id,
    statuses,
    timeline: got.order!.timeline.map((e) => e.status),
    feed: feed.map((f) => ({ snapshot: f.snapshot, statuses: f.snapshot ? [] : f.statuses })),
  };
}

for (const backend of ["embedded", "real"] as Backend[]) {
  describe(`dabba over real listeners (${backend} storage)`, function () {
    this.timeout(60_000);
    let t: TestMesh;
    before(async function () {
      t = await startTestMesh(backend);
    });
    after(async () => t?.close());

    const results = new Map<ClientKind, Journey>();
    for (const kind of CLIENT_KINDS) {
      it(`searches, quotes, places idempotently and follows an order through the kitchen (${kind})`, async () => {
        const j = await journey(t, kind);
        results.set(kind, j);
        assert.equal(j.searchHit, true);
        assert.equal(j.placedStatus, OrderStatus.PLACED);
        assert.equal(j.replaySameId, true);
        assert.deepEqual(j.statuses, [OrderStatus.CONFIRMED, OrderStatus.PREPARING, OrderStatus.READY_FOR_PICKUP]);
        assert.deepEqual(j.timeline, [OrderStatus.PLACED, OrderStatus.CONFIRMED, OrderStatus.PREPARING, OrderStatus.READY_FOR_PICKUP]);
        assert.equal(j.feed[0].snapshot, true);
        // 2 x (1200 + 80) + 450 = 3010 subtotal; tip, tax and fee on top.
        assert.ok(j.quoteTotal > 3010n);
      });
    }

    it("gives the same results over grpc-js, Connect gRPC, Connect and gRPC-web", () => {
      assert.equal(results.size, CLIENT_KINDS.length, "every client journey ran");
      const [first, ...rest] = [...results.values()];
      for (const r of rest) assert.deepEqual(r, first);
    });

    for (const kind of CLIENT_KINDS) {
      it(`serves DispatchService unary and streaming calls and the notification inbox (${kind})`, async () => {
        const dispatch = await t.client(DispatchService, kind, "driver", `d-${uniqueId()}`);
        assert.equal((await dispatch.goOnline({ city: "bengaluru", vehicleType: VehicleType.SCOOTER })).online, true);
        // An offer stream of a driver without offers stays open until the caller leaves.
        const abort = new AbortController();
        const opened = (async () => {
          for await (const _ of dispatch.streamOffers({}, { signal: abort.signal })) break;
        })();
        setTimeout(() => abort.abort(), 200);
        await assert.rejects(opened, (e: ConnectError) => e.code === Code.Canceled);
        const tracking = await t.client(TrackingService, kind, "customer", "c1");
        const inbox = await tracking.listNotifications({});
        assert.deepEqual(inbox.notifications, []);
      });

      if (kind === "grpc-js" || kind === "connect-grpc") {
        it(`carries a client stream and answers with its summary (${kind})`, async () => {
          const location = await t.client(LocationService, kind, "driver", `d-${uniqueId()}`);
          async function* pings() {
            yield { pings: [{ location: NEARBY, accuracyM: 5 }] };
          }
          const summary = await location.reportLocations(pings());
          assert.equal(summary.accepted, 0n);
          assert.deepEqual({ ...summary.rejectedByReason }, { missing_field: 1n });
        });
      }

      it(`refuses calls without a token (${kind})`, async () => {
        const { createClient } = await import("@connectrpc/connect");
        const anon = createClient(CatalogService, t.transport(kind));
        await assert.rejects(anon.getMenu({ restaurantId: t.restaurantId }), (e: ConnectError) => e.code === Code.Unauthenticated);
      });
    }
  });
}
