import assert from "node:assert/strict";
import { Code, ConnectError } from "@connectrpc/connect";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { LocationService, type ReportLocationsRequestSchema, type ReportLocationsResponse } from "../../gen/dabba/location/v1/location_service_pb.js";
import { OrderStatus } from "../../gen/dabba/order/v1/order_pb.js";
import { OrderService } from "../../gen/dabba/order/v1/order_service_pb.js";
import { TrackingService, type TrackOrderResponse } from "../../gen/dabba/tracking/v1/tracking_service_pb.js";
import { defaultGeofenceConfig, defaultLocationConfig, defaultTrackingConfig } from "../../services/platform/config.js";
import { uniqueId } from "../helpers/backends.js";
import { NEARBY } from "../helpers/fixtures.js";
import { startTestMesh, type Backend, type ClientKind, type TestMesh } from "../helpers/mesh.js";
import { offsetMetres, pushStream } from "../helpers/push-stream.js";
import { sleep, until } from "../helpers/wait.js";

type ReportMsg = MessageInitShape<typeof ReportLocationsRequestSchema>;

/** The fixture restaurant's position (test/helpers/fixtures.ts). */
const RESTAURANT = { lat: 12.9716, lng: 77.5946 };
const DWELL_MS = 400;
const PING_EVERY_MS = 100;

/**
 * The whole live path, as the apps use it: a driver app streams GPS fixes over ReportLocations,
 * a customer app watches TrackOrder; geofences move the order to EN_ROUTE without anyone
 * pressing a button, and the stream ends with the delivery.
 */
for (const backend of ["embedded", "real"] as Backend[]) {
  describe(`live location and tracking end to end (${backend} storage)`, function () {
    this.timeout(90_000);
    let t: TestMesh;
    before(async () => {
      t = await startTestMesh(backend, {
        location: { ...defaultLocationConfig, maxPingsPerSecond: 50, geofence: { ...defaultGeofenceConfig, dwellMs: DWELL_MS } },
        tracking: { ...defaultTrackingConfig, positionIntervalMs: 100 },
      });
    });
    after(async () => t?.close());

    const combos: [driver: ClientKind, customer: ClientKind][] = [
      ["grpc-js", "connect-grpc"],
      ["connect-grpc", "grpc-js"],
    ];
    for (const [driverKind, customerKind] of combos) {
      it(`a driver streaming over ${driverKind} is watched by a customer over ${customerKind} from assignment to delivery`, async () => {
        const customerId = `cust-${uniqueId()}`;
        const driverId = `drv-${uniqueId()}`;
        const orders = await t.client(OrderService, "connect-grpc", "customer", customerId);
        const kitchen = await t.client(OrderService, "connect-grpc", "restaurant", "staff", t.restaurantId);
        const ops = await t.client(OrderService, "connect-grpc", "ops", "op-1");
        const driverOrders = await t.client(OrderService, "connect-grpc", "driver", driverId);
        const location = await t.client(LocationService, driverKind, "driver", driverId);
        const tracking = await t.client(TrackingService, customerKind, "customer", customerId);

        const placed = await orders.placeOrder(
          { restaurantId: t.restaurantId, lines: [{ itemId: `${t.restaurantId}-dosa`, quantity: 1 }], delivery: { location: NEARBY, addressLine: "12 Church Street" }, paymentToken: "tok_visa" },
          { headers: { "idempotency-key": `k-${uniqueId()}` } },
        );
        const orderId = placed.order!.id;
        await kitchen.acceptOrder({ orderId });
        await kitchen.startPreparing({ orderId });
        await kitchen.markReady({ orderId });

        // The customer starts watching before a driver exists.
        const seen: TrackOrderResponse[] = [];
        const abort = new AbortController();
        let ended = false;
        const watching = (async () => {
          for await (const m of tracking.trackOrder({ orderId }, { signal: abort.signal })) seen.push(m);
          ended = true;
        })();
        await until(() => seen.length > 0, 10_000, "snapshot");
        assert.equal(seen[0].update.case, "snapshot");
        const snap = seen[0].update.case === "snapshot" ? seen[0].update.value : undefined;
        assert.equal(snap?.order?.status, OrderStatus.READY_FOR_PICKUP);
        assert.equal(snap?.driver, undefined, "no driver yet");

        await ops.assignDriver({ orderId, driverId });
        const statuses = () => seen.flatMap((m) => (m.update.case === "status" ? [m.update.value.status] : []));
        const positions = () => seen.flatMap((m) => (m.update.case === "location" ? [m.update.value] : []));

        // The driver's phone: fixes every PING_EVERY_MS at the restaurant, with device time = now.
        const pings = pushStream<ReportMsg>();
        let seq = 0n;
        let at = { ...RESTAURANT };
        const ping = (p: { lat: number; lng: number }, speed = 0) =>
          pings.push({ pings: [{ location: p, accuracyM: 5, speedMps: speed, headingDeg: 0, deviceTime: timestampFromMs(Date.now()), sequence: ++seq }] });
        const summary: Promise<ReportLocationsResponse> = location.reportLocations(pings);
        let moving = true;
        let north = 0;
        const walker = (async () => {
          while (moving) {
            ping(offsetMetres(at, north, 0), north === 0 ? 0 : 12);
            await sleep(PING_EVERY_MS);
          }
        })();

        // Positions reach the customer once the assignment is known to the location service.
        await until(() => positions().length > 0, 15_000, "a driver position on the customer's stream");
        const first = positions()[0];
        assert.ok(Math.abs(first.location!.lat - RESTAURANT.lat) < 0.001, "the position is the driver's");

        await driverOrders.confirmPickup({ orderId });
        await until(() => statuses().includes(OrderStatus.PICKED_UP), 10_000, "PICKED_UP on the stream");

        // Drive away at 12 m/s (1.2 m per 100 ms ping) until the geofence confirms the departure.
        const drive = (async () => {
          while (moving) {
            north += (12 * PING_EVERY_MS) / 1000;
            await sleep(PING_EVERY_MS);
          }
        })();
        await until(() => statuses().includes(OrderStatus.EN_ROUTE), 45_000, "EN_ROUTE set by the geofence");
        const enRoute = await orders.getOrder({ orderId });
        assert.equal(enRoute.order!.status, OrderStatus.EN_ROUTE);
        const enRouteEntry = enRoute.order!.timeline.find((e) => e.status === OrderStatus.EN_ROUTE);
        assert.equal(enRouteEntry?.actor?.id !== driverId, true, "EN_ROUTE came from the platform, not the driver");

        // Positions keep flowing, newest last.
        const before = positions().length;
        await until(() => positions().length > before + 2, 10_000, "positions while en route");
        const ats = positions().map((p) => Number(p.at!.seconds) * 1000 + p.at!.nanos / 1e6);
        for (let i = 1; i < ats.length; i++) assert.ok(ats[i] >= ats[i - 1], "never an older position after a newer one");

        await driverOrders.confirmDelivery({ orderId });
        await until(() => ended, 10_000, "the stream ends after delivery");
        const last = seen[seen.length - 1];
        assert.equal(last.final, true);
        assert.equal(last.update.case === "status" && last.update.value.status, OrderStatus.DELIVERED);
        moving = false;
        await Promise.all([walker, drive]);
        pings.end();
        const s = await summary;
        assert.ok(s.accepted > 10n, `accepted ${s.accepted}`);
        assert.equal(s.rejected, 0n, JSON.stringify(s.rejectedByReason));
        abort.abort();
        await watching.catch((err) => {
          if (!(err instanceof ConnectError && err.code === Code.Canceled)) throw err;
        });
      });
    }
  });
}
