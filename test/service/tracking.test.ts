import assert from "node:assert/strict";
import v8 from "node:v8";
import vm from "node:vm";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, createContextValues, createHandlerContext, type Client, type HandlerContext } from "@connectrpc/connect";
import { ActorRole } from "../../gen/dabba/common/v1/common_pb.js";
import { EventSchema } from "../../gen/dabba/events/v1/events_pb.js";
import { DriverPositionSchema } from "../../gen/dabba/location/v1/location_pb.js";
import { LocationService, type ReportLocationsRequestSchema } from "../../gen/dabba/location/v1/location_service_pb.js";
import { OrderStatus, TimelineKind, type TimelineEntry } from "../../gen/dabba/order/v1/order_pb.js";
import { OrderService } from "../../gen/dabba/order/v1/order_service_pb.js";
import { TrackingService, TrackOrderRequestSchema, type TrackOrderRequest, type TrackOrderResponse } from "../../gen/dabba/tracking/v1/tracking_service_pb.js";
import { driverFixKey, driverProfileKey } from "../../services/location/keys.js";
import { bearer, principalKey } from "../../services/platform/auth.js";
import { defaultDispatchConfig, defaultLocationConfig, defaultPaymentsConfig, defaultTrackingConfig } from "../../services/platform/config.js";
import { createLocalTransport } from "../../services/platform/local-transport.js";
import { ORDER_EVENTS_STREAM } from "../../services/order/store.js";
import { createLogger } from "../../services/platform/logger.js";
import { openRedis, type StreamEntry } from "../../services/platform/redis.js";
import { encodeEvent, encodeEventBytes, encodePosition, trackingChannel } from "../../services/tracking/channel.js";
import { MAX_QUEUED_EVENTS, trackOrder } from "../../services/tracking/handlers/track-order.js";
import { injectGatewayFault } from "../../services/order/payments/index.js";
import { createTrackingHub } from "../../services/tracking/hub.js";
import type { LocationModule } from "../../services/location/index.js";
import type { TrackingServiceModule } from "../../services/tracking/index.js";
import { uniqueId } from "../helpers/backends.js";
import { NEARBY } from "../helpers/fixtures.js";
import { startTestMesh, type Backend, type ClientKind, type TestMesh } from "../helpers/mesh.js";
import { offsetMetres, pushStream } from "../helpers/push-stream.js";
import { sleep, until } from "../helpers/wait.js";

type ReportMsg = MessageInitShape<typeof ReportLocationsRequestSchema>;

const POSITION_INTERVAL_MS = 150;
const HEARTBEAT_MS = 400;
const KINDS: ClientKind[] = ["connect-grpc", "grpc-js"];

/** One TrackOrder stream as a client app sees it. */
interface Watcher {
  msgs: TrackOrderResponse[];
  /** Local receive time (performance.now()) of each message. */
  times: number[];
  ended: boolean;
  error: ConnectError | undefined;
  done: Promise<void>;
  cancel(): Promise<void>;
}

function watch(client: Client<typeof TrackingService>, req: MessageInitShape<typeof TrackOrderRequestSchema>): Watcher {
  const abort = new AbortController();
  const w: Watcher = {
    msgs: [],
    times: [],
    ended: false,
    error: undefined,
    done: Promise.resolve(),
    async cancel() {
      abort.abort();
      await w.done;
    },
  };
  w.done = (async () => {
    try {
      for await (const m of client.trackOrder(req, { signal: abort.signal })) {
        w.msgs.push(m);
        w.times.push(performance.now());
      }
      w.ended = true;
    } catch (err) {
      w.error = ConnectError.from(err);
    }
  })();
  return w;
}

const statuses = (w: Watcher) => w.msgs.flatMap((m) => (m.update.case === "status" ? [m] : []));
const positions = (w: Watcher) =>
  w.msgs.flatMap((m, i) => (m.update.case === "location" ? [{ msg: m, loc: m.update.value, at: timestampMs(m.update.value.at!), t: w.times[i]! }] : []));
const heartbeats = (w: Watcher) => w.msgs.filter((m) => m.update.case === "heartbeat");

