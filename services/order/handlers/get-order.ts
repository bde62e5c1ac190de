import type { HandlerContext } from "@connectrpc/connect";
import type { GetOrderRequest } from "../../../gen/dabba/order/v1/order_service_pb.js";
import { principalOf } from "../../platform/auth.js";
import { NotFoundError } from "../../platform/errors.js";
import { canSee } from "../domain.js";
import { requireId, type OrderHandlerDeps } from "./common.js";

/** GetOrder: the order with its timeline, for those who may see it; NOT_FOUND for everyone else. */
export function getOrder(deps: OrderHandlerDeps) {
  return async (req: GetOrderRequest, ctx: HandlerContext) => {
    const principal = principalOf(ctx);
    requireId("order_id", req.orderId);
    const order = await deps.store.get(req.orderId, { timeline: true });
    if (!order || !canSee(principal, { customerId: order.customerId, restaurantId: order.restaurantId, driverId: order.driverId || null })) {
      throw new NotFoundError("order not found");
    }
    return { order };
  };
}
