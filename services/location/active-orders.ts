import { randomUUID } from "node:crypto";
import { hostname } from "node:os";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
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
 * Every write of a driver-active hash (re)sets this TTL, so a hash whose ends were never seen
 * (or one recreated by a late fence write) cannot outlive a working day; status events and
 * fence changes refresh it while an order is live.
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

// The driver-active hash holds, per carried order, two fields: ORDER_FIELD + id (the order as
// the last applied event showed it, JSON) and FENCE_FIELD + id (that assignment's geofence
// state). One field per order, so the consumer and the fence writer each touch only their own
// order's fields, and a driver carrying several orders (dispatch.stackSize) keeps them all.
const ORDER_FIELD = "o:";
const FENCE_FIELD = "f:";

/** One carried order as stored in its hash field. */
interface StoredOrder {
  customerId: string;
  restaurantId: string;
  status: string;
  pickup: { lat: number; lng: number };
  dropoff: { lat: number; lng: number };
  /** Sequence of the newest event applied. */
  seq: number;
  /** Sequence of the event that started this assignment: the identity its fences belong to. */
  assignSeq: number;
  /** Time of that event, epoch ms: orders are listed oldest assignment first. */
  since: number;
  /**
   * Past this (epoch ms) the entry is ignored and removed: the hash's own TTL is refreshed by
   * every carried order, so it cannot bound one order whose end was never seen.
   */
  expiresAt: number;
}

function readStoredOrder(value: string | undefined): StoredOrder | undefined {
  if (!value) return undefined;
  try {
    const v = JSON.parse(value) as Partial<StoredOrder>;
    const finite = (n: unknown) => typeof n === "number" && Number.isFinite(n);
    if (!finite(v.seq) || !finite(v.assignSeq) || typeof v.status !== "string" || !v.pickup || !v.dropoff) return undefined;
    return {
      customerId: String(v.customerId ?? ""),
      restaurantId: String(v.restaurantId ?? ""),
      status: v.status,
      pickup: { lat: Number(v.pickup.lat) || 0, lng: Number(v.pickup.lng) || 0 },
      dropoff: { lat: Number(v.dropoff.lat) || 0, lng: Number(v.dropoff.lng) || 0 },
      seq: v.seq!,
      assignSeq: v.assignSeq!,
      since: finite(v.since) ? v.since! : 0,
      expiresAt: finite(v.expiresAt) ? v.expiresAt! : 0,
    };
  } catch {
    return undefined;
  }
}

/** A carried order read from the hash: its assignment, its stored fences (when of this assignment). */
interface ReadOrder {
  assignment: ActiveAssignment;
  assignSeq: number;
  since: number;
  fence: GeofenceState | undefined;
}

/** The live orders of a driver-active hash, oldest assignment first. */
function readCarried(driverId: string, h: Record<string, string>, nowMs: number): ReadOrder[] {
  const out: ReadOrder[] = [];
  for (const field in h) {
    if (!field.startsWith(ORDER_FIELD)) continue;
    const orderId = field.slice(ORDER_FIELD.length);
    const o = readStoredOrder(h[field]);
    if (!o || o.expiresAt <= nowMs) continue;
    out.push({
      assignment: { driverId, orderId, customerId: o.customerId, restaurantId: o.restaurantId, status: o.status, pickup: o.pickup, dropoff: o.dropoff },
      assignSeq: o.assignSeq,
      since: o.since,
      fence: storedFence(h[FENCE_FIELD + orderId], o.assignSeq),
    });
  }
  return out.sort((a, b) => a.since - b.since || (a.assignment.orderId < b.assignment.orderId ? -1 : 1));
}

/** The fence state in a fence field ("<assignSeq>|<encoded>"), when it belongs to that assignment. */
function storedFence(value: string | undefined, assignSeq: number): GeofenceState | undefined {
  if (!value) return undefined;
  const bar = value.indexOf("|");
  if (bar < 0 || value.slice(0, bar) !== String(assignSeq)) return undefined;
  return decodeGeofence(value.slice(bar + 1));
}

