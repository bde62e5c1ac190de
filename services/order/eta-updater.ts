/**
 * Keeps each open order's delivery estimate current (DESIGN.md section 6): recomputes on the
 * order's transitions (a consumer group on events:orders) and, every config.eta.recomputeMs,
 * for the open orders with a driver from the drivers' last fixes (one batch read). A new
 * estimate is stored and pushed (eta_changed) only when a bound moved by at least the push
 * threshold (store.updateEta). The same events teach the model: confirmed->ready prep samples
 * and the residual of the placement quote on delivery.
 */
import { hostname } from "node:os";
import { randomUUID } from "node:crypto";
import { fromBinary } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import type { Client } from "@connectrpc/connect";
import type { CatalogService } from "../../gen/dabba/catalog/v1/catalog_service_pb.js";
import { EventSchema } from "../../gen/dabba/events/v1/events_pb.js";
import { OrderStatus, type Order } from "../../gen/dabba/order/v1/order_pb.js";
import type { EtaStage } from "../eta/domain.js";
import type { EtaRestaurant, EtaService, RecomputeInput } from "../eta/service.js";
import { driverFixKey, readFixHash } from "../location/keys.js";
import type { EtaConfig } from "../platform/config.js";
import type { Logger } from "../platform/logger.js";
import { createConsumer, type Consumer } from "../platform/outbox.js";
import type { RedisPorts, StreamEntry } from "../platform/redis.js";
import { ORDER_EVENTS_STREAM, type OrderStore } from "./store.js";

/** Consumer group of the updater (once per event across order processes). */
export const ETA_UPDATER_GROUP = "order-eta";
const TICK_LOCK_KEY = "eta:tick";
/** Orders recomputed per tick at most. */
const MAX_PER_TICK = 2000;
/** A restaurant's configured prep is re-read from the catalog after this. */
const RESTAURANT_CACHE_MS = 10 * 60_000;

export interface EtaUpdaterOptions {
  store: OrderStore;
  eta: EtaService;
  redis: RedisPorts;
  config: EtaConfig;
  catalog: () => Client<typeof CatalogService>;
  logger: Logger;
}

export interface EtaUpdater {
  start(): Promise<void>;
  stop(): Promise<void>;
  /** One periodic round (tests): recomputes the open orders with a driver; returns how many estimates were pushed. */
  tick(): Promise<number>;
  /** Handles one order event (tests drive it through the consumer). */
  consumer: Consumer;
}

/** Where an order is in its life, for the legs it still has; undefined when it needs no estimate. */
export function stageOf(status: OrderStatus): EtaStage | undefined {
  switch (status) {
    case OrderStatus.PLACED:
      return "quote";
    case OrderStatus.CONFIRMED:
    case OrderStatus.PREPARING:
      return "kitchen";
    case OrderStatus.READY_FOR_PICKUP:
      return "ready";
    case OrderStatus.PICKED_UP:
    case OrderStatus.EN_ROUTE:
      return "carried";
    default:
      return undefined;
  }
}

/** Whether an estimate differs from the order's stored one by at least thresholdMs at either bound (or it has none). */
export function movedFrom(order: Order, lowAtMs: number, highAtMs: number, thresholdMs: number): boolean {
  const low = order.eta?.earliestAt;
  const high = order.eta?.latestAt;
  if (!low || !high) return true;
  return Math.abs(timestampMs(low) - lowAtMs) >= thresholdMs || Math.abs(timestampMs(high) - highAtMs) >= thresholdMs;
}

