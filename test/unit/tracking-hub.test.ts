import assert from "node:assert/strict";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createContextValues, createHandlerContext, type Client } from "@connectrpc/connect";
import fc from "fast-check";
import { ActorRole } from "../../gen/dabba/common/v1/common_pb.js";
import { EventSchema } from "../../gen/dabba/events/v1/events_pb.js";
import { DriverPositionSchema } from "../../gen/dabba/location/v1/location_pb.js";
import { OrderSchema, OrderStatus, TimelineEntrySchema, TimelineKind, type Order } from "../../gen/dabba/order/v1/order_pb.js";
import type { OrderService } from "../../gen/dabba/order/v1/order_service_pb.js";
import { TrackingService, TrackOrderRequestSchema } from "../../gen/dabba/tracking/v1/tracking_service_pb.js";
import { principalKey } from "../../services/platform/auth.js";
import { defaultTrackingConfig, type TrackingConfig } from "../../services/platform/config.js";
import { createLogger } from "../../services/platform/logger.js";
import { openRedis, type Channels } from "../../services/platform/redis.js";
import { encodeEvent, encodePosition, trackingChannel, type TrackingSignal } from "../../services/tracking/channel.js";
import { OPENING_CONCURRENCY, parseLastEventId, timelineEntryOf, trackOrder } from "../../services/tracking/handlers/track-order.js";
import { createTrackingHub } from "../../services/tracking/hub.js";
import { until } from "../helpers/wait.js";

/** Which subscribe / unsubscribe calls are waiting for the test to let them finish. */
interface Gate {
  kind: "subscribe" | "unsubscribe";
  channel: string;
  release(): void;
  fail(err: Error): void;
}

/**
 * Channels whose subscribe and unsubscribe only complete when the test releases them, so the
 * hub's join/leave races can be played in any order. Tracks what Redis would see.
 */
function gatedChannels() {
  const gates: Gate[] = [];
  const handlers = new Map<string, Set<(d: Uint8Array) => void>>();
  let calls = { subscribe: 0, unsubscribe: 0 };
  const channels: Channels = {
    async publish(channel, data) {
      for (const h of handlers.get(channel) ?? []) h(data);
    },
    subscribe(channel, handler) {
      calls.subscribe++;
      return new Promise((resolve, reject) => {
        gates.push({
          kind: "subscribe",
          channel,
          fail: reject,
          release() {
            let set = handlers.get(channel);
            if (!set) handlers.set(channel, (set = new Set()));
            set.add(handler);
            resolve(
              () =>
                new Promise<void>((res, rej) => {
                  calls.unsubscribe++;
                  gates.push({
                    kind: "unsubscribe",
                    channel,
                    fail: rej,
                    release() {
                      set.delete(handler);
                      if (set.size === 0) handlers.delete(channel);
                      res();
                    },
                  });
                }),
            );
          },
        });
      });
    },
    subscribedCount: () => handlers.size,
  };
  /** Lets queued microtasks run (the hub's chain hops a few promises per step). */
  const flush = async () => {
    for (let i = 0; i < 20; i++) await Promise.resolve();
  };
  return {
    channels,
    gates,
    calls: () => calls,
    handlersOn: (channel: string) => handlers.get(channel)?.size ?? 0,
    flush,
    /** Releases the oldest waiting gate. */
    async next(kind?: Gate["kind"]): Promise<Gate> {
      await flush();
      const g = gates.shift();
      assert.ok(g, "a subscribe or unsubscribe is waiting");
      if (kind) assert.equal(g.kind, kind);
      g.release();
      await flush();
      return g;
    },
    /** Releases everything until nothing waits. */
    async drain(): Promise<void> {
      await flush();
      while (gates.length > 0) {
        gates.shift()!.release();
        await flush();
      }
    },
    reset() {
      calls = { subscribe: 0, unsubscribe: 0 };
    },
  };
}

