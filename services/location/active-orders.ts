import { randomUUID } from "node:crypto";
import { hostname } from "node:os";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { ActorRole } from "../../gen/dabba/common/v1/common_pb.js";
import { EventSchema, GeofenceKind, type Event } from "../../gen/dabba/events/v1/events_pb.js";
import { OrderStatus } from "../../gen/dabba/order/v1/order_pb.js";
import type { OrderService } from "../../gen/dabba/order/v1/order_service_pb.js";
import { ORDER_EVENTS_STREAM } from "../order/store.js";
import type { LocationConfig } from "../platform/config.js";
import type { Logger } from "../platform/logger.js";
import { createConsumer, type Consumer } from "../platform/outbox.js";
import type { BatchOp, RedisPorts, StreamEntry } from "../platform/redis.js";
import { decodeGeofence, encodeGeofence, initialGeofenceState, stepGeofence, type GeofenceState } from "./geofence.js";
import { DRIVER_ACTIVE_CHANNEL, LOCATION_EVENTS_STREAM, driverActiveKey } from "./keys.js";
import type { AcceptedFix, ActiveAssignment, ActiveOrders } from "./types.js";

/** Consumer group on the order events that maintains the driver-active hashes (once per event across processes). */
export const ACTIVE_ORDERS_GROUP = "location-active-orders";
/** Event type of geofence crossings on LOCATION_EVENTS_STREAM (the payload case as named in the proto). */
export const GEOFENCE_EVENT_TYPE = "geofence";

/** Attached drivers are re-read from Redis this often (missed broadcasts, a Redis restart). */
const REFRESH_MS = 2000;
const REFRESH_CHUNK = 500;
/**
 * Every write of a driver-active hash (re)sets this TTL, so a hash whose end was never seen
 * (or one recreated by a late fence write) cannot outlive a working day; status events and
 * fence changes refresh it while the order is live.
 */
const ASSIGNMENT_TTL_MS = 24 * 3_600_000;
/** How long an ended (driver, order) pair is remembered, so a redelivered older event cannot revive it. */
const ENDED_TTL_MS = 24 * 3_600_000;
/** Background effects beyond this many queued are logged and dropped (observe must never grow memory). */
const MAX_QUEUED_EFFECTS = 10_000;
const EFFECT_CONCURRENCY = 4;
const EN_ROUTE_ATTEMPTS = 5;
const EN_ROUTE_BACKOFF_MS = 200;
const STOP_DRAIN_MS = 5000;

const TERMINAL = new Set<number>([OrderStatus.DELIVERED, OrderStatus.CANCELLED]);

/**
 * Marker that the assignment of driverId to orderId ended at some sequence: a string holding
 * that sequence. Private to this module (nothing else reads it); lives next to the driver's
 * hash so its shape follows driverActiveKey.
 */
function endedKey(driverId: string, orderId: string): string {
  return `${driverActiveKey(driverId)}:ended:${orderId}`;
}

/** Per attached driver: the cached assignment and the fences of that assignment. */
interface Entry {
  assignment?: ActiveAssignment;
  /** Identity of the assignment the fences belong to: `${orderId}#${assignSeq}`. */
  fenceId?: string;
  fence?: GeofenceState;
  /** Ticket of the newest Redis read applied; reads issued earlier are dropped when they land later. */
  applied: number;
}

export interface ActiveOrdersOptions {
  redis: RedisPorts;
  config: LocationConfig;
  logger: Logger;
  /** OrderService client whose transport carries a service token (MarkEnRoute on LEFT_RESTAURANT). */
  order: () => Client<typeof OrderService>;
}

/**
 * Which driver carries which order, kept in Redis from the order event log and cached for the
 * drivers streaming to this process; runs their geofences and turns crossings into events on
 * LOCATION_EVENTS_STREAM (and LEFT_RESTAURANT after pickup into MarkEnRoute).
 */
