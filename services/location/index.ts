import { createClient, type Client } from "@connectrpc/connect";
import { LocationService } from "../../gen/dabba/location/v1/location_service_pb.js";
import { OrderService } from "../../gen/dabba/order/v1/order_service_pb.js";
import { withMappedErrors } from "../platform/errors.js";
import { createStreamRetention } from "../platform/stream-retention.js";
import type { ServiceDeps, ServiceModule } from "../platform/service.js";
import { createActiveOrders } from "./active-orders.js";
import { LOCATION_EVENTS_STREAM } from "./keys.js";
import { migrations } from "./db/migrations.js";
import { findNearbyDrivers } from "./handlers/find-nearby-drivers.js";
import { getDriverLocation } from "./handlers/get-driver-location.js";
import { getLocationHistory } from "./handlers/get-location-history.js";
import { reportLocations } from "./handlers/report-locations.js";
import { createLocationHistory, type LocationHistory } from "./history.js";
import { createIngest, type Ingest } from "./ingest.js";
import type { ActiveOrders } from "./types.js";
import { createTickWriter, type TickWriter } from "./writer.js";

/** The parts of the location service; tests may pass their own history or active-order tracker. */
export interface LocationParts {
  history: LocationHistory;
  activeOrders: ActiveOrders;
}

export interface LocationModule extends ServiceModule {
  readonly ingest: Ingest;
  readonly writer: TickWriter;
  readonly parts: LocationParts;
}

/**
 * LocationService: GPS ingestion over a client stream (validated, batched per tick into one
 * Redis pipeline), live positions (GetDriverLocation, FindNearbyDrivers over the city geo
 * index), Postgres history, and the active orders whose geofences turn fixes into events.
 */
export function createLocationService(deps: ServiceDeps, overrides: Partial<LocationParts> = {}): LocationModule {
  const config = deps.config.location;
  const logger = deps.logger;
  let order: Client<typeof OrderService> | undefined;
  const history = overrides.history ?? createLocationHistory({ db: deps.db, config, logger });
  const activeOrders =
    overrides.activeOrders ??
    createActiveOrders({
      redis: deps.redis,
      config,
      logger,
      order: () => (order ??= createClient(OrderService, deps.peer("order"))),
    });
  // Geofence crossings go to events:location from here, so this service keeps it trimmed.
  const retention = createStreamRetention({ eventLog: deps.redis.eventLog, streams: [LOCATION_EVENTS_STREAM], config: deps.config.eventStreams, logger });
  const writer = createTickWriter({ redis: deps.redis, config, logger, history, activeOrders });
  const ingest = createIngest({ redis: deps.redis, config, logger, activeOrders, writer });

  const impl = withMappedErrors(
    LocationService,
    {
      reportLocations: reportLocations({ config, logger, ingest, writer }),
      getDriverLocation: getDriverLocation({ redis: deps.redis, activeOrders }),
      findNearbyDrivers: findNearbyDrivers({ config, redis: deps.redis, logger }),
      getLocationHistory: getLocationHistory(history),
    },
    logger,
  );

  return {
    name: "location",
    desc: LocationService,
    impl: impl as unknown as ServiceModule["impl"],
    migrations,
    ingest,
    writer,
    parts: { history, activeOrders },
    async start() {
      history.start();
      await activeOrders.start();
      writer.start();
      ingest.start();
      retention.start();
    },
    async stop() {
      // The host has drained the streams; write what they handed over, then stop the consumers.
      ingest.stop();
      await writer.stop();
      await activeOrders.stop();
      await history.stop();
      await retention.stop();
    },
  };
}
