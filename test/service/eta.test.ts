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

      // The driver starts ~5.5 km from the restaurant: the pickup waits for them.
      await fix(0.05);
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
        // Wait until the stored estimate reflects the far driver (snapshot or a pushed change).
        const farHigh = async () => {
          const o = (await ops.getOrder({ orderId: order.id })).order!;
          return timestampMs(o.eta!.latestAt!);
        };
        await until(async () => (await farHigh()) - Date.now() > 15 * 60_000, 10_000, "estimate with the far driver");
        await until(() => msgs.length > 0, 5_000, "snapshot");
        const before = await farHigh();
        await new Promise((r) => setTimeout(r, RECOMPUTE_MS * 3));
        const settled = etas().length;

        // ~20 m closer: well under a minute of driving; several rounds pass, nothing is pushed.
        await fix(0.0498);
        await new Promise((r) => setTimeout(r, RECOMPUTE_MS * 6));
        assert.equal(etas().length, settled, "a small move pushes nothing");
        assert.equal(await farHigh(), before, "nor changes the stored estimate");

        // ~4.4 km closer: many minutes earlier; pushed with absolute bounds.
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
