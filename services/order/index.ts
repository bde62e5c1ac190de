import { hostname } from "node:os";
import { fromBinary, toBinary } from "@bufbuild/protobuf";
import { createClient, type Client, type ServiceImpl } from "@connectrpc/connect";
import { CatalogService } from "../../gen/dabba/catalog/v1/catalog_service_pb.js";
import { EventSchema } from "../../gen/dabba/events/v1/events_pb.js";
import { OrderSchema } from "../../gen/dabba/order/v1/order_pb.js";
import { OrderService } from "../../gen/dabba/order/v1/order_service_pb.js";
import { withMappedErrors } from "../platform/errors.js";
import { createConsumer, createOutboxRelay, type Consumer, type OutboxRelay } from "../platform/outbox.js";
import { createStreamRetention } from "../platform/stream-retention.js";
import type { StreamEntry } from "../platform/redis.js";
import type { ServiceDeps, ServiceModule } from "../platform/service.js";
import { createAnswerTimer } from "./answer-timer.js";
import { migrations } from "./db/migrations.js";
import { acceptOrder } from "./handlers/accept-order.js";
import { adjustTip } from "./handlers/adjust-tip.js";
import { getPaymentLedger } from "./handlers/get-payment-ledger.js";
import { refundOrder } from "./handlers/refund-order.js";
import { createPayments } from "./payments/index.js";
import { assignDriver } from "./handlers/assign-driver.js";
import { cancelOrder } from "./handlers/cancel-order.js";
import { restaurantChannel, type OrderHandlerDeps } from "./handlers/common.js";
import { confirmDelivery } from "./handlers/confirm-delivery.js";
import { confirmPickup } from "./handlers/confirm-pickup.js";
import { flagDispatch } from "./handlers/flag-dispatch.js";
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
import { createOrderJobs } from "./jobs.js";
import { createEtaUpdater } from "./eta-updater.js";
import { createEtaService } from "../eta/service.js";
import { ORDER_EVENTS_STREAM, createOrderStore } from "./store.js";

/** Consumer group that turns order events into restaurant feed messages (once per event across processes). */
export const RESTAURANT_FEED_GROUP = "order-restaurant-feed";
export const ORDERS_OUTBOX_TABLE = "outbox";
const RELAY_COALESCE_MS = 10;

/** OrderService: orders, the state machine, idempotent placement, the outbox and the restaurant feed. */
export function createOrderService(deps: ServiceDeps): ServiceModule {
  const logger = deps.logger;
  const relay: OutboxRelay = createOutboxRelay({ db: deps.db, eventLog: deps.redis.eventLog, logger, table: ORDERS_OUTBOX_TABLE });
  // Commits wake the relay at most once per RELAY_COALESCE_MS: a relay round is five statements
  // and a commit, so waking it per order under load costs more than the order's own insert;
  // coalesced, a round carries every order committed in the window (events leave <= ~10 ms later).
  let wakeTimer: NodeJS.Timeout | undefined;
  const wakeRelay = () => {
    wakeTimer ??= setTimeout(() => {
      wakeTimer = undefined;
      relay.wake();
    }, RELAY_COALESCE_MS);
  };
  // The relay produces events:orders, so this service keeps it trimmed.
  const retention = createStreamRetention({ eventLog: deps.redis.eventLog, streams: [ORDER_EVENTS_STREAM], config: deps.config.eventStreams, logger });
  const store = createOrderStore({
    db: deps.db,
    policy: deps.config.orders,
    driverStackSize: deps.config.dispatch.stackSize,
    onCommit: wakeRelay,
  });
  let catalog: Client<typeof CatalogService> | undefined;
  // eslint-disable-next-line prefer-const -- created below, read by the payments when a job is sent
  let jobs: ReturnType<typeof createOrderJobs>;
  const payments = createPayments({ db: deps.db, config: deps.config, store, logger, queue: () => jobs.queue, onCommit: wakeRelay });
  const h: OrderHandlerDeps = {
    payments,
    config: deps.config,
    store,
    redis: deps.redis,
    logger,
    catalog: () => (catalog ??= createClient(CatalogService, deps.peer("catalog"))),
  };

  jobs = createOrderJobs({ db: deps.db, config: deps.config, eventLog: deps.redis.eventLog, logger });
  const answer = createAnswerTimer({ store, orders: deps.config.orders, catalog: h.catalog, queue: () => jobs.queue, logger });

  const etaUpdater = deps.config.eta.updater
    ? createEtaUpdater({ store, eta: createEtaService({ redis: deps.redis, config: deps.config.eta }), redis: deps.redis, config: deps.config.eta, catalog: h.catalog, logger })
    : undefined;

  const feed: Consumer = createConsumer({
    eventLog: deps.redis.eventLog,
    stream: ORDER_EVENTS_STREAM,
    group: RESTAURANT_FEED_GROUP,
    consumer: `order-${hostname()}-${process.pid}`,
    startId: "$",
    logger,
    handle: (e) => publishToFeed(deps, e),
  });

  const impl = withMappedErrors(OrderService, {
    quoteOrder: quoteOrder(h),
    placeOrder: placeOrder(h),
    getOrder: getOrder(h),
    listOrders: listOrders(h),
    acceptOrder: acceptOrder(h),
    rejectOrder: rejectOrder(h),
    startPreparing: startPreparing(h),
    markReady: markReady(h),
    confirmPickup: confirmPickup(h),
    markEnRoute: markEnRoute(h),
    confirmDelivery: confirmDelivery(h),
    cancelOrder: cancelOrder(h),
    assignDriver: assignDriver(h),
    unassignDriver: unassignDriver(h),
    flagDispatch: flagDispatch(h),
    watchRestaurantOrders: watchRestaurantOrders(h),
    refundOrder: refundOrder(h),
    adjustTip: adjustTip(h),
    getPaymentLedger: getPaymentLedger(h),
  } as unknown as ServiceImpl<typeof OrderService>, logger);

  return {
    name: "order",
    desc: OrderService,
    impl: impl as unknown as ServiceModule["impl"],
    migrations,
    async start() {
      relay.start();
      retention.start();
      await feed.start();
      await etaUpdater?.start();
      await jobs.start({
        answer,
        settle: payments.settle,
        reconcile: payments.reconcile,
      });
    },
    async stop() {
      clearTimeout(wakeTimer);
      wakeTimer = undefined;
      await jobs.stop();
      payments.stop();
      await feed.stop();
      await etaUpdater?.stop();
      await relay.stop();
      await retention.stop();
    },
  };
}

/** Publishes the order snapshot of one event to its restaurant's feed channel. */
async function publishToFeed(deps: ServiceDeps, e: StreamEntry): Promise<void> {
  const ev = fromBinary(EventSchema, e.data);
  if (!ev.order) return;
  await deps.redis.channels.publish(restaurantChannel(ev.order.restaurantId), toBinary(OrderSchema, ev.order));
}