export function createEtaUpdater(o: EtaUpdaterOptions): EtaUpdater {
  const log = o.logger.child({ component: "eta-updater" });
  const thresholdMs = o.config.pushThresholdMinutes * 60_000;
  const restaurants = new Map<string, { r: EtaRestaurant; atMs: number }>();
  const me = randomUUID();
  let timer: NodeJS.Timeout | undefined;
  let ticking: Promise<number> | undefined;

  async function restaurantOf(order: Order): Promise<EtaRestaurant> {
    const hit = restaurants.get(order.restaurantId);
    if (hit && Date.now() - hit.atMs < RESTAURANT_CACHE_MS) return hit.r;
    const res = await o.catalog().getRestaurant({ restaurantId: order.restaurantId });
    const loc = res.restaurant?.location ?? order.pickupLocation;
    const r: EtaRestaurant = {
      id: order.restaurantId,
      location: { lat: loc?.lat ?? 0, lng: loc?.lng ?? 0 },
      avgPrepMinutes: res.restaurant?.avgPrepMinutes ?? 0,
    };
    restaurants.set(order.restaurantId, { r, atMs: Date.now() });
    return r;
  }

  async function inputsFor(orders: Order[]): Promise<(RecomputeInput | undefined)[]> {
    const withDriver = orders.map((x) => x.driverId);
    const [fixes, confirmed, rs] = await Promise.all([
      o.redis.hgetallMany(withDriver.filter(Boolean).map(driverFixKey)),
      o.eta.confirmedAt(orders.map((x) => x.id)),
      Promise.all(orders.map((x) => restaurantOf(x))),
    ]);
    let f = 0;
    return orders.map((x, i) => {
      const fix = x.driverId ? readFixHash(fixes[f++] ?? {}) : undefined;
      const stage = stageOf(x.status);
      const customer = x.delivery?.location;
      if (!stage || !customer) return undefined;
      return {
        stage,
        restaurant: rs[i]!,
        customer: { lat: customer.lat, lng: customer.lng },
        driver: fix ? { lat: fix.lat, lng: fix.lng } : undefined,
        confirmedAtMs: confirmed[i],
      };
    });
  }

  /** Recomputes the given orders and stores those that moved; returns how many were pushed. */
  async function recompute(orders: Order[]): Promise<number> {
    const open = orders.filter((x) => stageOf(x.status) !== undefined);
    if (open.length === 0) return 0;
    const inputs = await inputsFor(open);
    const idx = inputs.map((x, i) => (x ? i : -1)).filter((i) => i >= 0);
    const quotes = await o.eta.recomputeMany(idx.map((i) => inputs[i]!));
    let pushed = 0;
    for (let k = 0; k < idx.length; k++) {
      const order = open[idx[k]!]!;
      const q = quotes[k]!;
      // Most recomputes move nothing: skip the write (a transaction) when neither bound moved by
      // the threshold against the order as read. The store's own check decides when it did; a
      // read older than another process's write is corrected by the next round.
      if (!movedFrom(order, q.lowAtMs, q.highAtMs, thresholdMs)) continue;
      const stored = await o.store.updateEta(order.id, order.version, { lowAt: new Date(q.lowAtMs), highAt: new Date(q.highAtMs) }, thresholdMs);
      if (stored) pushed++;
    }
    return pushed;
  }

  async function recomputeOne(orderId: string): Promise<void> {
    const order = await o.store.get(orderId);
    if (order) await recompute([order]);
  }

  async function handle(e: StreamEntry): Promise<void> {
    const ev = fromBinary(EventSchema, e.data);
    const order = ev.order;
    if (!order) return;
    const at = ev.occurredAt ? timestampMs(ev.occurredAt) : Date.now();
    switch (ev.payload.case) {
      case "placed": {
        const [input] = await inputsFor([order]);
        if (input) {
          const q = await o.eta.recompute({ ...input, stage: "quote" });
          const placedAt = order.createdAt ? timestampMs(order.createdAt) : at;
          await o.eta.recordPlaced(order.id, placedAt, q.rawMinutes + (q.atMs - placedAt) / 60_000);
        }
        return;
      }
      case "confirmed":
        await o.eta.recordConfirmed(order.id, at);
        return recomputeOne(order.id);
      case "ready":
        await o.eta.recordReady(ev.eventId, order.id, order.restaurantId, at);
        return recomputeOne(order.id);
      case "preparing":
      case "driverAssigned":
      case "driverUnassigned":
      case "pickedUp":
      case "enRoute":
        return recomputeOne(order.id);
      case "delivered":
        await o.eta.recordDelivered(ev.eventId, order.id, at);
        return;
      default:
        return;
    }
  }

  const consumer = createConsumer({
    eventLog: o.redis.eventLog,
    stream: ORDER_EVENTS_STREAM,
    group: ETA_UPDATER_GROUP,
    consumer: `order-eta-${hostname()}-${process.pid}`,
    startId: "$",
    logger: o.logger,
    handle,
  });

  async function tick(): Promise<number> {
    const orders = await o.store.listWithDriver(MAX_PER_TICK);
    return recompute(orders);
  }

  async function scheduledTick(): Promise<void> {
    if (ticking) return;
    try {
      // One process per interval does the round (the lock expires just before the next one).
      const mine = await o.redis.kv.set(TICK_LOCK_KEY, me, { nx: true, ttlMs: Math.max(100, o.config.recomputeMs - 100) });
      if (!mine) return;
      ticking = tick();
      const n = await ticking;
      if (n > 0) log.debug({ pushed: n }, "eta recompute round");
    } catch (err) {
      log.warn({ err }, "eta recompute round failed");
    } finally {
      ticking = undefined;
    }
  }

  return {
    consumer,
    tick,
    async start() {
      await consumer.start();
      timer = setInterval(() => void scheduledTick(), o.config.recomputeMs);
      timer.unref();
    },
    async stop() {
      clearInterval(timer);
      timer = undefined;
      await ticking?.catch(() => 0);
      await consumer.stop();
    },
  };
}
