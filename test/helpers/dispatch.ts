import { create } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { Client } from "@connectrpc/connect";
import { VehicleType, type Offer } from "../../gen/dabba/dispatch/v1/dispatch_pb.js";
import { DispatchService, type GetDispatchStateResponse, type StreamOffersResponse } from "../../gen/dabba/dispatch/v1/dispatch_service_pb.js";
import { PingSchema } from "../../gen/dabba/location/v1/location_pb.js";
import { LocationService } from "../../gen/dabba/location/v1/location_service_pb.js";
import { OrderStatus, type Order } from "../../gen/dabba/order/v1/order_pb.js";
import { OrderService } from "../../gen/dabba/order/v1/order_service_pb.js";
import { driverStateKey } from "../../services/dispatch/keys.js";
import { uniqueId } from "./backends.js";
import { NEARBY } from "./fixtures.js";
import type { ClientKind, TestMesh } from "./mesh.js";
import { sleep, until } from "./wait.js";

/** The fixture restaurant's location. */
export const RESTAURANT = { lat: 12.9716, lng: 77.5946 };

/** A simulated driver: dispatch client, reported position, and the offers seen on its stream. */
export interface TestDriver {
  id: string;
  dispatch: Client<typeof DispatchService>;
  messages: StreamOffersResponse[];
  /** Offers received (not withdrawn ones' ids). */
  offers(): Offer[];
  /** Offers received for one order. */
  offersFor(orderId: string): Offer[];
  withdrawn(): string[];
  /** Reports one fix at p, taken at atMs (default now). */
  moveTo(p: { lat: number; lng: number }, atMs?: number): Promise<void>;
  /** Closes the offer stream. */
  close(): void;
}

let seq = 0;

/**
 * Puts a driver online at p with an open offer stream. p null: online without any reported
 * position. fixAgeMs: the one fix is dated that long ago (a stale position).
 */
export async function startDriver(
  tm: TestMesh,
  p: { lat: number; lng: number } | null,
  opts: { id?: string; vehicle?: VehicleType; kind?: ClientKind; fixAgeMs?: number } = {},
): Promise<TestDriver> {
  const id = opts.id ?? `drv-${uniqueId()}`;
  const kind = opts.kind ?? "connect-grpc";
  const dispatch = await tm.client(DispatchService, kind, "driver", id);
  const location = await tm.client(LocationService, kind, "driver", id);
  await dispatch.goOnline({ city: "bengaluru", vehicleType: opts.vehicle ?? VehicleType.SCOOTER });
  const moveTo = async (q: { lat: number; lng: number }, atMs = Date.now()) => {
    const ping = create(PingSchema, { location: q, accuracyM: 5, speedMps: 0, headingDeg: 0, deviceTime: timestampFromMs(atMs), sequence: BigInt(++seq) });
    await location.reportLocations((async function* () { yield { pings: [ping] }; })());
  };
  if (p) await moveTo(p, Date.now() - (opts.fixAgeMs ?? 0));
  const messages: StreamOffersResponse[] = [];
  const abort = new AbortController();
  const stream = dispatch.streamOffers({}, { signal: abort.signal });
  void (async () => {
    try {
      for await (const m of stream) messages.push(m);
    } catch {
      // closed by the test
    }
  })();
  // The stream is open once the server handled it; a short settle lets the subscription land.
  await new Promise((r) => setTimeout(r, 50));
  return {
    id,
    dispatch,
    messages,
    offers: () => messages.filter((m) => m.offer).map((m) => m.offer!),
    offersFor: (orderId) => messages.filter((m) => m.offer?.orderId === orderId).map((m) => m.offer!),
    withdrawn: () => messages.filter((m) => m.withdrawnOfferId).map((m) => m.withdrawnOfferId),
    moveTo,
    close: () => abort.abort(),
  };
}

/** Waits until the driver has received n offers; returns the last. */
export async function nextOffer(d: TestDriver, n = 1, ms = 10_000): Promise<Offer> {
  await until(() => d.offers().length >= n, ms, `offer #${n} for ${d.id}`);
  return d.offers()[n - 1]!;
}

export interface OrderParties {
  customer: Client<typeof OrderService>;
  restaurant: Client<typeof OrderService>;
  ops: Client<typeof OrderService>;
  customerId: string;
}

export async function orderParties(tm: TestMesh): Promise<OrderParties> {
  const customerId = `cust-${uniqueId()}`;
  return {
    customer: await tm.client(OrderService, "connect-grpc", "customer", customerId),
    restaurant: await tm.client(OrderService, "connect-grpc", "restaurant", "tablet-1", tm.restaurantId),
    ops: await tm.client(OrderService, "connect-grpc", "ops", "op-1"),
    customerId,
  };
}

