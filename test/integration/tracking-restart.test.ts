import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import { ConnectError } from "@connectrpc/connect";
import { Redis } from "ioredis";
import { DriverPositionSchema } from "../../gen/dabba/location/v1/location_pb.js";
import { OrderStatus } from "../../gen/dabba/order/v1/order_pb.js";
import { OrderService } from "../../gen/dabba/order/v1/order_service_pb.js";
import { TrackingService, type TrackOrderResponse } from "../../gen/dabba/tracking/v1/tracking_service_pb.js";
import { injectGatewayFault } from "../../services/order/payments/index.js";
import { defaultPaymentsConfig, defaultTrackingConfig } from "../../services/platform/config.js";
import { encodePosition } from "../../services/tracking/channel.js";
import type { TrackingServiceModule } from "../../services/tracking/index.js";
import { requireReal, uniqueId } from "../helpers/backends.js";
import { NEARBY } from "../helpers/fixtures.js";
import { startTestMesh, type Backend, type ClientKind, type TestMesh } from "../helpers/mesh.js";
import { freePort, killRedis, startRedis } from "../helpers/private-redis.js";
import { until } from "../helpers/wait.js";

/**
 * Redis is SIGKILLed and restarted empty on the same port while TrackOrder streams are open:
 * without restarting dabba, the fan-out group is re-created, the hub's channel subscriptions
 * come back (ioredis resubscribes), a status change made while Redis was down still reaches
 * the streams, and later changes and positions flow live.
 */