const position = (driverId: string, at: number) =>
  encodePosition(create(DriverPositionSchema, { driverId, location: { lat: 12.97, lng: 77.59 }, at: timestampFromMs(at) }));

describe("tracking hub", () => {
  it("holds one subscription per order however many watchers, decodes each message once for all of them", async () => {
    const redis = await openRedis({});
    try {
      const hub = createTrackingHub({ channels: redis.channels });
      const got: TrackingSignal[][] = [[], [], []];
      const a = hub.join("o1", (s) => got[0]!.push(s));
      const b = hub.join("o1", (s) => got[1]!.push(s));
      const c = hub.join("o2", (s) => got[2]!.push(s));
      await Promise.all([a.ready, b.ready, c.ready]);
      assert.equal(redis.channels.subscribedCount(), 2);
      assert.equal(hub.orderCount(), 2);
      assert.equal(hub.watcherCount(), 3);

      await redis.channels.publish(trackingChannel("o1"), position("d1", 1000));
      await redis.channels.publish(trackingChannel("o2"), position("d2", 2000));
      await new Promise((r) => setImmediate(r));
      assert.equal(got[0]!.length, 1);
      assert.equal(got[1]!.length, 1);
      assert.equal(got[0]![0], got[1]![0], "the same decoded signal object reaches both watchers");
      assert.equal(got[2]!.length, 1);
      assert.equal(got[2]![0]!.kind === "position" && got[2]![0]!.position.driverId, "d2");

      a.leave();
      a.leave(); // idempotent
      await hub.settled();
      assert.equal(redis.channels.subscribedCount(), 2, "o1 still has a watcher");
      b.leave();
      c.leave();
      await hub.settled();
      assert.equal(redis.channels.subscribedCount(), 0);
      assert.equal(hub.orderCount(), 0);
      assert.equal(hub.watcherCount(), 0);
    } finally {
      await redis.close();
    }
  });

  it("unsubscribes once the subscribe lands when the only watcher left while it was in flight", async () => {
    const g = gatedChannels();
    const hub = createTrackingHub({ channels: g.channels });
    const w = hub.join("o1", () => assert.fail("no signal after leaving"));
    await g.flush();
    assert.equal(g.gates[0]?.kind, "subscribe", "subscribe in flight");
    w.leave();
    assert.equal(hub.watcherCount(), 0);
    await g.next("subscribe");
    await w.ready;
    // The subscribe completed for nobody: it must not stay.
    await g.next("unsubscribe");
    await hub.settled();
    assert.equal(g.channels.subscribedCount(), 0);
    assert.equal(hub.orderCount(), 0);
    await g.channels.publish(trackingChannel("o1"), position("d", 1));
  });

  it("serves watchers that come and go during one in-flight subscribe with that one subscription", async () => {
    const g = gatedChannels();
    const hub = createTrackingHub({ channels: g.channels });
    const first = hub.join("o1", () => {});
    await g.flush();
    const second = hub.join("o1", () => {});
    second.leave();
    const third = hub.join("o1", () => {});
    await g.next("subscribe");
    await Promise.all([first.ready, second.ready, third.ready]);
    assert.deepEqual(g.calls(), { subscribe: 1, unsubscribe: 0 });
    first.leave();
    third.leave();
    await g.next("unsubscribe");
    await hub.settled();
    assert.deepEqual(g.calls(), { subscribe: 1, unsubscribe: 1 });
    assert.equal(hub.orderCount(), 0);
  });

  it("never subscribes for a watcher that left before its subscribe started", async () => {
    const g = gatedChannels();
    const hub = createTrackingHub({ channels: g.channels });
    const w = hub.join("o1", () => {});
    w.leave();
    await w.ready;
    await hub.settled();
    assert.deepEqual(g.calls(), { subscribe: 0, unsubscribe: 0 });
    assert.equal(hub.orderCount(), 0);
  });

  it("re-subscribes for a watcher that joins while the last one's unsubscribe is in flight", async () => {
    const g = gatedChannels();
    const hub = createTrackingHub({ channels: g.channels });
    const a = hub.join("o1", () => {});
    await g.next("subscribe");
    await a.ready;
    a.leave();
    await g.flush();
    assert.equal(g.gates[0]?.kind, "unsubscribe", "unsubscribe in flight");

    const got: TrackingSignal[] = [];
    const b = hub.join("o1", (s) => got.push(s));
    let ready = false;
    void b.ready.then(() => (ready = true));
    await g.next("unsubscribe");
    assert.equal(ready, false, "not ready on a subscription that is going away");
    assert.equal(hub.orderCount(), 1, "the order stays while a watcher waits");
    await g.next("subscribe");
    await b.ready;
    assert.equal(g.channels.subscribedCount(), 1);
    await g.channels.publish(trackingChannel("o1"), position("d", 5));
    assert.equal(got.length, 1);
    b.leave();
    await g.drain();
    await hub.settled();
    assert.equal(g.channels.subscribedCount(), 0);
    assert.equal(hub.orderCount(), 0);
  });

  it("rejects ready when the subscribe fails, leaves nothing behind, and a later join subscribes", async () => {
    const g = gatedChannels();
    const hub = createTrackingHub({ channels: g.channels });
    const a = hub.join("o1", () => {});
    await g.flush();
    g.gates.shift()!.fail(new Error("redis down"));
    await assert.rejects(a.ready, /redis down/);
    await hub.settled();
    assert.equal(hub.orderCount(), 0);
    assert.equal(hub.watcherCount(), 0);
    const b = hub.join("o1", () => {});
    await g.next("subscribe");
    await b.ready;
    assert.equal(g.channels.subscribedCount(), 1);
    b.leave();
    await g.drain();
  });

  it("drops undecodable messages and keeps serving other watchers when one throws", async () => {
    const redis = await openRedis({});
    try {
      const hub = createTrackingHub({ channels: redis.channels });
      const got: TrackingSignal[] = [];
      const bad = hub.join("o1", () => {
        throw new Error("watcher bug");
      });
      const good = hub.join("o1", (s) => got.push(s));
      await Promise.all([bad.ready, good.ready]);
      await redis.channels.publish(trackingChannel("o1"), new Uint8Array([9, 1, 2]));
      await redis.channels.publish(trackingChannel("o1"), encodeEvent(create(EventSchema, { eventId: "o1-2", orderId: "o1", sequence: 2n })));
      await new Promise((r) => setImmediate(r));
      assert.equal(got.length, 1);
      assert.equal(got[0]!.kind, "event");
      bad.leave();
      good.leave();
      await hub.settled();
    } finally {
      await redis.close();
    }
  });

  it("close() drops every subscription and refuses new watchers", async () => {
    const redis = await openRedis({});
    try {
      const hub = createTrackingHub({ channels: redis.channels });
      const ws = ["o1", "o2", "o2"].map((o) => hub.join(o, () => {}));
      await Promise.all(ws.map((w) => w.ready));
      await hub.close();
      assert.equal(redis.channels.subscribedCount(), 0);
      assert.equal(hub.orderCount(), 0);
      assert.equal(hub.watcherCount(), 0);
      for (const w of ws) w.leave(); // after close: no double counting
      assert.equal(hub.watcherCount(), 0);
      await assert.rejects(hub.join("o3", () => {}).ready, /closed/);
    } finally {
      await redis.close();
    }
  });

  it("ends every interleaving of joins, leaves and completions subscribed exactly to the watched orders", async () => {
    type Op = { op: "join"; order: number } | { op: "leave"; pick: number } | { op: "release"; pick: number };
    const opArb: fc.Arbitrary<Op> = fc.oneof(
      fc.record({ op: fc.constant("join" as const), order: fc.integer({ min: 0, max: 2 }) }),
      fc.record({ op: fc.constant("leave" as const), pick: fc.nat() }),
      fc.record({ op: fc.constant("release" as const), pick: fc.nat() }),
    );
    await fc.assert(
      fc.asyncProperty(fc.array(opArb, { maxLength: 40 }), async (ops) => {
        const g = gatedChannels();
        const hub = createTrackingHub({ channels: g.channels });
        const live: { order: string; leave(): void; got: number }[] = [];
        const readies: Promise<void>[] = [];
        for (const op of ops) {
          if (op.op === "join") {
            const entry = { order: `o${op.order}`, leave: () => {}, got: 0 };
            const w = hub.join(entry.order, () => entry.got++);
            entry.leave = w.leave;
            readies.push(w.ready);
            live.push(entry);
          } else if (op.op === "leave" && live.length > 0) {
            live.splice(op.pick % live.length, 1)[0]!.leave();
          } else if (op.op === "release" && g.gates.length > 0) {
            // Any waiting operation may finish first (different orders' calls are independent).
            g.gates.splice(op.pick % g.gates.length, 1)[0]!.release();
          }
          await g.flush();
        }
        await g.drain();
        await Promise.all(readies);
        await hub.settled();
        const watched = new Set(live.map((w) => w.order));
        assert.equal(g.channels.subscribedCount(), watched.size);
        for (const o of ["o0", "o1", "o2"]) assert.equal(g.handlersOn(trackingChannel(o)), watched.has(o) ? 1 : 0, o);
        assert.equal(hub.orderCount(), watched.size);
        assert.equal(hub.watcherCount(), live.length);
        for (const o of watched) await g.channels.publish(trackingChannel(o), position("d", 1));
        for (const w of live) assert.equal(w.got, 1, `watcher of ${w.order} got the message once`);
        for (const w of live) w.leave();
        await g.drain();
        await hub.settled();
        assert.equal(g.channels.subscribedCount(), 0);
        assert.equal(hub.orderCount(), 0);
      }),
      { numRuns: 300 },
    );
  });
});