/**
 * Fields to drop besides those of exceptOrderId: expired orders with their fences, fences whose
 * order is gone (a fence write that landed after the order's end), and fields of no known kind
 * (the one-order layout this hash had before stacking).
 */
function staleFields(h: Record<string, string>, exceptOrderId: string, nowMs: number): string[] {
  const stale: string[] = [];
  for (const field in h) {
    if (field.startsWith(ORDER_FIELD)) {
      const orderId = field.slice(ORDER_FIELD.length);
      if (orderId === exceptOrderId) continue;
      const o = readStoredOrder(h[field]);
      if (!o || o.expiresAt <= nowMs) stale.push(field, FENCE_FIELD + orderId);
    } else if (field.startsWith(FENCE_FIELD)) {
      const orderId = field.slice(FENCE_FIELD.length);
      if (orderId !== exceptOrderId && h[ORDER_FIELD + orderId] === undefined) stale.push(field);
    } else {
      stale.push(field);
    }
  }
  return stale;
}

/** One carried order of an attached driver: the assignment and the fences of that assignment. */
interface Carried {
  assignment: ActiveAssignment;
  assignSeq: number;
  fence: GeofenceState;
}

/** Per attached driver: the orders it carries (oldest assignment first). */
interface Entry {
  carried: Carried[];
  /** The assignments of carried, as get() returns them. */
  assignments: readonly ActiveAssignment[];
  /** Ticket of the newest Redis read applied; reads issued earlier are dropped when they land later. */
  applied: number;
}

const NONE: readonly ActiveAssignment[] = Object.freeze([]);

export interface ActiveOrdersOptions {
  redis: RedisPorts;
  config: LocationConfig;
  logger: Logger;
  /** OrderService client whose transport carries a service token (MarkEnRoute on LEFT_RESTAURANT). */
  order: () => Client<typeof OrderService>;
}

