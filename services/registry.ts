import { createCatalogService } from "./catalog/index.js";
import { createDispatchService } from "./dispatch/index.js";
import { createLocationService } from "./location/index.js";
import { createOrderService } from "./order/index.js";
import type { ServiceDeps, ServiceModule, ServiceName } from "./platform/service.js";
import { createTrackingService } from "./tracking/index.js";

/** Every service's factory, by the name used in SERVICES. */
export const serviceFactories: Record<ServiceName, (deps: ServiceDeps) => ServiceModule> = {
  catalog: createCatalogService,
  order: createOrderService,
  dispatch: createDispatchService,
  location: createLocationService,
  tracking: createTrackingService,
};
