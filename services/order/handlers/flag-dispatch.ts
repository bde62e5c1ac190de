import type { HandlerContext } from "@connectrpc/connect";
import type { FlagDispatchRequest } from "../../../gen/dabba/order/v1/order_service_pb.js";
import { requireRole } from "../../platform/auth.js";
import { invalid } from "../../platform/errors.js";
import { requireId, runCommand, type OrderHandlerDeps } from "./common.js";

/**
 * FlagDispatch: dispatch found no driver in time. Records the flag once (timeline entry and
 * dispatch_flagged event in the order's sequence); a repeat answers with the current order.
 * Service, ops: checked before the order is read, so other callers learn nothing about it.
 */
export function flagDispatch(deps: OrderHandlerDeps) {
  return async (req: FlagDispatchRequest, ctx: HandlerContext) => {
    requireRole(ctx, "service", "ops");
    requireId("order_id", req.orderId);
    if (req.attempts < 0) throw invalid("attempts", "must be 0 or more");
    return runCommand(deps, ctx, req.orderId, { command: "flag_dispatch" }, { attempts: req.attempts });
  };
}