/**
 * Which drivers carry which orders (several per driver when dispatch stacks them), kept in
 * Redis from the order event log and cached for the drivers streaming to this process; runs
 * the geofences of each carried order and turns crossings into events on
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
    const orderField = ORDER_FIELD + o.id;
    const fenceField = FENCE_FIELD + o.id;
    const [h, ended] = await Promise.all([redis.kv.hgetall(key), redis.kv.get(endedKey(driverId, o.id))]);
    // Events are at least once and, across consumers, not strictly ordered: an event at or
    // before the end of this (driver, order) pair must not revive it.
    if (ended !== null && seq <= Number(ended)) return;
    const now = Date.now();
    const cur = readStoredOrder(h[orderField]);
    const stale = staleFields(h, o.id, now);
    const announce: BatchOp = { op: "publish", channel: DRIVER_ACTIVE_CHANNEL, data: new TextEncoder().encode(driverId) };

    if (ends) {
      await redis.kv.set(endedKey(driverId, o.id), String(seq), { ttlMs: ENDED_TTL_MS });
      // Only this order's fields, and not if they hold a newer assignment of it.
      if (!cur || cur.seq > seq) return;
      await redis.kv.hdel(key, [orderField, fenceField, ...stale]);
      await redis.batch([announce]);
      return;
    }

    let assignSeq = seq;
    let since = ev.occurredAt ? timestampMs(ev.occurredAt) : now;
    if (cur) {
      if (cur.seq >= seq) return; // a repeat or an older event
      // A driver_assigned of an order already held is a new assignment (after an unassignment
      // whose end was not seen): new fences. Any other event keeps the assignment's fences.
      if (ev.payload.case !== "driverAssigned") {
        assignSeq = cur.assignSeq;
        since = cur.since;
      }
    }
    // A status event of an order whose assignment event is late or lost creates the entry too:
    // the event's snapshot names this driver at this sequence.
    const stored: StoredOrder = {
      customerId: o.customerId,
      restaurantId: o.restaurantId,
      status: OrderStatus[o.status] ?? "UNSPECIFIED",
      pickup: { lat: o.pickupLocation?.lat ?? 0, lng: o.pickupLocation?.lng ?? 0 },
      dropoff: { lat: o.delivery?.location?.lat ?? 0, lng: o.delivery?.location?.lng ?? 0 },
      seq,
      assignSeq,
      since,
      expiresAt: now + ASSIGNMENT_TTL_MS,
    };
    const fields: Record<string, string> = { [orderField]: JSON.stringify(stored) };
    if (cur?.assignSeq !== assignSeq) fields[fenceField] = "";
    if (stale.length > 0) await redis.kv.hdel(key, stale);
    await redis.batch([{ op: "hset", key, fields, ttlMs: ASSIGNMENT_TTL_MS }, announce]);
  }

  // ------------------------------------------------------------- cache

  function apply(driverId: string, entry: Entry, ticket: number, h: Record<string, string>): void {
    if (cache.get(driverId) !== entry || ticket < entry.applied) return;
    entry.applied = ticket;
    const carried: Carried[] = [];
    for (const r of readCarried(driverId, h, Date.now())) {
      const mine = entry.carried.find((c) => c.assignment.orderId === r.assignment.orderId && c.assignSeq === r.assignSeq);
      let fence: GeofenceState;
      if (mine) {
        // Ours is newer (it holds the pending dwell); only crossings fired elsewhere are merged in.
        fence = mine.fence;
        if (r.fence) fence.fired |= r.fence.fired;
      } else {
        fence = r.fence ?? initialGeofenceState();
      }
      carried.push({ assignment: r.assignment, assignSeq: r.assignSeq, fence });
    }
    entry.carried = carried;
    entry.assignments = carried.length === 0 ? NONE : carried.map((c) => c.assignment);
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
  /** Fence states to persist, newest per driver and order (field -> value); written together by one queued task. */
  const fenceWrites = new Map<string, Record<string, string>>();
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

  function persistFence(driverId: string, c: Carried): void {
    let fields = fenceWrites.get(driverId);
    if (!fields) fenceWrites.set(driverId, (fields = {}));
    fields[FENCE_FIELD + c.assignment.orderId] = `${c.assignSeq}|${encodeGeofence(c.fence)}`;
    if (fenceFlushQueued) return;
    fenceFlushQueued = true;
    const queued = enqueue(async () => {
      fenceFlushQueued = false;
      const ops: BatchOp[] = [];
      for (const [id, f] of fenceWrites) ops.push({ op: "hset", key: driverActiveKey(id), fields: f, ttlMs: ASSIGNMENT_TTL_MS });
      fenceWrites.clear();
      if (ops.length) await redis.batch(ops);
    }, "persist fence state");
    if (!queued) fenceFlushQueued = false;
  }

  // ------------------------------------------------------------- the port

  return {
    get(driverId) {
      return cache.get(driverId)?.assignments ?? NONE;
    },

    async lookup(driverId) {
      return readCarried(driverId, await redis.kv.hgetall(driverActiveKey(driverId)), Date.now()).map((r) => r.assignment);
    },

    async attach(driverId) {
      let entry = cache.get(driverId);
      if (!entry) {
        entry = { carried: [], assignments: NONE, applied: 0 };
        cache.set(driverId, entry);
      }
      const ticket = ++tickets;
      try {
        apply(driverId, entry, ticket, await redis.kv.hgetall(driverActiveKey(driverId)));
      } catch (err) {
        // The driver stays attached; the periodic refresh loads the assignments once Redis answers.
        logger.warn({ err, driverId }, "loading the driver's assignments failed");
      }
    },

    detach(driverId) {
      cache.delete(driverId);
    },

    observe(fixes) {
      try {
        for (const fix of fixes) {
          const entry = cache.get(fix.driverId);
          if (!entry) continue;
          // Each carried order has its own fences (at most dispatch.stackSize per driver).
          for (const c of entry.carried) {
            const r = stepGeofence(c.fence, c.assignment, fix, config.geofence);
            for (const kind of r.events) emit(kind, c.assignment, fix);
            if (r.durable) persistFence(fix.driverId, c);
          }
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
