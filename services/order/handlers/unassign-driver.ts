import type { HandlerContext } from "@connectrpc/connect";
import type { UnassignDriverRequest } from "../../../gen/dabba/order/v1/order_service_pb.js";
import { LIMITS, boundedText, requireId, runCommand, type OrderHandlerDeps } from "./common.js";

/** UnassignDriver: clears the named driver before pickup. Service, ops. */
export function unassignDriver(deps: OrderHandlerDeps) {
  return async (req: UnassignDriverRequest, ctx: HandlerContext) => {
    requireId("order_id", req.orderId);
    requireId("driver_id", req.driverId);
    const reason = boundedText("reason", req.reason, LIMITS.reason);
    return runCommand(deps, ctx, req.orderId, { command: "unassign_driver", driverId: req.driverId }, { reason });
  };
}
