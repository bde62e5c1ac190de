import type { HandlerContext } from "@connectrpc/connect";
import type { StartPreparingRequest } from "../../../gen/dabba/order/v1/order_service_pb.js";
import { runCommand, type OrderHandlerDeps } from "./common.js";

/** StartPreparing: CONFIRMED -> PREPARING by the order's restaurant or ops. */
export function startPreparing(deps: OrderHandlerDeps) {
  return async (req: StartPreparingRequest, ctx: HandlerContext) => runCommand(deps, ctx, req.orderId, { command: "start_preparing" });
}