describe("TrackOrder event mapping", () => {
  it("parses last_event_id of this order and refuses anything else naming the field", () => {
    assert.equal(parseLastEventId("ord-1", ""), undefined);
    assert.equal(parseLastEventId("ord-1", "ord-1-7"), 7n);
    assert.equal(parseLastEventId("a-b-c", "a-b-c-12"), 12n);
    for (const bad of ["7", "ord-1", "ord-1-", "ord-1-x", "ord-2-7", "pos-123", "ord-1--1", `ord-1-${"9".repeat(30)}`]) {
      assert.throws(() => parseLastEventId("ord-1", bad), /last_event_id/, bad);
    }
  });

  it("builds the timeline entry an event records, as GetOrder shows it", () => {
    const at = timestampFromMs(1_700_000_000_000);
    const base = { eventId: "o-4", orderId: "o", sequence: 4n, occurredAt: at, actor: { role: ActorRole.OPS, id: "op" } };
    const assigned = timelineEntryOf(
      create(EventSchema, { ...base, order: { status: OrderStatus.READY_FOR_PICKUP, driverId: "d1" }, payload: { case: "driverAssigned", value: { driverId: "d1" } } }),
    );
    assert.equal(assigned?.kind, TimelineKind.DRIVER_ASSIGNED);
    assert.equal(assigned?.status, OrderStatus.READY_FOR_PICKUP);
    assert.equal(assigned?.driverId, "d1");
    assert.equal(assigned?.sequence, 4n);
    assert.equal(assigned?.actor?.id, "op");
    assert.deepEqual(assigned?.at, at);

    const cancelled = timelineEntryOf(
      create(EventSchema, { ...base, order: { status: OrderStatus.CANCELLED }, payload: { case: "cancelled", value: { reason: "late", releasedDriverId: "d1" } } }),
    );
    assert.deepEqual([cancelled?.kind, cancelled?.status, cancelled?.reason, cancelled?.driverId], [TimelineKind.STATUS, OrderStatus.CANCELLED, "late", "d1"]);
    const rejected = timelineEntryOf(create(EventSchema, { ...base, payload: { case: "rejected", value: { reason: "closed" } } }));
    assert.deepEqual([rejected?.status, rejected?.reason], [OrderStatus.CANCELLED, "closed"]);
    const ready = timelineEntryOf(create(EventSchema, { ...base, payload: { case: "ready", value: {} } }));
    assert.deepEqual([ready?.kind, ready?.status, ready?.driverId], [TimelineKind.STATUS, OrderStatus.READY_FOR_PICKUP, ""]);
    assert.equal(timelineEntryOf(create(EventSchema, { ...base, payload: { case: "etaChanged", value: {} } })), undefined);
    assert.equal(timelineEntryOf(create(EventSchema, { ...base, payload: { case: "payment", value: {} } })), undefined);
  });
});