/** Places an order at the fixture restaurant (or restaurantId, a fixtureRestaurant) and has the restaurant confirm it. */
export async function placeConfirmed(tm: TestMesh, p: OrderParties, prepMinutes = 10, restaurantId = tm.restaurantId): Promise<Order> {
  const restaurant = restaurantId === tm.restaurantId ? p.restaurant : await tm.client(OrderService, "connect-grpc", "restaurant", "tablet-1", restaurantId);
  const placed = await p.customer.placeOrder(
    {
      restaurantId,
      lines: [{ itemId: `${restaurantId}-dosa`, quantity: 1, optionIds: [], note: "" }],
      delivery: { location: NEARBY, addressLine: "Church Street 5", instructions: "" },
      tipMinor: 0n, paymentToken: "tok_visa",
    },
    { headers: { "idempotency-key": uniqueId() } },
  );
  const { order } = await restaurant.acceptOrder({ orderId: placed.order!.id, prepMinutes });
  return order!;
}

/** Waits until the driver has an offer for orderId; returns the latest one. */
export async function offerFor(d: TestDriver, orderId: string, ms = 10_000): Promise<Offer> {
  await until(() => d.offersFor(orderId).length > 0, ms, `an offer of ${orderId} for ${d.id}`);
  const all = d.offersFor(orderId);
  return all[all.length - 1]!;
}

/** Polls an RPC-backed condition more gently than `until` (which polls every 5 ms). */
export async function eventually(cond: () => boolean | Promise<boolean>, ms = 10_000, what = "condition"): Promise<void> {
  const end = Date.now() + ms;
  while (!(await cond())) {
    if (Date.now() > end) throw new Error(`${what} not met within ${ms} ms`);
    await sleep(25);
  }
}

/** Dispatch's per-driver hash (online, counters such as no_shows), read straight from Redis. */
export async function driverCounters(tm: TestMesh, driverId: string): Promise<Record<string, string>> {
  return tm.mesh.redis.kv.hgetall(driverStateKey(driverId));
}

/**
 * The drivers and orders of one test, undone after it: orders are cancelled by ops (their
 * dispatch jobs seen cancelled, so no round of theirs can reach the next test's drivers),
 * drivers go offline and their streams close. Never throws: a cleanup problem is logged so that
 * it does not abort the tests after it.
 */
export interface DispatchScope {
  ops: { dispatch: Client<typeof DispatchService>; order: Client<typeof OrderService> };
  parties: OrderParties;
  driver(p: { lat: number; lng: number } | null, opts?: Parameters<typeof startDriver>[2]): Promise<TestDriver>;
  /** placeConfirmed with the scope's parties, once dispatch has taken it in; cancelled at cleanup. */
  order(prepMinutes?: number, restaurantId?: string): Promise<Order>;
  /** An order's dispatch state (ops). */
  state(orderId: string): Promise<GetDispatchStateResponse>;
  /** The order as ops sees it now (with timeline). */
  getOrder(orderId: string): Promise<Order>;
  cleanup(): Promise<void>;
}

export async function dispatchScope(tm: TestMesh): Promise<DispatchScope> {
  const drivers: TestDriver[] = [];
  const orders: string[] = [];
  const ops = {
    dispatch: await tm.client(DispatchService, "connect-grpc", "ops", "op-1"),
    order: await tm.client(OrderService, "connect-grpc", "ops", "op-1"),
  };
  const parties = await orderParties(tm);
  const terminal = new Set([OrderStatus.DELIVERED, OrderStatus.CANCELLED]);
  return {
    ops,
    parties,
    async driver(p, opts) {
      const d = await startDriver(tm, p, opts);
      drivers.push(d);
      return d;
    },
    async order(prepMinutes = 10, restaurantId) {
      const o = await placeConfirmed(tm, parties, prepMinutes, restaurantId);
      orders.push(o.id);
      // Dispatch learns of the confirmation from the order event stream, a moment later.
      await eventually(() => ops.dispatch.getDispatchState({ orderId: o.id }).then(() => true, () => false), 10_000, `dispatch of ${o.id}`);
      return o;
    },
    state: (orderId) => ops.dispatch.getDispatchState({ orderId }),
    getOrder: async (orderId) => (await ops.order.getOrder({ orderId })).order!,
    async cleanup() {
      const ids = orders.splice(0);
      try {
        for (const id of ids) {
          const { order } = await ops.order.getOrder({ orderId: id });
          if (order && !terminal.has(order.status)) await ops.order.cancelOrder({ orderId: id, reason: "test cleanup" }).catch(() => {});
        }
        const open = async () => {
          if (ids.length === 0) return [];
          const rows = await tm.mesh.db.kysely.selectFrom("dispatch_jobs").select(["order_id", "state"]).where("order_id", "in", ids).execute();
          const done = new Set(rows.filter((r: { state: string }) => r.state === "cancelled" || r.state === "delivered").map((r: { order_id: string }) => r.order_id));
          return ids.filter((id) => !done.has(id));
        };
        // One budget for all: a dispatch that never sees the cancellation must not stall the suite.
        await eventually(async () => (await open()).length === 0, 5000, "dispatch of the test's orders cancelled").catch(async () => {
          console.warn(`dispatch test cleanup: still dispatching ${(await open()).join(", ")}`);
        });
      } catch (err) {
        console.warn(`dispatch test cleanup: ${(err as Error).message}`);
      }
      for (const d of drivers.splice(0)) {
        await d.dispatch.goOffline({}).catch((err: Error) => console.warn(`dispatch test cleanup: ${d.id} GoOffline: ${err.message}`));
        d.close();
      }
    },
  };
}
