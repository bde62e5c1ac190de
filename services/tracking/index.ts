import { TrackingService } from "../../gen/dabba/tracking/v1/tracking_service_pb.js";
import type { ServiceDeps, ServiceModule } from "../platform/service.js";

/**
 * TrackingService: the contract is final; the implementation arrives with its own issue. Until then
 * every RPC answers UNIMPLEMENTED on both listeners (an empty implementation).
 */
export function createTrackingService(_deps: ServiceDeps): ServiceModule {
  return {
    name: "tracking",
    desc: TrackingService,
    impl: {},
    migrations: {},
    async start() {},
    async stop() {},
  };
}
