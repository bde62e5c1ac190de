import type { HandlerContext } from "@connectrpc/connect";
import type { AdjustTipRequest } from "../../../gen/dabba/order/v1/order_service_pb.js";
import { requireRole } from "../../platform/auth.js";
import { NotFoundError } from "../../platform/errors.js";
import { requireId, validateTip, type OrderHandlerDeps } from "./common.js";

/**
 * AdjustTip: the order's customer sets a new tip, before delivery or within the tip window after
 * it (never on a cancelled order). Once the restaurant accepted, the payment worker refunds a
 * lowered tip or authorizes and captures a raised one. Other customers get NOT_FOUND.
 */
export function adjustTip(deps: OrderHandlerDeps) {
  return async (req: AdjustTipRequest, ctx: HandlerContext) => {
    const principal = requireRole(ctx, "customer");
    requireId("order_id", req.orderId);
    const tip = validateTip(req.tipMinor);
    await deps.payments.adjustTip(req.orderId, principal.sub, tip);
    const order = await deps.store.get(req.orderId);
    if (!order) throw new NotFoundError("order not found");
    return { order };
  };
}