describe("TrackOrder handler (fake order service)", () => {
  const orderId = "ord-unit";
  const at = (ms: number) => timestampFromMs(1_700_000_000_000 + ms);
  const entry = (seq: number, status: OrderStatus, kind = TimelineKind.STATUS, driverId = "") =>
    create(TimelineEntrySchema, { kind, status, driverId, sequence: BigInt(seq), at: at(seq), actor: { role: ActorRole.RESTAURANT, id: "r1" } });
  const event = (seq: number, payload: MessageInitShape<typeof EventSchema>["payload"], order: { status: OrderStatus; driverId?: string }) =>
    encodeEvent(create(EventSchema, { eventId: `${orderId}-${seq}`, orderId, sequence: BigInt(seq), occurredAt: at(seq), actor: { role: ActorRole.RESTAURANT, id: "r1" }, order, payload }));

  async function setup(tracking: Partial<TrackingConfig> = {}) {
    const redis = await openRedis({});
    const hub = createTrackingHub({ channels: redis.channels });
    let order = create(OrderSchema, { id: orderId, customerId: "c1", restaurantId: "r1", status: OrderStatus.PLACED, timeline: [entry(1, OrderStatus.PLACED)] });
    let loads = 0;
    const orders = {
      async getOrder() {
        loads++;
        return { order };
      },
    } as unknown as Client<typeof OrderService>;
    const handler = trackOrder({
      tracking: { ...defaultTrackingConfig, ...tracking },
      redis,
      logger: createLogger("silent"),
      hub,
      orders: () => orders,
    });
    const ctx = createHandlerContext({
      service: TrackingService,
      method: TrackingService.method.trackOrder,
      protocolName: "test",
      requestMethod: "POST",
      url: "/",
      contextValues: createContextValues().set(principalKey, { role: "customer", sub: "c1" }),
    });
    const open = (lastEventId = "") => handler(create(TrackOrderRequestSchema, { orderId, lastEventId }), ctx)[Symbol.asyncIterator]();
    return {
      redis,
      hub,
      ctx,
      open,
      setOrder: (o: Partial<Order>) => (order = create(OrderSchema, { ...order, ...o })),
      loads: () => loads,
      publish: (data: Uint8Array) => redis.channels.publish(trackingChannel(orderId), data),
      async close() {
        ctx.abort();
        await hub.close();
        await redis.close();
      },
    };
  }

  it("fills a gap in the channel's sequence from the order's timeline", async () => {
    const s = await setup();
    try {
      const it = s.open();
      assert.equal((await it.next()).value?.update?.case, "snapshot");
      assert.equal(s.loads(), 1);
      // Event 2 was lost on the channel (published while this process was reconnecting); 3 arrives.
      s.setOrder({ status: OrderStatus.PREPARING, timeline: [entry(1, OrderStatus.PLACED), entry(2, OrderStatus.CONFIRMED), entry(3, OrderStatus.PREPARING)] });
      await s.publish(event(3, { case: "preparing", value: {} }, { status: OrderStatus.PREPARING }));
      const a = (await it.next()).value!;
      const b = (await it.next()).value!;
      assert.deepEqual([a.eventId, b.eventId], [`${orderId}-2`, `${orderId}-3`]);
      assert.equal(a.update?.case === "status" && a.update.value.status, OrderStatus.CONFIRMED);
      assert.equal(s.loads(), 2, "one reload for the gap");
      // A duplicate of an event already sent is skipped; the next one is sent without a reload.
      await s.publish(event(2, { case: "confirmed", value: {} }, { status: OrderStatus.CONFIRMED }));
      await s.publish(event(4, { case: "ready", value: {} }, { status: OrderStatus.READY_FOR_PICKUP }));
      const c = (await it.next()).value!;
      assert.equal(c.eventId, `${orderId}-4`);
      assert.equal(s.loads(), 2);
      await it.return?.(undefined);
      assert.equal(s.hub.watcherCount(), 0);
    } finally {
      await s.close();
    }
  });

  it("ends with the final status found in a gap, applying the assignment it holds", async () => {
    const s = await setup({ positionIntervalMs: 0 });
    try {
      const it = s.open();
      await it.next();
      s.setOrder({
        status: OrderStatus.CANCELLED,
        timeline: [entry(1, OrderStatus.PLACED), entry(2, OrderStatus.PLACED, TimelineKind.DRIVER_ASSIGNED, "d9"), entry(3, OrderStatus.CANCELLED)],
      });
      // Only a late ETA event arrives (sequence 4): 2 and 3 were lost; 3 ends the stream.
      await s.publish(encodeEvent(create(EventSchema, { eventId: `${orderId}-4`, orderId, sequence: 4n, payload: { case: "etaChanged", value: { eta: { minMinutes: 1, maxMinutes: 2 } } } })));
      const got: [string, boolean][] = [];
      for (let r = await it.next(); !r.done; r = await it.next()) got.push([r.value.eventId ?? "", r.value.final ?? false]);
      assert.deepEqual(got, [
        [`${orderId}-2`, false],
        [`${orderId}-3`, true],
      ]);
    } finally {
      await s.close();
    }
  });

  it("keeps only the newest position while the interval runs and sends it when the interval allows", async () => {
    const s = await setup({ positionIntervalMs: 60_000, heartbeatMs: 600_000 });
    try {
      s.setOrder({ status: OrderStatus.READY_FOR_PICKUP, driverId: "d1", timeline: [entry(1, OrderStatus.PLACED), entry(2, OrderStatus.READY_FOR_PICKUP, TimelineKind.DRIVER_ASSIGNED, "d1")] });
      const it = s.open();
      assert.equal((await it.next()).value?.update?.case, "snapshot");
      await s.publish(position("d1", 1000));
      const first = (await it.next()).value!;
      assert.equal(atMs(first), 1000);
      assert.equal(first.eventId, "", "positions are not resumable");
      // Within the (long) interval: nothing goes out, only the newest is kept.
      let next = it.next();
      for (const t of [3000, 2000, 5000, 4000]) await s.publish(position("d1", t));
      await s.publish(position("d2", 9000));
      const raced = await Promise.race([next, new Promise((r) => setTimeout(() => r("waiting"), 100))]);
      assert.equal(raced, "waiting", "no second position within the interval");
      // A status event is never held back by the position interval, and the position stays pending.
      await s.publish(event(3, { case: "pickedUp", value: { driverId: "d1" } }, { status: OrderStatus.PICKED_UP, driverId: "d1" }));
      const st = (await next).value!;
      assert.equal(st.eventId, `${orderId}-3`);
      await it.return?.(undefined);
    } finally {
      await s.close();
    }
  });

  it("builds at most OPENING_CONCURRENCY openings at once, in arrival order; a stream cancelled while waiting leaves at once", async () => {
    const redis = await openRedis({});
    const hub = createTrackingHub({ channels: redis.channels });
    const gates: (() => void)[] = [];
    const loaded: string[] = [];
    const orders = {
      async getOrder(req: { orderId: string }) {
        loaded.push(req.orderId);
        await new Promise<void>((r) => gates.push(r));
        return { order: create(OrderSchema, { id: req.orderId, customerId: "c1", restaurantId: "r1", status: OrderStatus.PLACED, timeline: [entry(1, OrderStatus.PLACED)] }) };
      },
    } as unknown as Client<typeof OrderService>;
    const handler = trackOrder({ tracking: defaultTrackingConfig, redis, logger: createLogger("silent"), hub, orders: () => orders });
    const streams = Array.from({ length: OPENING_CONCURRENCY + 3 }, (_, i) => {
      const ctx = createHandlerContext({
        service: TrackingService,
        method: TrackingService.method.trackOrder,
        protocolName: "test",
        requestMethod: "POST",
        url: "/",
        contextValues: createContextValues().set(principalKey, { role: "customer", sub: "c1" }),
      });
      const it = handler(create(TrackOrderRequestSchema, { orderId: `o${i}` }), ctx)[Symbol.asyncIterator]();
      return { ctx, it, first: it.next() };
    });
    try {
      await until(() => loaded.length === OPENING_CONCURRENCY, 5000, "the first openings load");
      await new Promise((r) => setTimeout(r, 50));
      assert.equal(loaded.length, OPENING_CONCURRENCY, "the others wait");
      // The second waiting stream is cancelled: it ends at once, without loading.
      const cancelled = streams[OPENING_CONCURRENCY + 1]!;
      cancelled.ctx.abort();
      await assert.rejects(cancelled.first, (err: unknown) => err instanceof ConnectError && err.code === Code.Canceled);
      // One opening finishes: the first waiter (not the cancelled one) takes its place.
      gates.shift()!();
      assert.equal((await streams[0]!.first).value?.update?.case, "snapshot");
      await until(() => loaded.length === OPENING_CONCURRENCY + 1, 5000, "the next opening loads");
      assert.equal(loaded.at(-1), `o${OPENING_CONCURRENCY}`);
      while (gates.length > 0) gates.shift()!();
      await until(() => loaded.length === OPENING_CONCURRENCY + 2, 5000, "the last opening loads");
      while (gates.length > 0) gates.shift()!();
      assert.deepEqual(loaded.slice(OPENING_CONCURRENCY), [`o${OPENING_CONCURRENCY}`, `o${OPENING_CONCURRENCY + 2}`]);
      for (const [i, st] of streams.entries()) {
        if (i === OPENING_CONCURRENCY + 1) continue;
        assert.equal((await st.first).value?.update?.case, "snapshot", `stream ${i}`);
      }
    } finally {
      for (const st of streams) st.ctx.abort();
      while (gates.length > 0) gates.shift()!();
      await Promise.all(streams.map((st) => st.it.return?.(undefined).catch(() => {})));
      await hub.close();
      await redis.close();
    }
  });

  it("sends the pending newest position as soon as the interval has passed", async () => {
    const s = await setup({ positionIntervalMs: 200, heartbeatMs: 600_000 });
    try {
      s.setOrder({ status: OrderStatus.READY_FOR_PICKUP, driverId: "d1", timeline: [entry(1, OrderStatus.PLACED)] });
      const it = s.open();
      await it.next();
      await s.publish(position("d1", 1000));
      assert.equal(atMs((await it.next()).value!), 1000);
      for (const t of [3000, 2000, 5000, 4000]) await s.publish(position("d1", t));
      await s.publish(position("d2", 9000));
      assert.equal(atMs((await it.next()).value!), 5000, "the newest of the driver's, none of another driver");
      await it.return?.(undefined);
    } finally {
      await s.close();
    }
  });
});

/** Device time (ms) of a location message. */
function atMs(m: { update: { case: string | undefined; value?: unknown } }): number | undefined {
  if (m.update.case !== "location") return undefined;
  const at = (m.update.value as { at?: { seconds: bigint; nanos: number } }).at;
  return at ? Number(at.seconds) * 1000 + Math.round(at.nanos / 1e6) : undefined;
}