for (const backend of ["embedded", "real"] as Backend[]) {
  describe(`TrackingService.TrackOrder (${backend} storage)`, function () {
    this.timeout(120_000);
    let t: TestMesh;
    let tracking: TrackingServiceModule;

    before(async () => {
      t = await startTestMesh(backend, {
        services: ["catalog", "order", "tracking"],
        tracking: { ...defaultTrackingConfig, positionIntervalMs: POSITION_INTERVAL_MS, heartbeatMs: HEARTBEAT_MS },
        // The refused settlement calls below must not open the breaker (placements would then wait PAYMENT_PENDING).
        payments: { ...defaultPaymentsConfig, breakerMinCalls: 1_000_000 },
      });
      tracking = t.mesh.modules.get("tracking") as TrackingServiceModule;
      // The payment worker's events (capture on acceptance, void on cancel) take order sequences
      // at a moment of their own; with the test gateway refusing those calls they stay out, so
      // the exact event ids asserted below hold. (TrackOrder itself skips such sequences.)
      for (const op of ["capture", "void", "refund"] as const) await injectGatewayFault(t.mesh.db, op, { kind: "error", rate: 1 });
    });
    after(async () => t?.close());

    async function placeOrder(customerId: string): Promise<string> {
      const orders = await t.client(OrderService, "connect-grpc", "customer", customerId);
      const placed = await orders.placeOrder(
        { restaurantId: t.restaurantId, lines: [{ itemId: `${t.restaurantId}-dosa`, quantity: 1 }], delivery: { location: NEARBY, addressLine: "12 Church Street" }, paymentToken: "tok_visa" },
        { headers: { "idempotency-key": `k-${uniqueId()}` } },
      );
      return placed.order!.id;
    }

    /** Clients acting on an order: its kitchen, ops and the driver. */
    async function actors(driverId: string) {
      return {
        kitchen: await t.client(OrderService, "connect-grpc", "restaurant", "staff", t.restaurantId),
        ops: await t.client(OrderService, "connect-grpc", "ops", "op-1"),
        driver: await t.client(OrderService, "connect-grpc", "driver", driverId),
      };
    }

    async function readyWithDriver(orderId: string, driverId: string) {
      const a = await actors(driverId);
      await a.kitchen.acceptOrder({ orderId });
      await a.kitchen.startPreparing({ orderId });
      await a.kitchen.markReady({ orderId });
      await a.ops.assignDriver({ orderId, driverId });
      return a;
    }

    function position(driverId: string, atMs: number, lat: number) {
      return encodePosition(
        create(DriverPositionSchema, { driverId, location: { lat, lng: 77.6 }, headingDeg: 90, speedMps: 8, accuracyM: 5, at: timestampFromMs(atMs) }),
      );
    }
    const publish = (orderId: string, data: Uint8Array) => t.mesh.redis.channels.publish(trackingChannel(orderId), data);

    async function hubIdle(): Promise<void> {
      await until(() => tracking.hub.watcherCount() === 0, 10_000, "no watchers");
      await tracking.hub.settled();
      await until(() => tracking.hub.orderCount() === 0, 10_000, "hub empty");
    }

    for (const kind of KINDS) {
      it(`sends a snapshot, then every status change until DELIVERED ends the stream (${kind})`, async () => {
        const customerId = `cust-${uniqueId()}`;
        const driverId = `drv-${uniqueId()}`;
        const orderId = await placeOrder(customerId);
        const w = watch(await t.client(TrackingService, kind, "customer", customerId), { orderId });
        await until(() => w.msgs.length > 0, 10_000, "snapshot");

        const first = w.msgs[0]!;
        assert.equal(first.update.case, "snapshot");
        assert.equal(first.eventId, `${orderId}-1`);
        assert.equal(first.final, false);
        const snap = first.update.case === "snapshot" ? first.update.value : undefined;
        assert.equal(snap?.order?.id, orderId);
        assert.equal(snap?.order?.status, OrderStatus.PLACED);
        assert.deepEqual(snap?.order?.timeline.map((e) => e.status), [OrderStatus.PLACED]);
        assert.equal(snap?.driver, undefined);
        assert.equal(snap?.driverLocation, undefined);
        assert.ok(snap?.eta && snap.eta.maxMinutes >= snap.eta.minMinutes && snap.eta.minMinutes > 0, "eta from the order");

        const a = await readyWithDriver(orderId, driverId);
        await a.driver.confirmPickup({ orderId });
        await a.driver.markEnRoute({ orderId });
        await a.driver.confirmDelivery({ orderId });
        await until(() => w.ended || w.error !== undefined, 10_000, "the stream ends after delivery");
        assert.equal(w.error, undefined);

        const got = statuses(w);
        assert.deepEqual(
          got.map((m) => (m.update.case === "status" ? [m.update.value.status, m.update.value.entry!.kind] : [])),
          [
            [OrderStatus.CONFIRMED, TimelineKind.STATUS],
            [OrderStatus.PREPARING, TimelineKind.STATUS],
            [OrderStatus.READY_FOR_PICKUP, TimelineKind.STATUS],
            [OrderStatus.READY_FOR_PICKUP, TimelineKind.DRIVER_ASSIGNED],
            [OrderStatus.PICKED_UP, TimelineKind.STATUS],
            [OrderStatus.EN_ROUTE, TimelineKind.STATUS],
            [OrderStatus.DELIVERED, TimelineKind.STATUS],
          ],
        );
        assert.deepEqual(got.map((m) => m.eventId), [2, 3, 4, 5, 6, 7, 8].map((n) => `${orderId}-${n}`));
        assert.deepEqual(got.map((m) => m.final), [false, false, false, false, false, false, true]);
        assert.equal(w.msgs[w.msgs.length - 1], got[got.length - 1], "the final status is the last message");

        // Each entry is the one GetOrder's timeline records.
        const ops = await t.client(OrderService, "connect-grpc", "ops", "op-1");
        const timeline = (await ops.getOrder({ orderId })).order!.timeline;
        const norm = (e: TimelineEntry) => ({
          kind: e.kind,
          status: e.status,
          actor: { role: e.actor?.role, id: e.actor?.id },
          driverId: e.driverId,
          at: timestampMs(e.at!),
          sequence: e.sequence,
        });
        assert.deepEqual(
          got.map((m) => (m.update.case === "status" ? norm(m.update.value.entry!) : undefined)),
          timeline.slice(1).map(norm),
        );
        const assigned = got[3]!.update.case === "status" ? got[3]!.update.value.entry! : undefined;
        assert.equal(assigned?.driverId, driverId);
        assert.equal(assigned?.actor?.role, ActorRole.OPS);
        await hubIdle();
      });
    }

    it("shows a dispatch flag as a timeline update in sequence, in later snapshots and in a resume", async () => {
      const customerId = `cust-${uniqueId()}`;
      const driverId = `drv-${uniqueId()}`;
      const orderId = await placeOrder(customerId);
      const client = await t.client(TrackingService, "connect-grpc", "customer", customerId);
      const w = watch(client, { orderId });
      await until(() => w.msgs.length > 0, 10_000, "snapshot");
      const a = await actors(driverId);
      const svc = await t.client(OrderService, "connect-grpc", "service", "dispatch");
      await a.kitchen.acceptOrder({ orderId });
      const flagged = (await svc.flagDispatch({ orderId, attempts: 3 })).order!;
      await a.kitchen.startPreparing({ orderId });
      await until(() => statuses(w).length === 3, 10_000, "CONFIRMED, the flag, PREPARING");
      const entry = (m: TrackOrderResponse) => (m.update.case === "status" ? m.update.value.entry : undefined);
      assert.deepEqual(
        statuses(w).map((m) => [m.eventId, entry(m)?.kind, entry(m)?.status, m.update.case === "status" && m.update.value.status]),
        [
          [`${orderId}-2`, TimelineKind.STATUS, OrderStatus.CONFIRMED, OrderStatus.CONFIRMED],
          [`${orderId}-3`, TimelineKind.DISPATCH_FLAGGED, OrderStatus.CONFIRMED, OrderStatus.CONFIRMED],
          [`${orderId}-4`, TimelineKind.STATUS, OrderStatus.PREPARING, OrderStatus.PREPARING],
        ],
      );
      const flag = entry(statuses(w)[1]!)!;
      assert.equal(flag.actor?.role, ActorRole.SERVICE);
      assert.equal(flag.actor?.id, "dispatch");
      assert.equal(flag.sequence, 3n);
      assert.ok(!w.ended && w.error === undefined, "the flag does not end the stream");

      // A driver found after the flag: the stream goes on as for any order.
      await a.ops.assignDriver({ orderId, driverId });
      await until(() => statuses(w).length === 4, 10_000, "the assignment after the flag");
      assert.equal(entry(statuses(w)[3]!)?.kind, TimelineKind.DRIVER_ASSIGNED);
      await w.cancel();

      // A new watcher's snapshot holds the flag in the timeline and on the order.
      const w2 = watch(client, { orderId });
      await until(() => w2.msgs.length > 0, 10_000, "snapshot");
      const snap = w2.msgs[0]!.update.case === "snapshot" ? w2.msgs[0]!.update.value : undefined;
      assert.equal(w2.msgs[0]!.eventId, `${orderId}-5`);
      assert.deepEqual(snap?.order?.timeline.map((e) => e.kind), [
        TimelineKind.STATUS,
        TimelineKind.STATUS,
        TimelineKind.DISPATCH_FLAGGED,
        TimelineKind.STATUS,
        TimelineKind.DRIVER_ASSIGNED,
      ]);
      assert.deepEqual(snap?.order?.dispatchFlaggedAt, flagged.dispatchFlaggedAt);
      await w2.cancel();

      // Resuming from before the flag replays it from the timeline, in sequence.
      const w3 = watch(client, { orderId, lastEventId: `${orderId}-2` });
      await until(() => statuses(w3).length === 3, 10_000, "the replay");
      assert.deepEqual(statuses(w3).map((m) => [m.eventId, entry(m)?.kind]), [
        [`${orderId}-3`, TimelineKind.DISPATCH_FLAGGED],
        [`${orderId}-4`, TimelineKind.STATUS],
        [`${orderId}-5`, TimelineKind.DRIVER_ASSIGNED],
      ]);
      await w3.cancel();
      await hubIdle();
    });

    it("fills a gap that holds the flag from the order's timeline", async () => {
      const customerId = `cust-${uniqueId()}`;
      const orderId = await placeOrder(customerId);
      const a = await actors(`drv-${uniqueId()}`);
      const svc = await t.client(OrderService, "connect-grpc", "service", "dispatch");
      await a.kitchen.acceptOrder({ orderId });
      // A TrackOrder handler on channels of its own, so the test decides which events reach it:
      // the flag's event is lost (as in a Redis reconnect), PREPARING after it arrives.
      const own = await openRedis({ keyPrefix: `test:${uniqueId()}:` });
      const hub = createTrackingHub({ channels: own.channels });
      const handler = trackOrder({
        tracking: t.config.tracking,
        redis: own,
        logger: createLogger("silent"),
        hub,
        orders: () => createClient(OrderService, t.mesh.peer("order")),
      });
      const ctx = createHandlerContext({
        service: TrackingService,
        method: TrackingService.method.trackOrder,
        protocolName: "test",
        requestMethod: "POST",
        url: "/dabba.tracking.v1.TrackingService/TrackOrder",
        contextValues: createContextValues().set(principalKey, { role: "customer", sub: customerId }),
      });
      const it = handler(create(TrackOrderRequestSchema, { orderId }), ctx);
      try {
        const snap = (await it.next()).value as TrackOrderResponse;
        assert.equal(snap.eventId, `${orderId}-2`);
        await svc.flagDispatch({ orderId, attempts: 2 });
        await a.kitchen.startPreparing({ orderId });
        let preparing: StreamEntry | undefined;
        await until(async () => {
          const entries = await t.mesh.redis.eventLog.range(ORDER_EVENTS_STREAM, undefined, 100_000);
          preparing = entries.find((e) => e.key === orderId && e.type === "preparing");
          return preparing !== undefined;
        }, 10_000, "PREPARING on the event log");
        await own.channels.publish(trackingChannel(orderId), encodeEventBytes(preparing!.data));
        const got: TrackOrderResponse[] = [];
        while (got.length < 2) {
          const r = await it.next();
          assert.ok(!r.done);
          if (r.value.update.case === "status") got.push(r.value);
        }
        assert.deepEqual(
          got.map((m) => [m.eventId, m.update.case === "status" ? m.update.value.entry?.kind : undefined, m.final]),
          [
            [`${orderId}-3`, TimelineKind.DISPATCH_FLAGGED, false],
            [`${orderId}-4`, TimelineKind.STATUS, false],
          ],
        );
      } finally {
        ctx.abort();
        await it.return(undefined);
        await hub.close();
        await own.close();
      }
    });

    it("snapshot of an assigned order carries the driver's name, vehicle and last position", async () => {
      const customerId = `cust-${uniqueId()}`;
      const driverId = `drv-${uniqueId()}`;
      const orderId = await placeOrder(customerId);
      await readyWithDriver(orderId, driverId);
      await t.mesh.redis.kv.hset(driverProfileKey(driverId), { name: "Ravi", vehicle: "red scooter" });
      const fixAt = Date.now() - 1000;
      await t.mesh.redis.kv.hset(driverFixKey(driverId), { lat: "12.975", lng: "77.598", heading: "45", at: String(fixAt) }, { ttlMs: 60_000 });

      const w = watch(await t.client(TrackingService, "connect-grpc", "customer", customerId), { orderId });
      await until(() => w.msgs.length > 0, 10_000, "snapshot");
      const snap = w.msgs[0]!.update.case === "snapshot" ? w.msgs[0]!.update.value : undefined;
      assert.equal(w.msgs[0]!.eventId, `${orderId}-5`);
      assert.deepEqual({ ...snap?.driver, $typeName: undefined }, { $typeName: undefined, driverId, name: "Ravi", vehicle: "red scooter" });
      assert.equal(snap?.driverLocation?.lat, 12.975);
      assert.equal(snap?.driverLocation?.lng, 77.598);

      // A position older than the snapshot's is never sent; a newer one is.
      await publish(orderId, position(driverId, fixAt - 500, 12.9));
      await publish(orderId, position(driverId, fixAt + 500, 12.976));
      await until(() => positions(w).length > 0, 10_000, "a newer position");
      assert.deepEqual(positions(w).map((p) => p.loc.location?.lat), [12.976]);
      assert.equal(positions(w)[0]!.msg.eventId, "", "positions are not resumable");
      await w.cancel();
      assert.equal(w.error?.code, Code.Canceled);

      // Without a profile: empty name and vehicle, still the driver id.
      const other = `drv-${uniqueId()}`;
      const orderId2 = await placeOrder(customerId);
      await readyWithDriver(orderId2, other);
      const w2 = watch(await t.client(TrackingService, "connect-grpc", "customer", customerId), { orderId: orderId2 });
      await until(() => w2.msgs.length > 0, 10_000, "snapshot");
      const snap2 = w2.msgs[0]!.update.case === "snapshot" ? w2.msgs[0]!.update.value : undefined;
      assert.equal(snap2?.driver?.driverId, other);
      assert.equal(snap2?.driver?.name, "");
      assert.equal(snap2?.driver?.vehicle, "");
      assert.equal(snap2?.driverLocation, undefined);
      await w2.cancel();
      await hubIdle();
    });

    for (const kind of KINDS) {
      it(`throttles positions: newest wins, never an older one, none of another driver (${kind})`, async () => {
        const customerId = `cust-${uniqueId()}`;
        const driverId = `drv-${uniqueId()}`;
        const orderId = await placeOrder(customerId);
        const w = watch(await t.client(TrackingService, kind, "customer", customerId), { orderId });
        await until(() => w.msgs.length > 0, 10_000, "snapshot");

        // No driver yet: positions on the channel are not shown.
        const base = Date.now();
        await publish(orderId, position(driverId, base, 12.5));
        await readyWithDriver(orderId, driverId);
        await until(() => statuses(w).length === 4, 10_000, "the assignment");

        // A burst: the first goes out at once, then at most one per interval, the newest last.
        const burstStart = performance.now();
        for (let i = 1; i <= 40; i++) await publish(orderId, position(driverId, base + i * 10, 12.9 + i / 1000));
        const burstMs = performance.now() - burstStart;
        await until(() => positions(w).some((p) => p.at === base + 400), 10_000, "the newest position of the burst");
        const burst = positions(w);
        assert.ok(burst.length >= 1 && burst.length <= 2 + Math.ceil(burstMs / POSITION_INTERVAL_MS), `${burst.length} positions for a ${burstMs.toFixed(0)} ms burst`);
        assert.equal(burst[burst.length - 1]!.loc.location?.lat, 12.9 + 40 / 1000);
        assert.equal(burst[burst.length - 1]!.loc.headingDeg, 90);
        for (let i = 1; i < burst.length; i++) {
          assert.ok(burst[i]!.at > burst[i - 1]!.at, "strictly newer");
          assert.ok(burst[i]!.t - burst[i - 1]!.t >= POSITION_INTERVAL_MS / 2, "spaced by the interval");
        }
        assert.ok(!positions(w).some((p) => p.loc.location?.lat === 12.5), "no position from before the assignment");

        // Stale (older than sent) and another driver's (newer, but not the assigned driver): never sent.
        const n = positions(w).length;
        await publish(orderId, position(driverId, base + 200, 11.1));
        await publish(orderId, position(`drv-other-${uniqueId()}`, base + 10_000, 11.2));
        await publish(orderId, position(driverId, base + 500, 12.95));
        await until(() => positions(w).some((p) => p.at === base + 500), 10_000, "the marker position");
        assert.deepEqual(positions(w).slice(n).map((p) => p.loc.location?.lat), [12.95]);

        // Unassigned: positions stop.
        const ops = await t.client(OrderService, "connect-grpc", "ops", "op-1");
        await ops.unassignDriver({ orderId, driverId });
        await until(() => statuses(w).some((m) => m.update.case === "status" && m.update.value.entry?.kind === TimelineKind.DRIVER_UNASSIGNED), 10_000, "unassigned");
        const m = w.msgs.length;
        await publish(orderId, position(driverId, base + 900, 11.3));
        // A heartbeat proves the stream went on after that position was published (and it was dropped).
        await until(() => w.msgs.slice(m).some((x) => x.update.case === "heartbeat"), 10_000, "a heartbeat after the dropped position");
        assert.ok(!positions(w).some((p) => p.loc.location?.lat === 11.3 || p.loc.location?.lat === 11.1 || p.loc.location?.lat === 11.2));
        await w.cancel();
        await hubIdle();
      });
    }

    it("sends a heartbeat with an empty event id when nothing else was sent for heartbeatMs", async () => {
      const customerId = `cust-${uniqueId()}`;
      const orderId = await placeOrder(customerId);
      const w = watch(await t.client(TrackingService, "grpc-js", "customer", customerId), { orderId });
      await until(() => heartbeats(w).length >= 2, 10_000, "two heartbeats");
      const hb = heartbeats(w)[0]!;
      assert.equal(hb.eventId, "");
      assert.equal(hb.final, false);
      const i = w.msgs.indexOf(hb);
      assert.ok(w.times[i]! - w.times[0]! >= HEARTBEAT_MS / 2, "not before the interval");
      await w.cancel();
      await hubIdle();
    });

    it("sends an ETA change as it arrives", async () => {
      const customerId = `cust-${uniqueId()}`;
      const orderId = await placeOrder(customerId);
      const w = watch(await t.client(TrackingService, "connect-grpc", "customer", customerId), { orderId });
      await until(() => w.msgs.length > 0, 10_000, "snapshot");
      const ev = create(EventSchema, { eventId: `eta-${uniqueId()}`, orderId, payload: { case: "etaChanged", value: { eta: { minMinutes: 31, maxMinutes: 41 } } } });
      await publish(orderId, encodeEvent(ev));
      await until(() => w.msgs.some((m) => m.update.case === "eta"), 10_000, "eta");
      const m = w.msgs.find((x) => x.update.case === "eta")!;
      assert.equal(m.eventId, ev.eventId);
      assert.deepEqual(m.update.case === "eta" ? [m.update.value.minMinutes, m.update.value.maxMinutes] : [], [31, 41]);
      await w.cancel();
    });

    it("authorizes: the customer, its restaurant, ops; others get NOT_FOUND as for a missing order; drivers PERMISSION_DENIED", async () => {
      const customerId = `cust-${uniqueId()}`;
      const driverId = `drv-${uniqueId()}`;
      const orderId = await placeOrder(customerId);
      await readyWithDriver(orderId, driverId);
      // Cancels after the first message (the grpc-js test transport does not cancel the call on a bare break).
      const first = async (client: Client<typeof TrackingService>, req: MessageInitShape<typeof TrackOrderRequestSchema>): Promise<TrackOrderResponse> => {
        const abort = new AbortController();
        try {
          for await (const m of client.trackOrder(req, { signal: abort.signal })) {
            abort.abort();
            return m;
          }
        } finally {
          abort.abort();
        }
        throw new Error("stream ended without a message");
      };
      const code = async (client: Client<typeof TrackingService>, req: MessageInitShape<typeof TrackOrderRequestSchema>) => {
        try {
          await first(client, req);
          return { code: "OK", message: "" };
        } catch (err) {
          const e = ConnectError.from(err);
          return { code: Code[e.code], message: e.rawMessage };
        }
      };
      const as = (role: "customer" | "restaurant" | "ops" | "driver" | "service", sub: string, rid?: string) => t.client(TrackingService, "grpc-js", role, sub, rid);

      assert.equal((await first(await as("customer", customerId), { orderId })).update.case, "snapshot");
      assert.equal((await first(await as("restaurant", "staff", t.restaurantId), { orderId })).update.case, "snapshot");
      assert.equal((await first(await as("ops", "op-1"), { orderId })).update.case, "snapshot");
      assert.equal((await first(await as("service", "dispatch"), { orderId })).update.case, "snapshot");

      const missing = await code(await as("customer", customerId), { orderId: `ord-missing-${uniqueId()}` });
      assert.deepEqual(missing, { code: "NotFound", message: "order not found" });
      assert.deepEqual(await code(await as("customer", `cust-other-${uniqueId()}`), { orderId }), missing);
      assert.deepEqual(await code(await as("restaurant", "staff", `rst-other-${uniqueId()}`), { orderId }), missing);
      const asDriver = await code(await as("driver", driverId), { orderId });
      assert.equal(asDriver.code, "PermissionDenied");

      const bad = await code(await as("customer", customerId), { orderId: "" });
      assert.equal(bad.code, "InvalidArgument");
      assert.match(bad.message, /^order_id/);
      for (const lastEventId of ["garbage", `${orderId}-`, `${orderId}-x1`, `other-order-3`, "pos-1234"]) {
        const r = await code(await as("customer", customerId), { orderId, lastEventId });
        assert.equal(r.code, "InvalidArgument", lastEventId);
        assert.match(r.message, /^last_event_id/, lastEventId);
      }
      await hubIdle();
    });

    for (const kind of KINDS) {
      it(`resumes after a reconnect: exactly the missed status events, then live ones (${kind})`, async () => {
        const customerId = `cust-${uniqueId()}`;
        const driverId = `drv-${uniqueId()}`;
        const orderId = await placeOrder(customerId);
        const client = await t.client(TrackingService, kind, "customer", customerId);
        const a = await actors(driverId);

        const w1 = watch(client, { orderId });
        await until(() => w1.msgs.length > 0, 10_000, "snapshot");
        await a.kitchen.acceptOrder({ orderId });
        await until(() => statuses(w1).length === 1, 10_000, "CONFIRMED");
        const lastSeen = statuses(w1)[0]!.eventId;
        assert.equal(lastSeen, `${orderId}-2`);
        await w1.cancel();
        await hubIdle();

        // Missed while disconnected: PREPARING, READY, the assignment.
        await a.kitchen.startPreparing({ orderId });
        await a.kitchen.markReady({ orderId });
        await a.ops.assignDriver({ orderId, driverId });

        const w2 = watch(client, { orderId, lastEventId: lastSeen });
        await until(() => statuses(w2).length === 3, 10_000, "the missed events");
        await a.driver.confirmPickup({ orderId });
        await until(() => statuses(w2).length === 4, 10_000, "a live event after the replay");
        assert.ok(!w2.msgs.some((m) => m.update.case === "snapshot"), "no snapshot on resume");
        assert.deepEqual(statuses(w2).map((m) => m.eventId), [3, 4, 5, 6].map((n) => `${orderId}-${n}`));
        assert.deepEqual(
          statuses(w2).map((m) => (m.update.case === "status" ? m.update.value.status : undefined)),
          [OrderStatus.PREPARING, OrderStatus.READY_FOR_PICKUP, OrderStatus.READY_FOR_PICKUP, OrderStatus.PICKED_UP],
        );
        await w2.cancel();

        // Resuming a finished order: the missed final status, with final set, and the end.
        await a.driver.confirmDelivery({ orderId });
        const w3 = watch(client, { orderId, lastEventId: `${orderId}-6` });
        await w3.done;
        assert.equal(w3.error, undefined);
        assert.deepEqual(w3.msgs.map((m) => [m.eventId, m.final]), [[`${orderId}-7`, true]]);

        // Watching a finished order: the snapshot is final and the stream ends.
        const w4 = watch(client, { orderId });
        await w4.done;
        assert.equal(w4.error, undefined);
        assert.equal(w4.msgs.length, 1);
        assert.equal(w4.msgs[0]!.update.case, "snapshot");
        assert.equal(w4.msgs[0]!.final, true);
        assert.equal(w4.msgs[0]!.eventId, `${orderId}-7`);
        await hubIdle();
      });
    }

    it("ends with the cancellation as the final message", async () => {
      const customerId = `cust-${uniqueId()}`;
      const orderId = await placeOrder(customerId);
      const w = watch(await t.client(TrackingService, "connect-grpc", "customer", customerId), { orderId });
      await until(() => w.msgs.length > 0, 10_000, "snapshot");
      const orders = await t.client(OrderService, "connect-grpc", "customer", customerId);
      await orders.cancelOrder({ orderId, reason: "changed my mind" });
      await w.done;
      assert.equal(w.error, undefined);
      const last = w.msgs[w.msgs.length - 1]!;
      assert.equal(last.final, true);
      assert.equal(last.update.case === "status" && last.update.value.status, OrderStatus.CANCELLED);
      assert.equal(last.update.case === "status" && last.update.value.entry?.reason, "changed my mind");
      await hubIdle();
    });

    it("holds one channel subscription for two watchers of an order and drops it when both leave", async () => {
      const customerId = `cust-${uniqueId()}`;
      const orderId = await placeOrder(customerId);
      await hubIdle();
      const before = t.mesh.redis.channels.subscribedCount();
      const w1 = watch(await t.client(TrackingService, "grpc-js", "customer", customerId), { orderId });
      const w2 = watch(await t.client(TrackingService, "connect-grpc", "restaurant", "staff", t.restaurantId), { orderId });
      await until(() => w1.msgs.length > 0 && w2.msgs.length > 0, 10_000, "both snapshots");
      assert.equal(tracking.hub.watcherCount(), 2);
      assert.equal(tracking.hub.orderCount(), 1);
      assert.equal(t.mesh.redis.channels.subscribedCount(), before + 1);

      const kitchen = await t.client(OrderService, "connect-grpc", "restaurant", "staff", t.restaurantId);
      await kitchen.acceptOrder({ orderId });
      await until(() => statuses(w1).length === 1 && statuses(w2).length === 1, 10_000, "both see CONFIRMED");

      await w1.cancel();
      await until(() => tracking.hub.watcherCount() === 1, 10_000, "one watcher left");
      await tracking.hub.settled();
      assert.equal(t.mesh.redis.channels.subscribedCount(), before + 1, "still subscribed for the other watcher");
      await w2.cancel();
      await hubIdle();
      assert.equal(t.mesh.redis.channels.subscribedCount(), before);
    });

    it("ends a watcher that falls too far behind with UNAVAILABLE (reconnect with last_event_id)", async () => {
      const customerId = `cust-${uniqueId()}`;
      const orderId = await placeOrder(customerId);
      // Through the handler itself: the test pulls messages, so it decides when the consumer is slow.
      const ctx = createHandlerContext({
        service: TrackingService,
        method: TrackingService.method.trackOrder,
        protocolName: "test",
        requestMethod: "POST",
        url: "/dabba.tracking.v1.TrackingService/TrackOrder",
        contextValues: createContextValues().set(principalKey, { role: "customer", sub: customerId }),
      });
      const impl = tracking.impl as unknown as { trackOrder(req: TrackOrderRequest, ctx: HandlerContext): AsyncIterable<TrackOrderResponse> };
      const it = impl.trackOrder(create(TrackOrderRequestSchema, { orderId }), ctx)[Symbol.asyncIterator]();
      assert.equal((await it.next()).value?.update?.case, "snapshot");
      await until(() => tracking.hub.watcherCount() === 1, 10_000, "watching");
      for (let i = 0; i <= MAX_QUEUED_EVENTS + 10; i++) {
        await publish(orderId, encodeEvent(create(EventSchema, { eventId: `eta-${i}`, orderId, payload: { case: "etaChanged", value: { eta: { minMinutes: i, maxMinutes: i + 5 } } } })));
      }
      await tracking.hub.settled();
      let err: ConnectError | undefined;
      try {
        for (let r = await it.next(); !r.done; r = await it.next()) {
          /* drain what was sent before the overflow */
        }
      } catch (e) {
        err = ConnectError.from(e);
      }
      assert.equal(err?.code, Code.Unavailable);
      assert.match(err!.rawMessage, /last_event_id/);
      await hubIdle();
    });

    it("leaves no subscription, watcher or memory behind after 10,000 connect/disconnect cycles", async function () {
      this.timeout(600_000);
      const customerId = `cust-${uniqueId()}`;
      const orderId = await placeOrder(customerId);
      // A finished order: its stream ends by itself after the final snapshot.
      const doneId = await placeOrder(customerId);
      await (await t.client(OrderService, "connect-grpc", "customer", customerId)).cancelOrder({ orderId: doneId, reason: "test" });
      await hubIdle();
      const subsBefore = t.mesh.redis.channels.subscribedCount();
      // In-process, through the same interceptors as the listeners (auth included): a customer's app connecting and leaving.
      const transport = createLocalTransport({
        desc: tracking.desc,
        impl: tracking.impl,
        serverInterceptors: t.mesh.interceptors,
        clientInterceptors: [bearer(await t.token("customer", customerId))],
        fallback: () => {
          throw new Error("unused");
        },
      });
      const client = createClient(TrackingService, transport);
      const cycle = async (i: number) => {
        const abort = new AbortController();
        let n = 0;
        try {
          // Even cycles cancel a live stream after its snapshot (the app closes), odd ones watch a finished order to its end.
          for await (const m of client.trackOrder({ orderId: i % 2 === 0 ? orderId : doneId }, { signal: abort.signal })) {
            assert.equal(m.update.case, "snapshot");
            n++;
            if (i % 2 === 0) abort.abort();
          }
        } catch (err) {
          if (ConnectError.from(err).code !== Code.Canceled) throw err;
        }
        assert.equal(n, 1);
      };
      const cycles = async (n: number, from: number) => {
        const parallel = 20;
        for (let i = 0; i < n; i += parallel) await Promise.all(Array.from({ length: Math.min(parallel, n - i) }, (_, j) => cycle(from + i + j)));
      };
      v8.setFlagsFromString("--expose-gc");
      const gc = vm.runInNewContext("gc") as () => void;
      await cycles(1000, 0); // warm-up: caches, JIT, pools
      await hubIdle();
      gc();
      const heapBefore = process.memoryUsage().heapUsed;
      await cycles(10_000, 1000);
      await hubIdle();
      assert.equal(t.mesh.redis.channels.subscribedCount(), subsBefore);
      gc();
      const growth = process.memoryUsage().heapUsed - heapBefore;
      assert.ok(growth < 8 * 1024 * 1024, `heap grew by ${(growth / 1048576).toFixed(1)} MiB over 10,000 cycles`);
    });
  });
}

