import { LocationService } from "../../gen/dabba/location/v1/location_service_pb.js";
import type { ServiceDeps, ServiceModule } from "../platform/service.js";

/**
 * LocationService: the contract is final; the implementation arrives with its own issue. Until then
 * every RPC answers UNIMPLEMENTED on both listeners (an empty implementation).
 */
export function createLocationService(_deps: ServiceDeps): ServiceModule {
  return {
    name: "location",
    desc: LocationService,
    impl: {},
    migrations: {},
    async start() {},
    async stop() {},
  };
}
