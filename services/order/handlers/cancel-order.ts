import type { HandlerContext } from "@connectrpc/connect";
import type { CancelOrderRequest } from "../../../gen/dabba/order/v1/order_service_pb.js";
import { LIMITS, boundedText, requireId, runCommand, type OrderHandlerDeps } from "./common.js";

/** CancelOrder: cancellation under the caller's rules (customer, restaurant, ops; never a driver). */
export function cancelOrder(deps: OrderHandlerDeps) {
  return async (req: CancelOrderRequest, ctx: HandlerContext) => {
    requireId("order_id", req.orderId);
    const reason = boundedText("reason", req.reason, LIMITS.reason);
    return runCommand(deps, ctx, req.orderId, { command: "cancel" }, { reason });
  };
}