for (const backend of ["embedded", "real"] as Backend[]) {
  describe(`TrackOrder fed by LocationService.ReportLocations (${backend} storage)`, function () {
    this.timeout(60_000);
    let t: TestMesh;
    before(async () => {
      t = await startTestMesh(backend, {
        services: ["catalog", "order", "location", "tracking"],
        location: { ...defaultLocationConfig, maxPingsPerSecond: 50 },
        dispatch: { ...defaultDispatchConfig, stackSize: 2 },
        tracking: { ...defaultTrackingConfig, positionIntervalMs: POSITION_INTERVAL_MS, heartbeatMs: HEARTBEAT_MS },
      });
    });
    after(async () => t?.close());

    it("shows the assigned driver's streamed pings, throttled and in order, and none of another driver", async () => {
      const customerId = `cust-${uniqueId()}`;
      const driverId = `drv-${uniqueId()}`;
      const strangerId = `drv-${uniqueId()}`;
      const orders = await t.client(OrderService, "connect-grpc", "customer", customerId);
      const kitchen = await t.client(OrderService, "connect-grpc", "restaurant", "staff", t.restaurantId);
      const ops = await t.client(OrderService, "connect-grpc", "ops", "op-1");
      const placed = await orders.placeOrder(
        { restaurantId: t.restaurantId, lines: [{ itemId: `${t.restaurantId}-dosa`, quantity: 1 }], delivery: { location: NEARBY, addressLine: "12 Church Street" }, paymentToken: "tok_visa" },
        { headers: { "idempotency-key": `k-${uniqueId()}` } },
      );
      const orderId = placed.order!.id;
      await kitchen.acceptOrder({ orderId });
      await ops.assignDriver({ orderId, driverId });

      const w = watch(await t.client(TrackingService, "grpc-js", "customer", customerId), { orderId });
      await until(() => w.msgs.length > 0, 10_000, "snapshot");

      // Two phones 400 m apart, one fix each per 50 ms, device time = now; only one carries the order.
      const start = { lat: 12.9716, lng: 77.5946 };
      const phones = [driverId, strangerId].map((id, i) => ({ id, pings: pushStream<ReportMsg>(), origin: offsetMetres(start, 0, i * 400) }));
      const clients = await Promise.all(phones.map((p) => t.client(LocationService, "connect-grpc", "driver", p.id)));
      const summaries = phones.map((p, i) => clients[i]!.reportLocations(p.pings));
      let seq = 0n;
      let stop = false;
      const sent = new Map<number, { lat: number; lng: number }>();
      const pinging = (async () => {
        while (!stop) {
          seq++;
          const atMs = Date.now();
          for (const p of phones) {
            const loc = offsetMetres(p.origin, Number(seq) * 0.5, 0);
            if (p.id === driverId) sent.set(atMs, loc);
            p.pings.push({ pings: [{ location: loc, accuracyM: 5, speedMps: 10, headingDeg: 0, deviceTime: timestampFromMs(atMs), sequence: seq }] });
          }
          await sleep(50);
        }
      })();
      try {
        await until(() => positions(w).length >= 5, 20_000, "five positions from the driver's pings");
      } finally {
        stop = true;
        await pinging;
        for (const p of phones) p.pings.end();
      }
      const got = positions(w);
      for (let i = 0; i < got.length; i++) {
        const ping = sent.get(got[i]!.at);
        assert.ok(ping, `position ${i} is one of the assigned driver's pings`);
        assert.ok(Math.abs(got[i]!.loc.location!.lat - ping.lat) < 1e-6 && Math.abs(got[i]!.loc.location!.lng - ping.lng) < 1e-6);
        if (i > 0) assert.ok(got[i]!.at > got[i - 1]!.at, "newer each time");
      }
      // 50 ms pings against a 150 ms interval: far fewer positions than pings reached the stream.
      assert.ok(got.length < sent.size, `${got.length} positions for ${sent.size} pings`);
      await w.cancel();
      const [mine] = await Promise.all(summaries);
      assert.ok(mine!.accepted > 0n);
    });

    it("sends a driver carrying two orders to both orders' watchers; delivering one keeps the other going", async () => {
      const driverId = `drv-${uniqueId()}`;
      const kitchen = await t.client(OrderService, "connect-grpc", "restaurant", "staff", t.restaurantId);
      const ops = await t.client(OrderService, "connect-grpc", "ops", "op-1");
      const driverOrders = await t.client(OrderService, "connect-grpc", "driver", driverId);
      const stacked: { customerId: string; orderId: string; w: Watcher }[] = [];
      for (let i = 0; i < 2; i++) {
        const customerId = `cust-${uniqueId()}`;
        const placed = await (await t.client(OrderService, "connect-grpc", "customer", customerId)).placeOrder(
          { restaurantId: t.restaurantId, lines: [{ itemId: `${t.restaurantId}-dosa`, quantity: 1 }], delivery: { location: NEARBY, addressLine: `${i + 1} Church Street` }, paymentToken: "tok_visa" },
          { headers: { "idempotency-key": `k-${uniqueId()}` } },
        );
        const orderId = placed.order!.id;
        await kitchen.acceptOrder({ orderId });
        await ops.assignDriver({ orderId, driverId });
        stacked.push({ customerId, orderId, w: watch(await t.client(TrackingService, "grpc-js", "customer", customerId), { orderId }) });
      }
      const [one, two] = stacked as [(typeof stacked)[0], (typeof stacked)[0]];
      await until(() => stacked.every((s) => s.w.msgs.length > 0), 10_000, "snapshots");

      const pings = pushStream<ReportMsg>();
      const summary = (await t.client(LocationService, "connect-grpc", "driver", driverId)).reportLocations(pings);
      const sent = new Set<number>();
      let seq = 0n;
      let stop = false;
      const pinging = (async () => {
        while (!stop) {
          const atMs = Date.now();
          sent.add(atMs);
          pings.push({ pings: [{ location: offsetMetres({ lat: 12.9716, lng: 77.5946 }, Number(++seq), 0), accuracyM: 5, speedMps: 10, headingDeg: 0, deviceTime: timestampFromMs(atMs), sequence: seq }] });
          await sleep(50);
        }
      })();
      try {
        await until(() => stacked.every((s) => positions(s.w).length >= 3), 20_000, "positions on both orders' streams");
        for (const s of stacked) assert.ok(positions(s.w).every((p) => sent.has(p.at)), "the carrying driver's pings");
        // Either customer may see the driver who carries their order.
        for (const s of stacked) {
          const r = await (await t.client(LocationService, "connect-grpc", "customer", s.customerId)).getDriverLocation({ driverId });
          assert.equal(r.position?.driverId, driverId);
        }

        for (const s of stacked) {
          await kitchen.startPreparing({ orderId: s.orderId });
          await kitchen.markReady({ orderId: s.orderId });
          await driverOrders.confirmPickup({ orderId: s.orderId });
        }
        await driverOrders.confirmDelivery({ orderId: one.orderId });
        await until(() => one.w.ended || one.w.error !== undefined, 10_000, "the delivered order's stream ends");
        assert.equal(one.w.error, undefined);
        const last = one.w.msgs[one.w.msgs.length - 1]!;
        assert.ok(last.final && last.update.case === "status" && last.update.value.status === OrderStatus.DELIVERED);

        // The other order's watcher keeps getting the driver's positions after the delivery.
        const location = t.mesh.modules.get("location") as LocationModule;
        await until(() => location.parts.activeOrders.get(driverId).map((x) => x.orderId).join() === two.orderId, 10_000, "the writer's cache holds only the other order");
        const n = positions(two.w).length;
        await until(() => positions(two.w).length >= n + 3, 10_000, "positions after the other order's delivery");
        assert.ok(!two.w.ended && two.w.error === undefined);
      } finally {
        stop = true;
        await pinging;
        pings.end();
      }
      await two.w.cancel();
      assert.ok((await summary).accepted > 0n);
    });
  });
}

