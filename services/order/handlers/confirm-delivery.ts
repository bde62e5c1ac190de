import type { HandlerContext } from "@connectrpc/connect";
import type { ConfirmDeliveryRequest } from "../../../gen/dabba/order/v1/order_service_pb.js";
import { runCommand, type OrderHandlerDeps } from "./common.js";

/** ConfirmDelivery: PICKED_UP or EN_ROUTE -> DELIVERED by the assigned driver or ops. */
export function confirmDelivery(deps: OrderHandlerDeps) {
  return async (req: ConfirmDeliveryRequest, ctx: HandlerContext) => runCommand(deps, ctx, req.orderId, { command: "confirm_delivery" });
}
