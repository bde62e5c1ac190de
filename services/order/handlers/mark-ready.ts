import type { HandlerContext } from "@connectrpc/connect";
import type { MarkReadyRequest } from "../../../gen/dabba/order/v1/order_service_pb.js";
import { runCommand, type OrderHandlerDeps } from "./common.js";

/** MarkReady: PREPARING -> READY_FOR_PICKUP by the order's restaurant or ops. */
export function markReady(deps: OrderHandlerDeps) {
  return async (req: MarkReadyRequest, ctx: HandlerContext) => runCommand(deps, ctx, req.orderId, { command: "mark_ready" });
}