export function createActiveOrders(opts: ActiveOrdersOptions): ActiveOrders {
  const { redis, config } = opts;
  const logger = opts.logger.child({ component: "active-orders" });
  const cache = new Map<string, Entry>();
  let tickets = 0;
  let running = false;
  let unsubscribe: (() => Promise<void>) | undefined;
  let refreshTimer: NodeJS.Timeout | undefined;
  let refreshing: Promise<void> | undefined;

  // ------------------------------------------------------------- order events -> Redis

  const consumer: Consumer = createConsumer({
    eventLog: redis.eventLog,
    stream: ORDER_EVENTS_STREAM,
    group: ACTIVE_ORDERS_GROUP,
    consumer: `location-${hostname()}-${process.pid}`,
    startId: "0",
    logger,
    handle: handleOrderEvent,
  });

  async function handleOrderEvent(e: StreamEntry): Promise<void> {
    const ev = fromBinary(EventSchema, e.data);
    const o = ev.order;
    if (!o || !o.id) return;
    const seq = Number(ev.sequence);
    let driverId = o.driverId;
    let ends = TERMINAL.has(o.status);
    switch (ev.payload.case) {
      case "driverAssigned":
        driverId = ev.payload.value.driverId || driverId;
        break;
      case "driverUnassigned":
        driverId = ev.payload.value.driverId;
        ends = true;
        break;
      case "delivered":
        driverId = ev.payload.value.driverId || driverId;
        ends = true;
        break;
      case "cancelled":
        // The cancelled snapshot has no driver any more; the payload names the released one.
        driverId = ev.payload.value.releasedDriverId || driverId;
        ends = true;
        break;
      case "rejected":
        ends = true;
        break;
    }
    if (!driverId) return;
    const key = driverActiveKey(driverId);
    const [cur, ended] = await Promise.all([redis.kv.hgetall(key), redis.kv.get(endedKey(driverId, o.id))]);
    // Events are at least once and, across consumers, not strictly ordered: an event at or
    // before the end of this (driver, order) pair must not revive it.
    if (ended !== null && seq <= Number(ended)) return;
    const announce: BatchOp = { op: "publish", channel: DRIVER_ACTIVE_CHANNEL, data: new TextEncoder().encode(driverId) };

    if (ends) {
      await redis.kv.set(endedKey(driverId, o.id), String(seq), { ttlMs: ENDED_TTL_MS });
      // Only if the hash still names this order, and not a newer assignment of it.
      if (cur.orderId !== o.id || Number(cur.seq) > seq) return;
      await redis.kv.del(key);
      await redis.batch([announce]);
      return;
    }

    const snapshot = {
      customerId: o.customerId,
      restaurantId: o.restaurantId,
      status: OrderStatus[o.status] ?? "UNSPECIFIED",
      pickupLat: String(o.pickupLocation?.lat ?? 0),
      pickupLng: String(o.pickupLocation?.lng ?? 0),
      dropLat: String(o.delivery?.location?.lat ?? 0),
      dropLng: String(o.delivery?.location?.lng ?? 0),
      seq: String(seq),
    };
    let fields: Record<string, string>;
    if (cur.orderId === o.id && ev.payload.case !== "driverAssigned") {
      if (Number(cur.seq) >= seq) return; // a repeat or an older event
      fields = snapshot; // the fence fields stay
    } else if (cur.orderId === o.id) {
      if (Number(cur.seq) >= seq) return;
      // Assigned again to the same order (after an unassignment whose end was not seen): new fences.
      fields = { orderId: o.id, ...snapshot, assignSeq: String(seq), fence: "" };
    } else if (!cur.orderId || ev.payload.case === "driverAssigned") {
      // A new assignment; one active order per driver (order service), so a different order in
      // the hash has ended even if its end event is still on the way. A status event of an order
      // whose assignment event is late or lost creates the hash too.
      fields = { orderId: o.id, ...snapshot, assignSeq: String(seq), fence: "" };
    } else {
      return; // the hash names another order: this event is about an order the driver no longer carries
    }
    await redis.batch([{ op: "hset", key, fields, ttlMs: ASSIGNMENT_TTL_MS }, announce]);
  }

  // ------------------------------------------------------------- cache

  function parseAssignment(driverId: string, h: Record<string, string>): ActiveAssignment | undefined {
    if (!h.orderId || !h.status) return undefined;
    const num = (s: string | undefined) => {
      const v = Number(s);
      return Number.isFinite(v) ? v : 0;
    };
    return {
      driverId,
      orderId: h.orderId,
      customerId: h.customerId ?? "",
      restaurantId: h.restaurantId ?? "",
      status: h.status,
      pickup: { lat: num(h.pickupLat), lng: num(h.pickupLng) },
      dropoff: { lat: num(h.dropLat), lng: num(h.dropLng) },
    };
  }

  /** The fence state stored in a hash, when it belongs to the assignment fenceId. */
  function storedFence(h: Record<string, string>, fenceId: string): GeofenceState | undefined {
    const f = h.fence;
    if (!f) return undefined;
    const bar = f.lastIndexOf("|");
    if (bar < 0 || f.slice(0, bar) !== fenceId) return undefined;
    return decodeGeofence(f.slice(bar + 1));
  }

  function apply(driverId: string, entry: Entry, ticket: number, h: Record<string, string>): void {
    if (cache.get(driverId) !== entry || ticket < entry.applied) return;
    entry.applied = ticket;
    const a = parseAssignment(driverId, h);
    if (!a) {
      entry.assignment = undefined;
      entry.fenceId = undefined;
      entry.fence = undefined;
      return;
    }
    const fenceId = `${a.orderId}#${h.assignSeq ?? ""}`;
    const stored = storedFence(h, fenceId);
    if (entry.fenceId === fenceId && entry.fence) {
      // Ours is newer (it holds the pending dwell); only crossings fired elsewhere are merged in.
      if (stored) entry.fence.fired |= stored.fired;
    } else {
      entry.fenceId = fenceId;
      entry.fence = stored ?? initialGeofenceState();
    }
    entry.assignment = a;
  }

  /** Re-reads the given attached drivers from Redis in one round trip per chunk. */
  async function reload(driverIds: string[]): Promise<void> {
    for (let i = 0; i < driverIds.length; i += REFRESH_CHUNK) {
      const ids = driverIds.slice(i, i + REFRESH_CHUNK);
      const entries = ids.map((id) => cache.get(id));
      const ticket = ++tickets;
      const hashes = await redis.hgetallMany(ids.map(driverActiveKey));
      ids.forEach((id, j) => {
        const entry = entries[j];
        if (entry) apply(id, entry, ticket, hashes[j] ?? {});
      });
    }
  }

  // Broadcasts are coalesced: drivers named within one turn of the event loop are read together.
  let announced = new Set<string>();
  let announceScheduled = false;
  function onAnnounce(data: Uint8Array): void {
    const driverId = new TextDecoder().decode(data);
    if (!cache.has(driverId)) return;
    announced.add(driverId);
    if (announceScheduled) return;
    announceScheduled = true;
    setImmediate(() => {
      announceScheduled = false;
      const ids = [...announced];
      announced = new Set();
      reload(ids).catch((err) => logger.warn({ err, drivers: ids.length }, "reloading announced assignments failed; the periodic refresh retries"));
    });
  }

  function refreshAll(): void {
    if (refreshing || cache.size === 0) return;
    refreshing = reload([...cache.keys()])
      .catch((err) => logger.warn({ err, drivers: cache.size }, "refreshing attached assignments failed"))
      .finally(() => {
        refreshing = undefined;
      });
  }

  // ------------------------------------------------------------- background effects

  const queue: (() => Promise<void>)[] = [];
  let active = 0;
  let dropped = 0;
  let lastDropLog = 0;
  const retryTimers = new Set<NodeJS.Timeout>();
  const idleWaiters: (() => void)[] = [];
  /** Fence states to persist, newest per driver; written together by one queued task. */
  const fenceWrites = new Map<string, string>();
  let fenceFlushQueued = false;

  /** Queues a background effect; false when the queue is full and it was dropped. */
  function enqueue(task: () => Promise<void>, what: string): boolean {
    if (queue.length >= MAX_QUEUED_EFFECTS) {
      dropped++;
      const now = Date.now();
      if (now - lastDropLog >= 1000) {
        lastDropLog = now;
        logger.error({ dropped, what, queued: queue.length }, "geofence effect queue full; dropping effects");
      }
      return false;
    }
    queue.push(task);
    pump();
    return true;
  }

  function pump(): void {
    while (active < EFFECT_CONCURRENCY && queue.length > 0) {
      const task = queue.shift()!;
      active++;
      task()
        .catch((err) => logger.error({ err }, "geofence effect failed"))
        .finally(() => {
          active--;
          pump();
          if (active === 0 && queue.length === 0) for (const w of idleWaiters.splice(0)) w();
        });
    }
  }

  function geofenceEvent(kind: GeofenceKind, a: ActiveAssignment, fix: AcceptedFix): Event {
    return create(EventSchema, {
      eventId: `geo-${randomUUID()}`,
      orderId: a.orderId,
      occurredAt: timestampFromMs(fix.deviceTimeMs),
      actor: { role: ActorRole.SERVICE, id: "location" },
      payload: { case: "geofence", value: { kind, driverId: a.driverId, location: { lat: fix.lat, lng: fix.lng } } },
    });
  }

  function emit(kind: GeofenceKind, a: ActiveAssignment, fix: AcceptedFix): void {
    const ev = geofenceEvent(kind, a, fix);
    enqueue(async () => {
      await redis.eventLog.append(LOCATION_EVENTS_STREAM, { type: GEOFENCE_EVENT_TYPE, key: a.orderId, eventId: ev.eventId, data: toBinary(EventSchema, ev) });
      logger.debug({ orderId: a.orderId, driverId: a.driverId, kind: GeofenceKind[kind] }, "geofence crossed");
    }, "append geofence event");
    if (kind === GeofenceKind.LEFT_RESTAURANT && a.status === "PICKED_UP") markEnRoute(a.orderId, a.driverId, 1);
  }

  function markEnRoute(orderId: string, driverId: string, attempt: number): void {
    enqueue(async () => {
      try {
        await opts.order().markEnRoute({ orderId });
        logger.info({ orderId, driverId }, "order en route: driver left the restaurant");
      } catch (err) {
        const ce = ConnectError.from(err);
        if (ce.code === Code.FailedPrecondition) {
          // Already EN_ROUTE (the driver said so first), or no longer PICKED_UP: nothing to do.
          logger.debug({ orderId, reason: ce.rawMessage }, "mark en route not applied");
          return;
        }
        if (attempt >= EN_ROUTE_ATTEMPTS || !running) {
          logger.error({ err: ce, orderId, attempt }, "mark en route failed; giving up");
          return;
        }
        logger.warn({ err: ce, orderId, attempt }, "mark en route failed; retrying");
        const timer = setTimeout(() => {
          retryTimers.delete(timer);
          markEnRoute(orderId, driverId, attempt + 1);
        }, EN_ROUTE_BACKOFF_MS * 2 ** (attempt - 1));
        retryTimers.add(timer);
      }
    }, "mark en route");
  }

  function persistFence(driverId: string, fenceId: string, state: GeofenceState): void {
    fenceWrites.set(driverId, `${fenceId}|${encodeGeofence(state)}`);
    if (fenceFlushQueued) return;
    fenceFlushQueued = true;
    const queued = enqueue(async () => {
      fenceFlushQueued = false;
      const ops: BatchOp[] = [];
      for (const [id, fence] of fenceWrites) ops.push({ op: "hset", key: driverActiveKey(id), fields: { fence }, ttlMs: ASSIGNMENT_TTL_MS });
      fenceWrites.clear();
      if (ops.length) await redis.batch(ops);
    }, "persist fence state");
    if (!queued) fenceFlushQueued = false;
  }

  // ------------------------------------------------------------- the port

  return {
    get(driverId) {
      return cache.get(driverId)?.assignment;
    },

    async lookup(driverId) {
      return parseAssignment(driverId, await redis.kv.hgetall(driverActiveKey(driverId)));
    },

    async attach(driverId) {
      let entry = cache.get(driverId);
      if (!entry) {
        entry = { applied: 0 };
        cache.set(driverId, entry);
      }
      const ticket = ++tickets;
      try {
        apply(driverId, entry, ticket, await redis.kv.hgetall(driverActiveKey(driverId)));
      } catch (err) {
        // The driver stays attached; the periodic refresh loads the assignment once Redis answers.
        logger.warn({ err, driverId }, "loading the driver's assignment failed");
      }
    },

    detach(driverId) {
      cache.delete(driverId);
    },

    observe(fixes) {
      try {
        for (const fix of fixes) {
          const entry = cache.get(fix.driverId);
          const a = entry?.assignment;
          if (!a || !entry.fence || !entry.fenceId) continue;
          const r = stepGeofence(entry.fence, a, fix, config.geofence);
          for (const kind of r.events) emit(kind, a, fix);
          if (r.durable) persistFence(fix.driverId, entry.fenceId, entry.fence);
        }
      } catch (err) {
        logger.error({ err }, "geofence evaluation failed");
      }
    },

    async start() {
      if (running) return;
      running = true;
      unsubscribe = await redis.channels.subscribe(DRIVER_ACTIVE_CHANNEL, onAnnounce);
      await consumer.start();
      refreshTimer = setInterval(refreshAll, REFRESH_MS);
      refreshTimer.unref();
    },

    async stop() {
      if (!running) return;
      running = false;
      clearInterval(refreshTimer);
      refreshTimer = undefined;
      for (const t of retryTimers) clearTimeout(t);
      retryTimers.clear();
      await consumer.stop();
      await unsubscribe?.().catch((err) => logger.warn({ err }, "unsubscribing failed"));
      unsubscribe = undefined;
      await refreshing;
      if (active > 0 || queue.length > 0) {
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([
          new Promise<void>((resolve) => idleWaiters.push(resolve)),
          new Promise<void>((resolve) => (timer = setTimeout(resolve, STOP_DRAIN_MS))),
        ]);
        clearTimeout(timer);
        if (queue.length > 0) logger.warn({ queued: queue.length }, "stopping with geofence effects still queued; dropped");
        queue.length = 0;
      }
    },
  };
}
