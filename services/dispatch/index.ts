import { DispatchService } from "../../gen/dabba/dispatch/v1/dispatch_service_pb.js";
import type { ServiceDeps, ServiceModule } from "../platform/service.js";

/**
 * DispatchService: the contract is final; the implementation arrives with its own issue. Until then
 * every RPC answers UNIMPLEMENTED on both listeners (an empty implementation).
 */
export function createDispatchService(_deps: ServiceDeps): ServiceModule {
  return {
    name: "dispatch",
    desc: DispatchService,
    impl: {},
    migrations: {},
    async start() {},
    async stop() {},
  };
}
