import type { HandlerContext } from "@connectrpc/connect";
import type { MarkEnRouteRequest } from "../../../gen/dabba/order/v1/order_service_pb.js";
import { runCommand, type OrderHandlerDeps } from "./common.js";

/** MarkEnRoute: PICKED_UP -> EN_ROUTE by the assigned driver, service (geofence) or ops. */
export function markEnRoute(deps: OrderHandlerDeps) {
  return async (req: MarkEnRouteRequest, ctx: HandlerContext) => runCommand(deps, ctx, req.orderId, { command: "mark_en_route" });
}