for (const backend of ["embedded", "real"] as Backend[]) {
  describe(`TrackOrder across a Redis restart (${backend} database)`, function () {
    this.timeout(120_000);
    let port: number;
    let redis: ChildProcess | undefined;
    let t: TestMesh | undefined;
    let raw: Redis | undefined;

    before(async function () {
      if (backend === "real") await requireReal("postgres", this);
      port = await freePort();
      redis = await startRedis(port);
      t = await startTestMesh(backend, {
        services: ["catalog", "order", "tracking"],
        redisUrl: `redis://127.0.0.1:${port}`,
        tracking: { ...defaultTrackingConfig, positionIntervalMs: 50 },
        // The refused settlement calls below must not open the breaker (placements would then wait PAYMENT_PENDING).
        payments: { ...defaultPaymentsConfig, breakerMinCalls: 1_000_000 },
      });
      // The payment worker's events take order sequences at a moment of their own; with the test
      // gateway refusing settlement calls they stay out, so the exact event ids asserted below hold.
      for (const op of ["capture", "void", "refund"] as const) await injectGatewayFault(t.mesh.db, op, { kind: "error", rate: 1 });
      raw = new Redis({ port, host: "127.0.0.1", maxRetriesPerRequest: 1, retryStrategy: (n) => Math.min(n * 50, 500) });
      raw.on("error", () => {});
    });

    after(async () => {
      raw?.disconnect();
      await t?.close();
      if (redis) await killRedis(redis);
    });

    it("keeps the streams open and delivers every status change and position after the restart", async () => {
      const mesh = t!;
      const tracking = mesh.mesh.modules.get("tracking") as TrackingServiceModule;
      const customerId = `cust-${uniqueId()}`;
      const driverId = `drv-${uniqueId()}`;
      const orders = await mesh.client(OrderService, "connect-grpc", "customer", customerId);
      const kitchen = await mesh.client(OrderService, "connect-grpc", "restaurant", "staff", mesh.restaurantId);
      const ops = await mesh.client(OrderService, "connect-grpc", "ops", "op-1");
      const driver = await mesh.client(OrderService, "connect-grpc", "driver", driverId);
      const placed = await orders.placeOrder(
        { restaurantId: mesh.restaurantId, lines: [{ itemId: `${mesh.restaurantId}-dosa`, quantity: 1 }], delivery: { location: NEARBY, addressLine: "1 Test Road" }, paymentToken: "tok_visa" },
        { headers: { "idempotency-key": `k-${uniqueId()}` } },
      );
      const orderId = placed.order!.id;

      // One stream per client kind, both watching the same order (one subscription).
      const kinds: ClientKind[] = ["connect-grpc", "grpc-js"];
      const streams = await Promise.all(
        kinds.map(async (kind) => {
          const client = await mesh.client(TrackingService, kind, "customer", customerId);
          const abort = new AbortController();
          const s = { kind, msgs: [] as TrackOrderResponse[], error: undefined as ConnectError | undefined, ended: false, abort, done: Promise.resolve() };
          s.done = (async () => {
            try {
              for await (const m of client.trackOrder({ orderId }, { signal: abort.signal })) s.msgs.push(m);
              s.ended = true;
            } catch (err) {
              s.error = ConnectError.from(err);
            }
          })();
          return s;
        }),
      );
      const statusIds = (s: (typeof streams)[number]) => s.msgs.flatMap((m) => (m.update.case === "status" ? [m.eventId] : []));
      const has = (id: string) => streams.every((s) => statusIds(s).includes(id));
      const channelName = async () => ((await raw!.pubsub("CHANNELS", `*tracking:${orderId}`)) as string[])[0];

      await until(() => streams.every((s) => s.msgs.length > 0), 10_000, "snapshots");
      assert.equal(tracking.hub.orderCount(), 1);
      await kitchen.acceptOrder({ orderId });
      await until(() => has(`${orderId}-2`), 10_000, "CONFIRMED before the restart");
      const channel = await channelName();
      assert.ok(channel, "the order's tracking channel is subscribed in Redis");

      await killRedis(redis!);
      // Changed while Redis is down: committed in the database, relayed once Redis is back.
      await kitchen.startPreparing({ orderId });
      redis = await startRedis(port);

      await kitchen.markReady({ orderId });
      await until(() => has(`${orderId}-4`), 30_000, "READY_FOR_PICKUP after the restart");
      await until(() => has(`${orderId}-3`), 10_000, "PREPARING, changed while Redis was down");

      // The hub's subscription is back in the new Redis (resubscribed, not re-joined).
      await until(async () => (await channelName()) === channel, 15_000, "channel resubscribed");
      assert.equal(tracking.hub.orderCount(), 1);
      assert.equal(tracking.hub.watcherCount(), 2);

      await ops.assignDriver({ orderId, driverId });
      await until(() => has(`${orderId}-5`), 10_000, "the assignment");
      const at = Date.now();
      await raw!.publish(
        channel!,
        Buffer.from(encodePosition(create(DriverPositionSchema, { driverId, location: { lat: 12.98, lng: 77.6 }, headingDeg: 10, at: timestampFromMs(at) }))),
      );
      await until(
        () => streams.every((s) => s.msgs.some((m) => m.update.case === "location" && timestampMs(m.update.value.at!) === at)),
        10_000,
        "a position published after the restart",
      );

      await driver.confirmPickup({ orderId });
      await driver.confirmDelivery({ orderId });
      await Promise.all(streams.map((s) => s.done));
      for (const s of streams) {
        assert.equal(s.error, undefined, `${s.kind}: ${s.error?.message}`);
        assert.equal(s.ended, true);
        assert.deepEqual(statusIds(s), [2, 3, 4, 5, 6, 7].map((n) => `${orderId}-${n}`), `${s.kind}: every status exactly once, in order`);
        const statuses = s.msgs.flatMap((m) => (m.update.case === "status" ? [m.update.value.status] : []));
        assert.equal(statuses[statuses.length - 1], OrderStatus.DELIVERED);
        assert.equal(s.msgs[s.msgs.length - 1]!.final, true);
      }
      await until(() => tracking.hub.orderCount() === 0, 10_000, "hub empty after the streams ended");
      for (const s of streams) if (!s.ended && !s.error) s.abort.abort();
    });
  });
}
