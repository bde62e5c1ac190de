import { createClient, type Client, type ServiceImpl } from "@connectrpc/connect";
import { OrderService } from "../../gen/dabba/order/v1/order_service_pb.js";
import { TrackingService } from "../../gen/dabba/tracking/v1/tracking_service_pb.js";
import { withMappedErrors } from "../platform/errors.js";
import type { ServiceDeps, ServiceModule } from "../platform/service.js";
import { createTrackingFanout } from "./fanout.js";
import { trackOrder } from "./handlers/track-order.js";
import { createTrackingHub, type TrackingHub } from "./hub.js";

/** The tracking module with its hub exposed (tests read its counts). */
export interface TrackingServiceModule extends ServiceModule {
  hub: TrackingHub;
}

/**
 * TrackingService: TrackOrder (live order tracking) over the per-order tracking channels. The
 * inbox and webhook RPCs belong to a later issue and answer UNIMPLEMENTED until then.
 */
export function createTrackingService(deps: ServiceDeps): TrackingServiceModule {
  const logger = deps.logger;
  const hub = createTrackingHub({ channels: deps.redis.channels, logger });
  const fanout = createTrackingFanout({ redis: deps.redis, logger });
  let orders: Client<typeof OrderService> | undefined;

  const impl = withMappedErrors(
    TrackingService,
    {
      trackOrder: trackOrder({
        tracking: deps.config.tracking,
        redis: deps.redis,
        logger,
        hub,
        orders: () => (orders ??= createClient(OrderService, deps.peer("order"))),
      }),
    } as unknown as ServiceImpl<typeof TrackingService>,
    logger,
  );

  return {
    name: "tracking",
    desc: TrackingService,
    impl: impl as unknown as ServiceModule["impl"],
    migrations: {},
    hub,
    async start() {
      await fanout.start();
    },
    async stop() {
      await fanout.stop();
      await hub.close();
    },
  };
}
