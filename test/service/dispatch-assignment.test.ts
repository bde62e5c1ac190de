import assert from "node:assert/strict";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import { OfferOutcome } from "../../gen/dabba/dispatch/v1/dispatch_pb.js";
import { DispatchService } from "../../gen/dabba/dispatch/v1/dispatch_service_pb.js";
import { OrderStatus, TimelineKind } from "../../gen/dabba/order/v1/order_pb.js";
import { OrderService } from "../../gen/dabba/order/v1/order_service_pb.js";
import { testConfig } from "../../services/platform/config.js";
import { uniqueId } from "../helpers/backends.js";
import { RESTAURANT, dispatchScope, eventually, offerFor, type DispatchScope, type TestDriver } from "../helpers/dispatch.js";
import { expectCode } from "../helpers/expect.js";
import { startTestMesh, type Backend, type TestMesh } from "../helpers/mesh.js";
import { offsetMetres } from "../helpers/push-stream.js";
import { sleep, until } from "../helpers/wait.js";

const base = testConfig().dispatch;

for (const backend of ["embedded", "real"] as Backend[]) {
  const label = backend === "embedded" ? "PGlite + in-process redis" : "Postgres + Redis";

  describe(`DispatchService assignments (${label})`, function () {
    this.timeout(60_000);
    let tm: TestMesh;
    let t: DispatchScope;

    before(async () => {
      // Offers last longer than the steps of a test, so a driver offered again before the old
      // offer's expiry shows the lock was released, not that it lapsed.
      tm = await startTestMesh(backend, { dispatch: { ...base, offerTtlMs: 5000, leaseCheckMs: 1000, retryMs: 300 } });
    });
    beforeEach(async () => {
      t = await dispatchScope(tm);
    });
    afterEach(async () => t?.cleanup());
    after(async () => tm?.close());

    /** The nearest driver is offered the order and accepts it. */
    async function assigned(d: TestDriver, prepMinutes = 10) {
      const order = await t.order(prepMinutes);
      const offer = await offerFor(d, order.id);
      const res = await d.dispatch.acceptOffer({ offerId: offer.offerId, fencingToken: offer.fencingToken });
      assert.equal(res.order?.driverId, d.id);
      return { order, offer };
    }

    describe("ReleaseAssignment", () => {
      it("unassigns the order and offers it to another driver, not to the one who released it", async () => {
        const a = await t.driver(offsetMetres(RESTAURANT, 300, 0));
        const b = await t.driver(offsetMetres(RESTAURANT, 1000, 0));
        const { order } = await assigned(a);
        await a.dispatch.releaseAssignment({ orderId: order.id, reason: "flat tyre" });
        const o = await t.getOrder(order.id);
        assert.equal(o.driverId, "");
        const gone = o.timeline.filter((e) => e.kind === TimelineKind.DRIVER_UNASSIGNED);
        assert.equal(gone.length, 1);
        assert.equal(gone[0]!.driverId, a.id);
        assert.match(gone[0]!.reason, /released.*flat tyre/);

        await offerFor(b, order.id);
        assert.equal(a.offersFor(order.id).length, 1, "the releaser is not offered it again");
        // A repeated release answers OK and changes nothing.
        await a.dispatch.releaseAssignment({ orderId: order.id, reason: "" });
        // The releaser is free: the next order (b is held by an open offer) comes to them.
        const next = await t.order();
        await offerFor(a, next.id);
      });

      it("answers a driver who is not assigned to the order with NOT_FOUND", async () => {
        const a = await t.driver(offsetMetres(RESTAURANT, 300, 0));
        const { order } = await assigned(a);
        const stranger = await tm.client(DispatchService, "connect-grpc", "driver", `drv-${uniqueId()}`);
        await expectCode(stranger.releaseAssignment({ orderId: order.id, reason: "" }), Code.NotFound);
        await expectCode(a.dispatch.releaseAssignment({ orderId: `ord-${uniqueId()}`, reason: "" }), Code.NotFound);
        assert.equal((await t.getOrder(order.id)).driverId, a.id);
      });

      it("refuses a release after ConfirmPickup with FAILED_PRECONDITION", async () => {
        const a = await t.driver(offsetMetres(RESTAURANT, 300, 0));
        const { order } = await assigned(a);
        await t.parties.restaurant.startPreparing({ orderId: order.id });
        const driverOrders = await tm.client(OrderService, "connect-grpc", "driver", a.id);
        const picked = await driverOrders.confirmPickup({ orderId: order.id });
        assert.equal(picked.order?.status, OrderStatus.PICKED_UP);
        await expectCode(a.dispatch.releaseAssignment({ orderId: order.id, reason: "changed my mind" }), Code.FailedPrecondition);
        const o = await t.getOrder(order.id);
        assert.equal(o.driverId, a.id);
        assert.equal(o.status, OrderStatus.PICKED_UP);
      });
    });

    describe("cancellation", () => {
      it("withdraws an open offer when the customer cancels, refuses its accept and frees the driver", async () => {
        const a = await t.driver(offsetMetres(RESTAURANT, 300, 0));
        const b = await t.driver(offsetMetres(RESTAURANT, 1000, 0));
        const order = await t.order();
        const offer = await offerFor(a, order.id);
        await t.parties.customer.cancelOrder({ orderId: order.id, reason: "ordered twice" });
        await until(() => a.withdrawn().includes(offer.offerId), 5000, "withdrawn_offer_id");
        const st = await t.state(order.id);
        assert.deepEqual(st.offers.map((x) => x.outcome), [OfferOutcome.WITHDRAWN]);
        await expectCode(a.dispatch.acceptOffer({ offerId: offer.offerId, fencingToken: offer.fencingToken }), Code.FailedPrecondition);
        assert.equal((await t.getOrder(order.id)).driverId, "");

        const next = await t.order();
        const again = await offerFor(a, next.id);
        // Offered while the withdrawn offer's lock would still have held: it was released.
        assert.ok(timestampMs(again.expiresAt!) - 5000 < timestampMs(offer.expiresAt!), "lock released, not lapsed");
        assert.equal(b.offersFor(order.id).length, 0, "a cancelled order goes to nobody");
        assert.equal(b.offersFor(next.id).length, 0);
      });

      it("releases the assigned driver when the order is cancelled, so they can be offered a new one", async () => {
        const a = await t.driver(offsetMetres(RESTAURANT, 300, 0));
        const b = await t.driver(offsetMetres(RESTAURANT, 1000, 0));
        const { order } = await assigned(a);
        await t.parties.customer.cancelOrder({ orderId: order.id, reason: "too slow" });
        const next = await t.order();
        await offerFor(a, next.id);
        assert.equal(b.offersFor(next.id).length, 0);
      });
    });

    describe("pull model", () => {
      const point = offsetMetres(RESTAURANT, 1000, 0);

      it("lists a searching order near a point to an online driver, with distance, restaurant and earnings", async () => {
        // Online without a position: dispatch cannot offer it, so the order stays available.
        const d = await t.driver(null);
        const order = await t.order();
        let found: Awaited<ReturnType<typeof d.dispatch.listAvailableDeliveries>>["deliveries"][number] | undefined;
        await eventually(async () => {
          found = (await d.dispatch.listAvailableDeliveries({ location: point, radiusKm: 5 })).deliveries.find((x) => x.orderId === order.id);
          return found !== undefined;
        }, 5000, "order listed");
        assert.ok(found!.distanceKm > 0.95 && found!.distanceKm < 1.05, `distance ${found!.distanceKm}`);
        assert.equal(found!.restaurantName, order.restaurantName);
        assert.ok(Math.abs(found!.pickup!.lat - RESTAURANT.lat) < 1e-6 && Math.abs(found!.pickup!.lng - RESTAURANT.lng) < 1e-6);
        assert.ok(found!.estimatedEarnings!.amountMinor > 0n);
        assert.equal(found!.estimatedEarnings!.currency, order.total?.currency);
        // Outside a smaller radius it is not listed.
        const near = await d.dispatch.listAvailableDeliveries({ location: point, radiusKm: 0.5 });
        assert.ok(!near.deliveries.some((x) => x.orderId === order.id));
      });

      it("refuses the list to an offline driver with FAILED_PRECONDITION and a bad radius with INVALID_ARGUMENT", async () => {
        const never = await tm.client(DispatchService, "connect-grpc", "driver", `drv-${uniqueId()}`);
        await expectCode(never.listAvailableDeliveries({ location: point, radiusKm: 5 }), Code.FailedPrecondition);
        const gone = await t.driver(null);
        await gone.dispatch.goOffline({});
        await expectCode(gone.dispatch.listAvailableDeliveries({ location: point, radiusKm: 5 }), Code.FailedPrecondition);
        const on = await t.driver(null);
        for (const radiusKm of [-1, 25, Number.NaN]) {
          await expectCode(on.dispatch.listAvailableDeliveries({ location: point, radiusKm }), Code.InvalidArgument, /radius_km/);
        }
        await expectCode(on.dispatch.listAvailableDeliveries({ radiusKm: 5 }), Code.InvalidArgument, /location/);
      });

      it("assigns a claimed delivery to the claimer and refuses a second claim by another driver", async () => {
        const first = await t.driver(null);
        const second = await t.driver(null);
        const order = await t.order();
        const res = await first.dispatch.claimDelivery({ orderId: order.id });
        assert.equal(res.order?.driverId, first.id);
        assert.equal((await t.getOrder(order.id)).driverId, first.id);
        // A repeated claim by the holder answers with the order.
        assert.equal((await first.dispatch.claimDelivery({ orderId: order.id })).order?.driverId, first.id);
        await expectCode(second.dispatch.claimDelivery({ orderId: order.id }), Code.FailedPrecondition);
        const o = await t.getOrder(order.id);
        assert.equal(o.driverId, first.id);
        assert.equal(o.timeline.filter((e) => e.kind === TimelineKind.DRIVER_ASSIGNED).length, 1);
        const list = await second.dispatch.listAvailableDeliveries({ location: point, radiusKm: 5 });
        assert.ok(!list.deliveries.some((x) => x.orderId === order.id), "a taken order is no longer listed");
      });

      it("lets each driver claim a searching order while dispatch goes on searching for it", async () => {
        const n = 8;
        const drivers = await Promise.all(Array.from({ length: n }, () => t.driver(null)));
        const orders = [];
        for (let i = 0; i < n; i++) orders.push(await t.order());
        // Spread over the retry period so the claims meet rounds at different phases.
        const results = [];
        for (let i = 0; i < n; i++) {
          results.push(await drivers[i]!.dispatch.claimDelivery({ orderId: orders[i]!.id }).then(
            (r) => r.order?.driverId ?? "",
            (e: Error) => `failed: ${e.message}`,
          ));
          await sleep(37);
        }
        assert.deepEqual(results, drivers.map((d) => d.id));
      });
    });
  });
}
