import type { HandlerContext } from "@connectrpc/connect";
import type { AcceptOrderRequest } from "../../../gen/dabba/order/v1/order_service_pb.js";
import { invalid } from "../../platform/errors.js";
import { LIMITS, requireId, runCommand, type OrderHandlerDeps } from "./common.js";

/** AcceptOrder: PLACED -> CONFIRMED by the order's restaurant or ops. */
export function acceptOrder(deps: OrderHandlerDeps) {
  return async (req: AcceptOrderRequest, ctx: HandlerContext) => {
    requireId("order_id", req.orderId);
    if (req.prepMinutes < 0 || req.prepMinutes > LIMITS.prepMinutesMax) throw invalid("prep_minutes", `must be 0 to ${LIMITS.prepMinutesMax}`);
    return runCommand(deps, ctx, req.orderId, { command: "accept" }, { prepMinutes: req.prepMinutes });
  };
}
