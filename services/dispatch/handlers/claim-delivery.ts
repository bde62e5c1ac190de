import type { HandlerContext } from "@connectrpc/connect";
import type { ClaimDeliveryRequest } from "../../../gen/dabba/dispatch/v1/dispatch_service_pb.js";
import { requireRole } from "../../platform/auth.js";
import { requireId } from "../../platform/errors.js";
import type { DispatchHandlerDeps } from "./common.js";

/** ClaimDelivery: the pull model's take, through the same lock, token and assignment CAS as an offer. Driver role. */
export function claimDelivery(deps: DispatchHandlerDeps) {
  return async (req: ClaimDeliveryRequest, ctx: HandlerContext) => {
    const p = requireRole(ctx, "driver");
    requireId("order_id", req.orderId);
    return { order: await deps.engine.claim(p.sub, req.orderId) };
  };
}
