import { createClient, type Client, type ServiceImpl } from "@connectrpc/connect";
import { OrderService } from "../../gen/dabba/order/v1/order_service_pb.js";
import { TrackingService } from "../../gen/dabba/tracking/v1/tracking_service_pb.js";
import { withMappedErrors } from "../platform/errors.js";
import type { ServiceDeps, ServiceModule } from "../platform/service.js";
import { createNotifications, migrations, type Notifications } from "../notifications/index.js";
import type { PushProvider } from "../notifications/push.js";
import { createTrackingFanout } from "./fanout.js";
import { listNotifications } from "./handlers/list-notifications.js";
import { deleteWebhook } from "./handlers/delete-webhook.js";
import { listWebhookDeliveries } from "./handlers/list-webhook-deliveries.js";
import { markNotificationsRead } from "./handlers/mark-notifications-read.js";
import { registerWebhook } from "./handlers/register-webhook.js";
import { replayDeadLetters } from "./handlers/replay-dead-letters.js";
import { trackOrder } from "./handlers/track-order.js";
import { createTrackingHub, type TrackingHub } from "./hub.js";

/** The tracking module with its hub and notifications exposed (tests read counts, pushes and deliveries). */
export interface TrackingServiceModule extends ServiceModule {
  hub: TrackingHub;
  notifications: Notifications;
}

/** Test hooks: a push adapter, the webhook backoff's random source. */
export interface TrackingOverrides {
  push?: PushProvider;
  rand?: () => number;
}

/**
 * TrackingService: TrackOrder (live order tracking) over the per-order tracking channels, and
 * notifications: the inbox (ListNotifications, MarkNotificationsRead), push, and signed webhooks
 * (RegisterWebhook, ReplayDeadLetters, ListWebhookDeliveries) fed by the notifications consumer
 * of the order and location event logs and the "webhooks" job queue. Its tables are the
 * notifications tables.
 */
export function createTrackingService(deps: ServiceDeps, overrides: TrackingOverrides = {}): TrackingServiceModule {
  const logger = deps.logger;
  const hub = createTrackingHub({ channels: deps.redis.channels, logger });
  const fanout = createTrackingFanout({ redis: deps.redis, logger });
  let orders: Client<typeof OrderService> | undefined;
  const orderClient = () => (orders ??= createClient(OrderService, deps.peer("order")));
  const notifications = createNotifications({
    db: deps.db,
    redis: deps.redis,
    config: deps.config.notifications,
    shutdownGraceMs: deps.config.shutdownGraceMs,
    logger,
    orders: orderClient,
    push: overrides.push,
    rand: overrides.rand,
  });
  const n = { store: notifications.store, queue: notifications.queue, config: deps.config.notifications, logger };

  const impl = withMappedErrors(
    TrackingService,
    {
      trackOrder: trackOrder({
        tracking: deps.config.tracking,
        redis: deps.redis,
        logger,
        hub,
        orders: orderClient,
      }),
      listNotifications: listNotifications(n),
      markNotificationsRead: markNotificationsRead(n),
      registerWebhook: registerWebhook(n),
      replayDeadLetters: replayDeadLetters(n),
      listWebhookDeliveries: listWebhookDeliveries(n),
      deleteWebhook: deleteWebhook(n),
    } as unknown as ServiceImpl<typeof TrackingService>,
    logger,
  );

  return {
    name: "tracking",
    desc: TrackingService,
    impl: impl as unknown as ServiceModule["impl"],
    migrations,
    hub,
    notifications,
    async start() {
      await fanout.start();
      await notifications.start();
    },
    async stop() {
      await notifications.stop();
      await fanout.stop();
      await hub.close();
    },
  };
}
