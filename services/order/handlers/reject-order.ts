import type { HandlerContext } from "@connectrpc/connect";
import type { RejectOrderRequest } from "../../../gen/dabba/order/v1/order_service_pb.js";
import { LIMITS, boundedText, requireId, runCommand, type OrderHandlerDeps } from "./common.js";

/** RejectOrder: cancels a PLACED order on the restaurant's behalf (reason required). */
export function rejectOrder(deps: OrderHandlerDeps) {
  return async (req: RejectOrderRequest, ctx: HandlerContext) => {
    requireId("order_id", req.orderId);
    const reason = boundedText("reason", req.reason, LIMITS.reason, true);
    return runCommand(deps, ctx, req.orderId, { command: "reject" }, { reason });
  };
}
