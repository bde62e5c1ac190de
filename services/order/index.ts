import { hostname } from "node:os";
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { createClient, type Client, type HandlerContext, type ServiceImpl } from "@connectrpc/connect";
import { CatalogService } from "../../gen/dabba/catalog/v1/catalog_service_pb.js";
import { EventSchema } from "../../gen/dabba/events/v1/events_pb.js";
import { OrderSchema } from "../../gen/dabba/order/v1/order_pb.js";
import { OrderService } from "../../gen/dabba/order/v1/order_service_pb.js";
import { DomainError, toConnectError } from "../platform/errors.js";
import { createConsumer, createOutboxRelay, type Consumer, type OutboxRelay } from "../platform/outbox.js";
import type { StreamEntry } from "../platform/redis.js";
import type { ServiceDeps, ServiceModule } from "../platform/service.js";
import { migrations } from "./db/migrations.js";
import { acceptOrder } from "./handlers/accept-order.js";
import { assignDriver } from "./handlers/assign-driver.js";
import { cancelOrder } from "./handlers/cancel-order.js";
import { restaurantChannel, type OrderHandlerDeps } from "./handlers/common.js";
import { confirmDelivery } from "./handlers/confirm-delivery.js";
import { confirmPickup } from "./handlers/confirm-pickup.js";
import { getOrder } from "./handlers/get-order.js";
import { listOrders } from "./handlers/list-orders.js";
import { markEnRoute } from "./handlers/mark-en-route.js";
import { markReady } from "./handlers/mark-ready.js";
import { placeOrder } from "./handlers/place-order.js";
import { quoteOrder } from "./handlers/quote-order.js";
import { rejectOrder } from "./handlers/reject-order.js";
import { startPreparing } from "./handlers/start-preparing.js";
import { unassignDriver } from "./handlers/unassign-driver.js";
import { watchRestaurantOrders } from "./handlers/watch-restaurant-orders.js";
import { ORDER_EVENTS_STREAM, createOrderStore } from "./store.js";

/** Consumer group that turns order events into restaurant feed messages (once per event across processes). */
export const RESTAURANT_FEED_GROUP = "order-restaurant-feed";
export const ORDERS_OUTBOX_TABLE = "outbox";

/** OrderService: orders, the state machine, idempotent placement, the outbox and the restaurant feed. */
export function createOrderService(deps: ServiceDeps): ServiceModule {
  const logger = deps.logger.child({ service: "order" });
  const relay: OutboxRelay = createOutboxRelay({ db: deps.db, eventLog: deps.redis.eventLog, logger, table: ORDERS_OUTBOX_TABLE });
  const store = createOrderStore({ db: deps.db, policy: deps.config.orders, onCommit: () => relay.wake() });
  let catalog: Client<typeof CatalogService> | undefined;
  const h: OrderHandlerDeps = {
    config: deps.config,
    store,
    redis: deps.redis,
    logger,
    catalog: () => (catalog ??= createClient(CatalogService, deps.peer("catalog"))),
  };

  const feed: Consumer = createConsumer({
    eventLog: deps.redis.eventLog,
    stream: ORDER_EVENTS_STREAM,
    group: RESTAURANT_FEED_GROUP,
    consumer: `order-${hostname()}-${process.pid}`,
    startId: "$",
    logger,
    handle: (e) => publishToFeed(deps, e),
  });

  const impl: ServiceImpl<typeof OrderService> = {
      quoteOrder: unary(quoteOrder(h)),
      placeOrder: unary(placeOrder(h)),
      getOrder: unary(getOrder(h)),
      listOrders: unary(listOrders(h)),
      acceptOrder: unary(acceptOrder(h)),
      rejectOrder: unary(rejectOrder(h)),
      startPreparing: unary(startPreparing(h)),
      markReady: unary(markReady(h)),
      confirmPickup: unary(confirmPickup(h)),
      markEnRoute: unary(markEnRoute(h)),
      confirmDelivery: unary(confirmDelivery(h)),
      cancelOrder: unary(cancelOrder(h)),
      assignDriver: unary(assignDriver(h)),
      unassignDriver: unary(unassignDriver(h)),
      watchRestaurantOrders: serverStream(watchRestaurantOrders(h)),
  };

  return {
    name: "order",
    desc: OrderService,
    impl: impl as unknown as ServiceModule["impl"],
    migrations,
    async start() {
      relay.start();
      await feed.start();
    },
    async stop() {
      await feed.stop();
      await relay.stop();
    },
  };
}

/** Publishes the order snapshot of one event to its restaurant's feed channel. */
async function publishToFeed(deps: ServiceDeps, e: StreamEntry): Promise<void> {
  const ev = fromBinary(EventSchema, e.data);
  if (!ev.order) return;
  await deps.redis.channels.publish(restaurantChannel(ev.order.restaurantId), toBinary(OrderSchema, ev.order));
}

// Domain errors thrown by the store and handlers become their gRPC codes here, so the service
// answers the same over the host and over a bare router transport.
function mapError(err: unknown): unknown {
  return err instanceof DomainError ? toConnectError(err).error : err;
}

function unary<I, O>(fn: (req: I, ctx: HandlerContext) => Promise<O>): (req: I, ctx: HandlerContext) => Promise<O> {
  return async (req, ctx) => {
    try {
      return await fn(req, ctx);
    } catch (err) {
      throw mapError(err);
    }
  };
}

function serverStream<I, O>(fn: (req: I, ctx: HandlerContext) => AsyncGenerator<O>): (req: I, ctx: HandlerContext) => AsyncGenerator<O> {
  return async function* (req, ctx) {
    try {
      yield* fn(req, ctx);
    } catch (err) {
      throw mapError(err);
    }
  };
}
