import assert from "node:assert/strict";
import { fromBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { createClient, type Client } from "@connectrpc/connect";
import { ActorRole } from "../../gen/dabba/common/v1/common_pb.js";
import { EventSchema, GeofenceKind, type Event } from "../../gen/dabba/events/v1/events_pb.js";
import type { PingSchema } from "../../gen/dabba/location/v1/location_pb.js";
import { LocationService, type ReportLocationsRequestSchema } from "../../gen/dabba/location/v1/location_service_pb.js";
import { OrderStatus, type Order } from "../../gen/dabba/order/v1/order_pb.js";
import { OrderService } from "../../gen/dabba/order/v1/order_service_pb.js";
import { ACTIVE_ORDERS_GROUP, createActiveOrders } from "../../services/location/active-orders.js";
import type { LocationModule } from "../../services/location/index.js";
import { DRIVER_ACTIVE_CHANNEL, LOCATION_EVENTS_STREAM, driverActiveKey } from "../../services/location/keys.js";
import type { AcceptedFix, ActiveOrders } from "../../services/location/types.js";
import { ORDER_EVENTS_STREAM } from "../../services/order/store.js";
import { EARTH_RADIUS_M, haversineKm, type RedisPorts } from "../../services/platform/redis.js";
import { defaultDispatchConfig } from "../../services/platform/config.js";
import { createLogger } from "../../services/platform/logger.js";
import { uniqueId } from "../helpers/backends.js";
import { NEARBY } from "../helpers/fixtures.js";
import { startTestMesh, type Backend, type TestMesh } from "../helpers/mesh.js";
import { until } from "../helpers/wait.js";

// ---------------------------------------------------------------------------------------------
// The real order service (and catalog) in a test mesh; the active-order tracker under test is
// driven directly with observe(), as the tick writer drives it. A last suite streams pings over
// ReportLocations to a full mesh.

const { ARRIVED_RESTAURANT, LEFT_RESTAURANT, APPROACHING_CUSTOMER, ARRIVED_CUSTOMER } = GeofenceKind;
const RESTAURANT = { lat: 12.9716, lng: 77.5946 }; // fixtureRestaurant's location
const DOOR = NEARBY; // the delivery point, ~1.2 km away

type LatLng = { lat: number; lng: number };

function offset(p: LatLng, northM: number, eastM: number): LatLng {
  return {
    lat: p.lat + ((northM / EARTH_RADIUS_M) * 180) / Math.PI,
    lng: p.lng + ((eastM / (EARTH_RADIUS_M * Math.cos((p.lat * Math.PI) / 180))) * 180) / Math.PI,
  };
}

/** Deterministic small GPS noise (a few metres), so fixes are realistic but repeatable. */
function jitter(i: number): { n: number; e: number } {
  return { n: 4 * Math.sin(i * 1.7), e: 4 * Math.cos(i * 2.3) };
}

/** A driver's fixes: standing at p for seconds, or driving from a to b at speed, one a second from startMs. */
class Trace {
  fixes: AcceptedFix[] = [];
  constructor(readonly driverId: string, public atMs: number) {}
  private push(p: LatLng, speedMps: number) {
    const j = jitter(this.fixes.length);
    const q = offset(p, j.n, j.e);
    this.fixes.push({
      driverId: this.driverId,
      city: "bengaluru",
      lat: q.lat,
      lng: q.lng,
      accuracyM: 6,
      speedMps,
      headingDeg: 0,
      deviceTimeMs: this.atMs,
      receivedAtMs: this.atMs,
      sequence: BigInt(this.fixes.length + 1),
    });
    this.atMs += 1000;
  }
  stay(p: LatLng, seconds: number): AcceptedFix[] {
    const from = this.fixes.length;
    for (let i = 0; i < seconds; i++) this.push(p, 0);
    return this.fixes.slice(from);
  }
  drive(a: LatLng, b: LatLng, speedMps = 9): AcceptedFix[] {
    const from = this.fixes.length;
    const steps = Math.ceil((haversineKm(a.lng, a.lat, b.lng, b.lat) * 1000) / speedMps);
    for (let i = 1; i <= steps; i++) this.push({ lat: a.lat + ((b.lat - a.lat) * i) / steps, lng: a.lng + ((b.lng - a.lng) * i) / steps }, speedMps);
    return this.fixes.slice(from);
  }
}

async function geofenceEvents(redis: RedisPorts, orderId: string): Promise<Event[]> {
  const out: Event[] = [];
  let after: string | undefined;
  for (;;) {
    const page = await redis.eventLog.range(LOCATION_EVENTS_STREAM, after, 500);
    for (const e of page) {
      const ev = fromBinary(EventSchema, e.data);
      assert.equal(e.type, "geofence");
      assert.equal(e.eventId, ev.eventId);
      if (ev.orderId === orderId) out.push(ev);
    }
    if (page.length < 500) return out;
    after = page[page.length - 1]!.id;
  }
}

const kinds = (events: Event[]) => events.map((e) => (e.payload.case === "geofence" ? e.payload.value.kind : GeofenceKind.UNSPECIFIED));

/** Clients of one test mesh acting as the usual parties. */
interface Parties {
  customer: Client<typeof OrderService>;
  restaurant: Client<typeof OrderService>;
  ops: Client<typeof OrderService>;
  driver(id: string): Promise<Client<typeof OrderService>>;
}

async function parties(tm: TestMesh): Promise<Parties> {
  return {
    customer: await tm.client(OrderService, "connect", "customer", `cust-${uniqueId()}`),
    restaurant: await tm.client(OrderService, "connect", "restaurant", "tablet-1", tm.restaurantId),
    ops: await tm.client(OrderService, "connect", "ops", "op-1"),
    driver: (id) => tm.client(OrderService, "connect", "driver", id),
  };
}

async function placeAndAccept(tm: TestMesh, p: Parties, door: LatLng = DOOR): Promise<Order> {
  const placed = await p.customer.placeOrder(
    {
      restaurantId: tm.restaurantId,
      lines: [{ itemId: `${tm.restaurantId}-dosa`, quantity: 1, optionIds: [], note: "" }],
      delivery: { location: door, addressLine: "Church Street 5", instructions: "" },
      tipMinor: 0n, paymentToken: "tok_visa",
    },
    { headers: { "idempotency-key": uniqueId() } },
  );
  await p.restaurant.acceptOrder({ orderId: placed.order!.id, prepMinutes: 10 });
  return placed.order!;
}

function assertNear(actual: LatLng, expected: LatLng) {
  assert.ok(haversineKm(actual.lng, actual.lat, expected.lng, expected.lat) < 0.001, `${JSON.stringify(actual)} is not ${JSON.stringify(expected)}`);
}

// ---------------------------------------------------------------------------------------------

for (const backend of ["embedded", "real"] as Backend[]) {
  const label = backend === "embedded" ? "PGlite + in-process redis" : "Postgres + Redis";

  describe(`location ActiveOrders and geofences (${label})`, function () {
    this.timeout(60_000);
    let tm: TestMesh;
    let p: Parties;
    let redis: RedisPorts;
    let active: ActiveOrders;
    const others: ActiveOrders[] = [];
    const tracker = () =>
      createActiveOrders({
        redis,
        config: tm.config.location,
        logger: createLogger("silent"),
        order: () => createClient(OrderService, tm.mesh.peer("order")),
      });

    before(async function () {
      // Only catalog and order in the mesh: the tracker under test is the only member of its group.
      // Drivers may carry two orders at once (dispatch stacking).
      tm = await startTestMesh(backend, { services: ["catalog", "order"], dispatch: { ...defaultDispatchConfig, stackSize: 2 } });
      redis = tm.mesh.redis;
      p = await parties(tm);
      active = tracker();
      await active.start();
    });
    after(async () => {
      for (const o of others) await o.stop();
      await active?.stop();
      await tm?.close();
    });

    it("follows an order from assignment to delivery: cached assignment, geofence events, EN_ROUTE by itself, hash gone", async () => {
      const driverId = `drv-${uniqueId()}`;
      const driver = await p.driver(driverId);
      await active.attach(driverId);
      assert.deepEqual(active.get(driverId), []);

      const order = await placeAndAccept(tm, p);
      await p.ops.assignDriver({ orderId: order.id, driverId, fencingToken: 0n });
      // The consumer writes the hash and broadcasts; the cache of this (attached) driver follows.
      await until(() => active.get(driverId)[0]?.orderId === order.id, 10_000, "assignment cached");
      assert.equal(active.get(driverId).length, 1);
      const a = active.get(driverId)[0]!;
      assert.equal(a.driverId, driverId);
      assert.equal(a.customerId, order.customerId);
      assert.equal(a.restaurantId, tm.restaurantId);
      assert.equal(a.status, "CONFIRMED");
      assertNear(a.pickup, RESTAURANT);
      assertNear(a.dropoff, DOOR);
      assert.deepEqual(await active.lookup(driverId), [a]);

      const trace = new Trace(driverId, Date.now() - 600_000);
      active.observe(trace.drive(offset(RESTAURANT, -900, -400), RESTAURANT));
      active.observe(trace.stay(RESTAURANT, 30));
      await until(async () => kinds(await geofenceEvents(redis, order.id)).includes(ARRIVED_RESTAURANT), 10_000, "ARRIVED_RESTAURANT on the stream");

      await p.restaurant.startPreparing({ orderId: order.id });
      await p.restaurant.markReady({ orderId: order.id });
      active.observe(trace.stay(RESTAURANT, 60)); // waiting for the food: nothing new
      await driver.confirmPickup({ orderId: order.id });
      await until(() => active.get(driverId)[0]?.status === "PICKED_UP", 10_000, "PICKED_UP cached");

      // Leaving with the food: the order becomes EN_ROUTE without anyone calling MarkEnRoute.
      active.observe(trace.drive(RESTAURANT, DOOR));
      await until(async () => (await p.customer.getOrder({ orderId: order.id })).order?.status === OrderStatus.EN_ROUTE, 10_000, "order EN_ROUTE");
      await until(() => active.get(driverId)[0]?.status === "EN_ROUTE", 10_000, "EN_ROUTE cached");
      active.observe(trace.stay(DOOR, 40));
      await until(async () => kinds(await geofenceEvents(redis, order.id)).includes(ARRIVED_CUSTOMER), 10_000, "ARRIVED_CUSTOMER on the stream");

      const events = await geofenceEvents(redis, order.id);
      assert.deepEqual(kinds(events), [ARRIVED_RESTAURANT, LEFT_RESTAURANT, APPROACHING_CUSTOMER, ARRIVED_CUSTOMER]);
      assert.equal(new Set(events.map((e) => e.eventId)).size, 4);
      for (const e of events) {
        assert.equal(e.actor?.role, ActorRole.SERVICE);
        assert.equal(e.actor?.id, "location");
        assert.ok(e.occurredAt && e.occurredAt.seconds > 0n);
        assert.equal(e.payload.case, "geofence");
        if (e.payload.case !== "geofence") continue;
        assert.equal(e.payload.value.driverId, driverId);
        assert.ok(e.payload.value.location);
      }
      const left = events[1]!;
      if (left.payload.case === "geofence") {
        const loc = left.payload.value.location!;
        assert.ok(haversineKm(loc.lng, loc.lat, RESTAURANT.lng, RESTAURANT.lat) * 1000 >= tm.config.location.geofence.restaurantExitM);
      }
      await driver.confirmDelivery({ orderId: order.id });
      await until(async () => (await active.lookup(driverId)).length === 0, 10_000, "order gone from Redis after delivery");
      await until(() => active.get(driverId).length === 0, 10_000, "cache cleared after delivery");
      assert.deepEqual(await redis.kv.hgetall(driverActiveKey(driverId)), {});
      active.detach(driverId);
    });

    it("runs stacked orders side by side: fences per order, each order EN_ROUTE by itself, one delivery keeps the other", async () => {
      const driverId = `drv-${uniqueId()}`;
      const driver = await p.driver(driverId);
      await active.attach(driverId);
      // Two orders from the restaurant to doors in opposite directions.
      const farDoor = offset(RESTAURANT, -1500, 0);
      const a = await placeAndAccept(tm, p);
      const b = await placeAndAccept(tm, p, farDoor);
      await p.ops.assignDriver({ orderId: a.id, driverId, fencingToken: 0n });
      await p.ops.assignDriver({ orderId: b.id, driverId, fencingToken: 0n });
      const carried = () => active.get(driverId).map((x) => [x.orderId, x.status]);
      await until(() => carried().length === 2, 10_000, "both orders cached");
      assert.deepEqual(carried(), [[a.id, "CONFIRMED"], [b.id, "CONFIRMED"]], "oldest assignment first");
      const [ca, cb] = active.get(driverId);
      assertNear(ca!.dropoff, DOOR);
      assertNear(cb!.dropoff, farDoor);
      assert.deepEqual(await active.lookup(driverId), active.get(driverId));

      const trace = new Trace(driverId, Date.now() - 900_000);
      active.observe(trace.drive(offset(RESTAURANT, -900, -400), RESTAURANT));
      active.observe(trace.stay(RESTAURANT, 30));
      for (const o of [a, b]) await until(async () => kinds(await geofenceEvents(redis, o.id)).includes(ARRIVED_RESTAURANT), 10_000, "ARRIVED_RESTAURANT for each order");
      await until(async () => {
        const h = await redis.kv.hgetall(driverActiveKey(driverId));
        return [a, b].every((o) => /:2$/.test(h[`f:${o.id}`] ?? ""));
      }, 10_000, "each order's fences persisted");

      for (const o of [a, b]) {
        await p.restaurant.startPreparing({ orderId: o.id });
        await p.restaurant.markReady({ orderId: o.id });
        await driver.confirmPickup({ orderId: o.id });
      }
      await until(() => carried().every(([, s]) => s === "PICKED_UP"), 10_000, "both PICKED_UP cached");

      // Leaving with both: each order becomes EN_ROUTE by its own LEFT_RESTAURANT.
      active.observe(trace.drive(RESTAURANT, DOOR));
      for (const o of [a, b]) {
        await until(async () => (await p.ops.getOrder({ orderId: o.id })).order?.status === OrderStatus.EN_ROUTE, 10_000, "each order EN_ROUTE");
      }
      active.observe(trace.stay(DOOR, 40));
      await until(async () => kinds(await geofenceEvents(redis, a.id)).includes(ARRIVED_CUSTOMER), 10_000, "ARRIVED_CUSTOMER for the first order");
      assert.deepEqual(kinds(await geofenceEvents(redis, a.id)), [ARRIVED_RESTAURANT, LEFT_RESTAURANT, APPROACHING_CUSTOMER, ARRIVED_CUSTOMER]);
      assert.deepEqual(kinds(await geofenceEvents(redis, b.id)), [ARRIVED_RESTAURANT, LEFT_RESTAURANT], "the other customer's fences are its own");

      // Delivering the first removes only it.
      await driver.confirmDelivery({ orderId: a.id });
      await until(() => carried().length === 1, 10_000, "the delivered order dropped from the cache");
      assert.deepEqual(carried(), [[b.id, "EN_ROUTE"]]);
      assert.deepEqual((await active.lookup(driverId)).map((x) => x.orderId), [b.id]);
      const h = await redis.kv.hgetall(driverActiveKey(driverId));
      assert.deepEqual(Object.keys(h).sort(), [`f:${b.id}`, `o:${b.id}`]);

      // The second order's fences go on.
      active.observe(trace.drive(DOOR, farDoor));
      active.observe(trace.stay(farDoor, 40));
      await until(async () => kinds(await geofenceEvents(redis, b.id)).includes(ARRIVED_CUSTOMER), 10_000, "ARRIVED_CUSTOMER for the second order");
      assert.deepEqual(kinds(await geofenceEvents(redis, b.id)), [ARRIVED_RESTAURANT, LEFT_RESTAURANT, APPROACHING_CUSTOMER, ARRIVED_CUSTOMER]);
      assert.deepEqual(kinds(await geofenceEvents(redis, a.id)), [ARRIVED_RESTAURANT, LEFT_RESTAURANT, APPROACHING_CUSTOMER, ARRIVED_CUSTOMER], "nothing more for the delivered order");
      await driver.confirmDelivery({ orderId: b.id });
      await until(() => carried().length === 0, 10_000, "cache empty after both deliveries");
      assert.deepEqual(await redis.kv.hgetall(driverActiveKey(driverId)), {});
      active.detach(driverId);
    });

    it("keeps the fence state in Redis: a driver reconnecting to another process does not repeat a crossing", async () => {
      const driverId = `drv-${uniqueId()}`;
      const driver = await p.driver(driverId);
      const order = await placeAndAccept(tm, p);
      await p.ops.assignDriver({ orderId: order.id, driverId, fencingToken: 0n });
      await until(async () => (await active.lookup(driverId))[0]?.orderId === order.id, 10_000, "assignment in Redis");

      await active.attach(driverId);
      const trace = new Trace(driverId, Date.now() - 600_000);
      active.observe(trace.stay(RESTAURANT, 30));
      await until(async () => kinds(await geofenceEvents(redis, order.id)).includes(ARRIVED_RESTAURANT), 10_000, "ARRIVED_RESTAURANT");
      const fenceOf = async () => (await redis.kv.hgetall(driverActiveKey(driverId)))[`f:${order.id}`] ?? "";
      await until(async () => /:2$/.test(await fenceOf()), 10_000, "fence state persisted");
      assert.match(await fenceOf(), new RegExp(`^\\d+\\|1\\d\\d:${1 << ARRIVED_RESTAURANT}$`));

      // The stream moves to another process: it loads the assignment and the fences from Redis.
      active.detach(driverId);
      const other = tracker();
      others.push(other);
      await other.attach(driverId);
      assert.deepEqual(other.get(driverId).map((x) => x.orderId), [order.id]);
      other.observe(trace.stay(RESTAURANT, 60)); // still at the restaurant: already arrived
      await p.restaurant.startPreparing({ orderId: order.id });
      await p.restaurant.markReady({ orderId: order.id });
      await driver.confirmPickup({ orderId: order.id });
      // This process is not started (no broadcasts); its periodic refresh is off too, so attach again to reload.
      await until(async () => {
        await other.attach(driverId);
        return other.get(driverId)[0]?.status === "PICKED_UP";
      }, 10_000, "PICKED_UP loaded");
      other.observe(trace.drive(RESTAURANT, offset(RESTAURANT, 0, 600)));
      await until(async () => (await p.customer.getOrder({ orderId: order.id })).order?.status === OrderStatus.EN_ROUTE, 10_000, "order EN_ROUTE");
      // Effects start in queue order on one connection: LEFT being visible means an earlier (wrong) ARRIVED would be too.
      await until(async () => kinds(await geofenceEvents(redis, order.id)).includes(LEFT_RESTAURANT), 10_000, "LEFT_RESTAURANT");
      assert.deepEqual(kinds(await geofenceEvents(redis, order.id)), [ARRIVED_RESTAURANT, LEFT_RESTAURANT]);
    });

    it("a driver who marked EN_ROUTE first: LEFT_RESTAURANT is still reported and the order is unharmed", async () => {
      const driverId = `drv-${uniqueId()}`;
      const driver = await p.driver(driverId);
      const order = await placeAndAccept(tm, p);
      await p.ops.assignDriver({ orderId: order.id, driverId, fencingToken: 0n });
      await p.restaurant.startPreparing({ orderId: order.id });
      await p.restaurant.markReady({ orderId: order.id });
      await driver.confirmPickup({ orderId: order.id });
      await active.attach(driverId);
      await until(async () => {
        await active.attach(driverId);
        return active.get(driverId)[0]?.status === "PICKED_UP";
      }, 10_000, "PICKED_UP cached");
      await driver.markEnRoute({ orderId: order.id }); // the app's button, before the geofence sees it
      const trace = new Trace(driverId, Date.now() - 600_000);
      // The cache may still say PICKED_UP: MarkEnRoute then meets FAILED_PRECONDITION, which is fine.
      active.observe([...trace.stay(RESTAURANT, 20), ...trace.drive(RESTAURANT, offset(RESTAURANT, 600, 0))]);
      await until(async () => kinds(await geofenceEvents(redis, order.id)).includes(LEFT_RESTAURANT), 10_000, "LEFT_RESTAURANT");
      const o = (await p.customer.getOrder({ orderId: order.id })).order!;
      assert.equal(o.status, OrderStatus.EN_ROUTE);
      assert.equal(o.driverId, driverId);
      active.detach(driverId);
    });

    it("removes the assignment on unassignment and cancellation; an older event delivered again does not revive it", async () => {
      const driverId = `drv-${uniqueId()}`;
      await active.attach(driverId);
      const o1 = await placeAndAccept(tm, p);
      await p.ops.assignDriver({ orderId: o1.id, driverId, fencingToken: 0n });
      await until(() => active.get(driverId)[0]?.orderId === o1.id, 10_000, "assignment cached");
      await p.ops.unassignDriver({ orderId: o1.id, driverId, reason: "released" });
      await until(() => active.get(driverId).length === 0, 10_000, "unassignment cached");
      assert.deepEqual(await active.lookup(driverId), []);

      // At least once: the driver_assigned entry of o1 arrives again (a new entry id and event id,
      // so only the per-order sequence tells it is old).
      const entries = await redis.eventLog.range(ORDER_EVENTS_STREAM, undefined, 10_000);
      const assigned = entries.find((e) => {
        const ev = fromBinary(EventSchema, e.data);
        return ev.orderId === o1.id && ev.payload.case === "driverAssigned";
      })!;
      assert.ok(assigned);
      await redis.eventLog.append(ORDER_EVENTS_STREAM, { type: assigned.type, key: assigned.key, eventId: `${assigned.eventId}-again-${uniqueId()}`, data: assigned.data });
      // A later assignment of another driver is handled after it (one consumer, stream order).
      const sentinel = `drv-${uniqueId()}`;
      await active.attach(sentinel);
      const o2 = await placeAndAccept(tm, p);
      await p.ops.assignDriver({ orderId: o2.id, driverId: sentinel, fencingToken: 0n });
      await until(() => active.get(sentinel)[0]?.orderId === o2.id, 10_000, "sentinel assignment cached");
      assert.deepEqual(await active.lookup(driverId), [], "the old assignment stayed ended");
      assert.deepEqual(active.get(driverId), []);

      // Cancelled while assigned: the released driver's hash goes (the cancelled snapshot no longer names the driver).
      await p.ops.cancelOrder({ orderId: o2.id, reason: "test" });
      await until(() => active.get(sentinel).length === 0, 10_000, "cancellation cached");
      assert.deepEqual(await active.lookup(sentinel), []);

      // The same driver can be assigned again (a later sequence), even to the order it was unassigned from.
      await p.ops.assignDriver({ orderId: o1.id, driverId, fencingToken: 0n });
      await until(() => active.get(driverId)[0]?.orderId === o1.id, 10_000, "re-assignment cached");
      active.detach(driverId);
      active.detach(sentinel);
    });

    it("keeps attached drivers current by the periodic refresh when a broadcast is missed", async () => {
      // A real driver's hash, copied behind the tracker's back (without the broadcast) to an attached driver.
      const source = `drv-${uniqueId()}`;
      const order = await placeAndAccept(tm, p);
      await p.ops.assignDriver({ orderId: order.id, driverId: source, fencingToken: 0n });
      await until(async () => (await active.lookup(source)).length === 1, 10_000, "source assignment in Redis");
      const driverId = `drv-${uniqueId()}`;
      await active.attach(driverId);
      await redis.kv.hset(driverActiveKey(driverId), await redis.kv.hgetall(driverActiveKey(source)));
      await until(() => active.get(driverId)[0]?.orderId === order.id, 10_000, "refresh picked the hash up");
      await redis.kv.del(driverActiveKey(driverId));
      await until(() => active.get(driverId).length === 0, 10_000, "refresh dropped it");
      // A broadcast of a driver this process does not host is ignored; detach forgets.
      active.detach(driverId);
      await redis.channels.publish(DRIVER_ACTIVE_CHANNEL, new TextEncoder().encode(driverId));
      assert.deepEqual(active.get(driverId), []);
      await p.ops.cancelOrder({ orderId: order.id, reason: "test" });
    });

    it("observe never throws and ignores drivers it does not host or that carry nothing", () => {
      const fix: AcceptedFix = {
        driverId: "nobody",
        city: "bengaluru",
        lat: Number.NaN,
        lng: 500,
        accuracyM: -1,
        speedMps: 0,
        headingDeg: 0,
        deviceTimeMs: Number.NaN,
        receivedAtMs: 0,
        sequence: 1n,
      };
      active.observe([fix]);
      active.observe([]);
    });

    it("acks the order events it handled in its own consumer group", async () => {
      assert.equal(ACTIVE_ORDERS_GROUP, "location-active-orders");
      await until(async () => (await redis.eventLog.pendingCount(ORDER_EVENTS_STREAM, ACTIVE_ORDERS_GROUP)) === 0, 10_000, "nothing pending");
    });
  });

  describe(`location geofences over ReportLocations (${label})`, function () {
    this.timeout(60_000);
    let tm: TestMesh;

    before(async function () {
      tm = await startTestMesh(backend);
    });
    after(async () => {
      await tm?.close();
    });

    it("a driver streaming pings away from the restaurant after pickup moves the order to EN_ROUTE", async () => {
      const p = await parties(tm);
      const driverId = `drv-${uniqueId()}`;
      const driver = await p.driver(driverId);
      const order = await placeAndAccept(tm, p);
      await p.ops.assignDriver({ orderId: order.id, driverId, fencingToken: 0n });
      await p.restaurant.startPreparing({ orderId: order.id });
      await p.restaurant.markReady({ orderId: order.id });
      await driver.confirmPickup({ orderId: order.id });
      const location = tm.mesh.modules.get("location") as LocationModule;
      await until(async () => (await location.parts.activeOrders.lookup(driverId))[0]?.status === "PICKED_UP", 10_000, "PICKED_UP in Redis");

      // Realistic pings, one a second of device time in the recent past (within maxPastMs),
      // ten to a message: at the restaurant, then driving off.
      const trace = new Trace(driverId, Date.now() - 180_000);
      const fixes = [...trace.stay(RESTAURANT, 15), ...trace.drive(RESTAURANT, offset(RESTAURANT, 0, 500), 8)];
      const pings: MessageInitShape<typeof PingSchema>[] = fixes.map((f) => ({
        location: { lat: f.lat, lng: f.lng },
        accuracyM: f.accuracyM,
        speedMps: f.speedMps,
        headingDeg: 90,
        deviceTime: timestampFromMs(f.deviceTimeMs),
        sequence: f.sequence,
      }));
      async function* messages(): AsyncIterable<MessageInitShape<typeof ReportLocationsRequestSchema>> {
        for (let i = 0; i < pings.length; i += 10) yield { pings: pings.slice(i, i + 10) };
      }
      const stream = await tm.client(LocationService, "connect-grpc", "driver", driverId);
      const summary = await stream.reportLocations(messages());
      assert.equal(Number(summary.accepted), pings.length, JSON.stringify(summary.rejectedByReason));

      await until(async () => (await p.customer.getOrder({ orderId: order.id })).order?.status === OrderStatus.EN_ROUTE, 10_000, "order EN_ROUTE");
      await until(async () => kinds(await geofenceEvents(tm.mesh.redis, order.id)).includes(LEFT_RESTAURANT), 10_000, "LEFT_RESTAURANT");
      const k = kinds(await geofenceEvents(tm.mesh.redis, order.id));
      assert.equal(k.filter((x) => x === LEFT_RESTAURANT).length, 1);
      assert.ok(!k.includes(ARRIVED_RESTAURANT), "arrival is reported only before pickup");
      assert.ok(!k.includes(APPROACHING_CUSTOMER) || k.indexOf(APPROACHING_CUSTOMER) > k.indexOf(LEFT_RESTAURANT));
    });
  });
}
