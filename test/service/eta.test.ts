import assert from "node:assert/strict";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { ConnectError } from "@connectrpc/connect";
import { OrderService } from "../../gen/dabba/order/v1/order_service_pb.js";
import { TrackingService, type TrackOrderResponse } from "../../gen/dabba/tracking/v1/tracking_service_pb.js";
import { driverFixKey } from "../../services/location/keys.js";
import { defaultEtaConfig } from "../../services/platform/config.js";
import { uniqueId } from "../helpers/backends.js";
import { NEARBY } from "../helpers/fixtures.js";
import { startTestMesh, type Backend, type TestMesh } from "../helpers/mesh.js";
import { until } from "../helpers/wait.js";

const RECOMPUTE_MS = 250;

for (const backend of ["embedded", "real"] as Backend[]) {
  describe(`ETA recompute and push (${backend} storage)`, function () {
    this.timeout(120_000);
    let t: TestMesh;

    before(async () => {
      t = await startTestMesh(backend, {
        services: ["catalog", "order", "tracking"],
        eta: { ...defaultEtaConfig, speedBands: [], updater: true, recomputeMs: RECOMPUTE_MS },
      });
    });
    after(async () => t?.close());

    it("pushes a changed estimate on TrackOrder when the driver moves closer, and nothing for a small move", async () => {
      const customer = `cust-${uniqueId()}`;
      const driverId = `drv-${uniqueId()}`;
      const orders = await t.client(OrderService, "connect-grpc", "customer", customer);
      const placed = await orders.placeOrder(
        { restaurantId: t.restaurantId, lines: [{ itemId: `${t.restaurantId}-dosa`, quantity: 1 }], delivery: { location: NEARBY, addressLine: "1 Church St" }, paymentToken: "tok_visa" },
        { headers: { "idempotency-key": `k-${uniqueId()}` } },
      );
      const order = placed.order!;
      assert.ok(order.eta?.earliestAt && order.eta.latestAt, "placement stores absolute bounds");
      const pickup = order.pickupLocation!;
      const fix = (dLat: number) =>
        t.mesh.redis.kv.hset(driverFixKey(driverId), { lat: String(pickup.lat + dLat), lng: String(pickup.lng), at: String(Date.now()) }, { ttlMs: 600_000 });

      // The driver starts ~11 km from the restaurant (~40 min at the base speed): the pickup
      // waits for them, far longer than any kitchen-stage estimate (15 min prep) would.
      await fix(0.1);
      const kitchen = await t.client(OrderService, "connect-grpc", "restaurant", "staff", t.restaurantId);
      const ops = await t.client(OrderService, "connect-grpc", "ops", "op-1");
      await kitchen.acceptOrder({ orderId: order.id });
      await kitchen.startPreparing({ orderId: order.id });
      await kitchen.markReady({ orderId: order.id });
      await ops.assignDriver({ orderId: order.id, driverId });

      const tracking = await t.client(TrackingService, "connect-grpc", "customer", customer);
      const msgs: TrackOrderResponse[] = [];
      const abort = new AbortController();
      const done = (async () => {
        try {
          for await (const m of tracking.trackOrder({ orderId: order.id }, { signal: abort.signal })) msgs.push(m);
        } catch (err) {
          if (!abort.signal.aborted) throw ConnectError.from(err);
        }
      })();
      const etas = () => msgs.flatMap((m) => (m.update.case === "eta" ? [m.update.value] : []));
      try {
        // Wait until the stored estimate reflects the far driver, not an earlier kitchen-stage
        // one the consumer stored on the way (prep 15 min + leg + range stays under 35 min),
        // and until the stream has shown the customer that very estimate.
        const farHigh = async () => {
          const o = (await ops.getOrder({ orderId: order.id })).order!;
          return timestampMs(o.eta!.latestAt!);
        };
        await until(async () => (await farHigh()) - Date.now() > 35 * 60_000, 20_000, "estimate with the far driver");
        const before = await farHigh();
        const shown = () =>
          msgs.some((m) =>
            m.update.case === "eta" ? timestampMs(m.update.value.latestAt!) === before
            : m.update.case === "snapshot" ? m.update.value.eta?.latestAt !== undefined && timestampMs(m.update.value.eta.latestAt) === before
            : false);
        await until(shown, 10_000, "the far estimate on the stream");
        await new Promise((r) => setTimeout(r, RECOMPUTE_MS * 3));
        assert.equal(await farHigh(), before, "the far estimate is stable");
        const settled = etas().length;

        // ~20 m closer: well under a minute of driving; several rounds pass, nothing is pushed.
        await fix(0.0998);
        await new Promise((r) => setTimeout(r, RECOMPUTE_MS * 6));
        assert.equal(etas().length, settled, "a small move pushes nothing");
        assert.equal(await farHigh(), before, "nor changes the stored estimate");

        // ~10 km closer: many minutes earlier; pushed with absolute bounds.
        await fix(0.01);
        await until(() => etas().length > settled, 10_000, "an eta update");
        const e = etas()[etas().length - 1]!;
        assert.ok(e.earliestAt && e.latestAt, "the update carries absolute bounds");
        assert.ok(before - timestampMs(e.latestAt!) >= 60_000, `high end moved by >= 1 min: ${before} -> ${timestampMs(e.latestAt!)}`);
        assert.ok(e.maxMinutes >= e.minMinutes && e.maxMinutes - e.minMinutes >= defaultEtaConfig.minRangeMinutes - 1);
        const stored = (await ops.getOrder({ orderId: order.id })).order!;
        assert.equal(timestampMs(stored.eta!.latestAt!), timestampMs(e.latestAt!), "the pushed estimate is the stored one");
        assert.ok(!stored.timeline.some((x) => msgs.some((m) => m.update.case === "eta" && m.eventId === `${order.id}-${x.sequence}`)), "no timeline entry for an ETA change");
      } finally {
        abort.abort();
        await done;
      }
    });
  });
}
