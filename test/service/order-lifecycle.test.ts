import assert from "node:assert/strict";
import { Code } from "@connectrpc/connect";
import { AnswerPolicy } from "../../gen/dabba/catalog/v1/catalog_pb.js";
import { CatalogService } from "../../gen/dabba/catalog/v1/catalog_service_pb.js";
import { ActorRole } from "../../gen/dabba/common/v1/common_pb.js";
import { OrderStatus, type Order } from "../../gen/dabba/order/v1/order_pb.js";
import { OrderService } from "../../gen/dabba/order/v1/order_service_pb.js";
import { createCatalogStore } from "../../services/catalog/store.js";
import { defaultOrderConfig, parseCityPricing } from "../../services/platform/config.js";
import { uniqueId } from "../helpers/backends.js";
import { expectCode } from "../helpers/expect.js";
import { NEARBY, fixtureRestaurant } from "../helpers/fixtures.js";
import { startTestMesh, type Backend, type TestMesh } from "../helpers/mesh.js";
import { sleep, until } from "../helpers/wait.js";

/** The platform default answer time in these tests (a restaurant's own is 30 s at least). */
const DEFAULT_ANSWER_S = 1.5;

for (const backend of ["embedded", "real"] as Backend[]) {
  describe(`order lifecycle policies (${backend === "embedded" ? "PGlite + in-process redis" : "Postgres + Redis"})`, function () {
    this.timeout(60_000);
    let t: TestMesh;
    /** A second restaurant in another city, priced by ORDERS_CITY_PRICING. */
    const mysoreRid = `rst-mysore-${uniqueId()}`;

    before(async function () {
      t = await startTestMesh(backend, {
        orders: {
          ...defaultOrderConfig,
          answerTimeoutS: DEFAULT_ANSWER_S,
          answerPolicy: "auto_reject",
          cityPricing: parseCityPricing(JSON.stringify({ mysuru: { taxBps: 1200, deliveryBaseFeeMinor: 900, deliveryPerKmMinor: 0 } })),
        },
      });
      await createCatalogStore(t.mesh.db).insertRestaurants([fixtureRestaurant(mysoreRid, { city: "mysuru" })]);
    });
    after(async () => {
      await t?.close();
    });

    const cart = (rid: string) => ({
      restaurantId: rid,
      lines: [{ itemId: `${rid}-dosa`, quantity: 2 }],
      delivery: { location: NEARBY, addressLine: "12 Church Street" },
      tipMinor: 0n,
      paymentToken: "tok_approve",
    });

    async function place(rid: string): Promise<{ order: Order; customer: string }> {
      const customer = `cust-${uniqueId()}`;
      const orders = await t.client(OrderService, "connect-grpc", "customer", customer);
      const { order } = await orders.placeOrder(cart(rid), { headers: { "idempotency-key": uniqueId() } });
      return { order: order!, customer };
    }

    async function waitFor(orderId: string, status: OrderStatus, ms = 15_000): Promise<Order> {
      const ops = await t.client(OrderService, "connect-grpc", "ops", "op-1");
      let got: Order | undefined;
      await until(async () => {
        got = (await ops.getOrder({ orderId })).order;
        return got?.status === status;
      }, ms, `order ${orderId} ${OrderStatus[status]}`);
      return got!;
    }

    it("auto-rejects an order its restaurant did not answer, by the platform default, with the reason on the order", async () => {
      const { order } = await place(t.restaurantId);
      assert.equal(order.status, OrderStatus.PLACED);
      assert.ok(order.restaurantAnswerBy, "a PLACED order shows when it must be answered");
      const waited = Number(order.restaurantAnswerBy.seconds) - Number(order.createdAt!.seconds);
      assert.ok(waited >= 1 && waited <= 2, `answer_by is the default answer time after placement (${waited} s)`);
      const done = await waitFor(order.id, OrderStatus.CANCELLED);
      assert.equal(done.cancelledBy?.role, ActorRole.SERVICE);
      assert.equal(done.cancelledBy?.id, "answer-timer");
      assert.match(done.cancellationReason, /restaurant did not answer within \d+ s/);
      assert.equal(done.restaurantAnswerBy, undefined, "only a PLACED order shows an answer deadline");
    });

    it("auto-confirms for a restaurant whose policy says so, and SetAnswerPolicy is the restaurant's own", async () => {
      const kitchen = await t.client(CatalogService, "connect-grpc", "restaurant", "staff-1", t.restaurantId);
      const other = await t.client(CatalogService, "connect-grpc", "restaurant", "staff-2", "rst-somewhere-else");
      await expectCode(other.setAnswerPolicy({ restaurantId: t.restaurantId, answerPolicy: AnswerPolicy.AUTO_CONFIRM }), Code.PermissionDenied);
      await expectCode(kitchen.setAnswerPolicy({ restaurantId: t.restaurantId, answerPolicy: AnswerPolicy.AUTO_CONFIRM, answerTimeoutSeconds: 5 }), Code.InvalidArgument);
      await expectCode(kitchen.setAnswerPolicy({ restaurantId: t.restaurantId, answerPolicy: 7 as AnswerPolicy }), Code.InvalidArgument);
      const { restaurant } = await kitchen.setAnswerPolicy({ restaurantId: t.restaurantId, answerPolicy: AnswerPolicy.AUTO_CONFIRM });
      assert.equal(restaurant?.answerPolicy, AnswerPolicy.AUTO_CONFIRM);
      assert.equal(restaurant?.answerTimeoutSeconds, 0, "0 = the platform default time");
      try {
        const { order } = await place(t.restaurantId);
        const done = await waitFor(order.id, OrderStatus.CONFIRMED);
        const confirmed = done.timeline.find((e) => e.status === OrderStatus.CONFIRMED);
        assert.equal(confirmed?.actor?.role, ActorRole.SERVICE);
        assert.equal(confirmed?.actor?.id, "answer-timer");
      } finally {
        await kitchen.setAnswerPolicy({ restaurantId: t.restaurantId, answerPolicy: AnswerPolicy.UNSPECIFIED });
      }
    });

    it("leaves an order the restaurant answered in time alone", async () => {
      const { order } = await place(t.restaurantId);
      const kitchen = await t.client(OrderService, "connect-grpc", "restaurant", "staff-1", t.restaurantId);
      await kitchen.acceptOrder({ orderId: order.id, prepMinutes: 10 });
      // Past the deadline and then some: the timer ran and found nothing to do.
      await sleep((DEFAULT_ANSWER_S + 2) * 1000);
      const after = await waitFor(order.id, OrderStatus.CONFIRMED, 1000);
      assert.equal(after.timeline.filter((e) => e.status === OrderStatus.CANCELLED).length, 0);
      assert.equal(after.timeline.find((e) => e.status === OrderStatus.CONFIRMED)?.actor?.role, ActorRole.RESTAURANT);
    });

    it("prices tax and delivery fee by the restaurant's city", async () => {
      const customer = `cust-${uniqueId()}`;
      const orders = await t.client(OrderService, "connect-grpc", "customer", customer);
      const home = await orders.quoteOrder(cart(t.restaurantId));
      const mysuru = await orders.quoteOrder(cart(mysoreRid));
      const sub = Number(mysuru.subtotal!.amountMinor);
      assert.equal(Number(home.subtotal!.amountMinor), sub, "the same dishes cost the same");
      assert.equal(Number(mysuru.tax!.amountMinor), Math.round((sub * 1200) / 10_000), "mysuru's 12% tax");
      assert.equal(Number(mysuru.deliveryFee!.amountMinor), 900, "mysuru's flat delivery fee");
      assert.equal(Number(home.tax!.amountMinor), Math.round((sub * defaultOrderConfig.taxBps) / 10_000), "elsewhere the platform's tax");
      assert.notEqual(Number(home.deliveryFee!.amountMinor), 900);
      const catalog = await t.client(CatalogService, "connect-grpc", "customer", customer);
      const found = await catalog.searchRestaurants({ location: NEARBY, radiusKm: 20 });
      const hit = found.results.find((r) => r.restaurant?.id === mysoreRid);
      assert.equal(Number(hit?.deliveryFee?.amountMinor), 900, "search shows the city's fee too");
    });
  });
}