describe("TrackOrder when the host drains", function () {
  this.timeout(60_000);

  it("ends open streams with UNAVAILABLE (reconnect with last_event_id) and leaves the hub empty", async () => {
    const t = await startTestMesh("embedded", { services: ["catalog", "order", "tracking"], shutdownGraceMs: 5000 });
    let stopped = false;
    try {
      const tracking = t.mesh.modules.get("tracking") as TrackingServiceModule;
      const customerId = `cust-${uniqueId()}`;
      const orders = await t.client(OrderService, "connect-grpc", "customer", customerId);
      const placed = await orders.placeOrder(
        { restaurantId: t.restaurantId, lines: [{ itemId: `${t.restaurantId}-dosa`, quantity: 1 }], delivery: { location: NEARBY, addressLine: "1 Test Road" }, paymentToken: "tok_visa" },
        { headers: { "idempotency-key": `k-${uniqueId()}` } },
      );
      const ws = await Promise.all(
        (["connect-grpc", "grpc-js", "connect"] as ClientKind[]).map(async (kind) => watch(await t.client(TrackingService, kind, "customer", customerId), { orderId: placed.order!.id })),
      );
      await until(() => ws.every((w) => w.msgs.length > 0), 10_000, "snapshots");
      const stopping = t.mesh.stop();
      await Promise.all(ws.map((w) => w.done));
      for (const w of ws) {
        assert.equal(w.error?.code, Code.Unavailable);
        assert.match(w.error!.rawMessage, /last_event_id/);
      }
      await stopping;
      stopped = true;
      assert.equal(tracking.hub.watcherCount(), 0);
      assert.equal(tracking.hub.orderCount(), 0);
    } finally {
      if (!stopped) await t.mesh.stop().catch(() => {});
      await t.close();
    }
  });
});
