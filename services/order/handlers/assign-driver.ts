import type { HandlerContext } from "@connectrpc/connect";
import type { AssignDriverRequest } from "../../../gen/dabba/order/v1/order_service_pb.js";
import { invalid } from "../../platform/errors.js";
import { requireId, runCommand, type OrderHandlerDeps } from "./common.js";

/** AssignDriver: compare-and-set of the order's driver, fenced by dispatch's offer token. Service, ops. */
export function assignDriver(deps: OrderHandlerDeps) {
  return async (req: AssignDriverRequest, ctx: HandlerContext) => {
    requireId("order_id", req.orderId);
    requireId("driver_id", req.driverId);
    if (req.fencingToken < 0n || req.fencingToken > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw invalid("fencing_token", "must be 0 to 2^53-1");
    }
    return runCommand(deps, ctx, req.orderId, {
      command: "assign_driver",
      driverId: req.driverId,
      fencingToken: Number(req.fencingToken),
    });
  };
}
