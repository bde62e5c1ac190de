import type { HandlerContext } from "@connectrpc/connect";
import type { ConfirmPickupRequest } from "../../../gen/dabba/order/v1/order_service_pb.js";
import { runCommand, type OrderHandlerDeps } from "./common.js";

/** ConfirmPickup: READY_FOR_PICKUP (or PREPARING, recording READY too) -> PICKED_UP by the assigned driver or ops. */
export function confirmPickup(deps: OrderHandlerDeps) {
  return async (req: ConfirmPickupRequest, ctx: HandlerContext) => runCommand(deps, ctx, req.orderId, { command: "confirm_pickup" });
}
