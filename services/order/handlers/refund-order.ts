import type { HandlerContext } from "@connectrpc/connect";
import type { RefundOrderRequest } from "../../../gen/dabba/order/v1/order_service_pb.js";
import { requireRole } from "../../platform/auth.js";
import { NotFoundError, invalid } from "../../platform/errors.js";
import { LIMITS, boundedText, requireId, type OrderHandlerDeps } from "./common.js";

/** RefundOrder: an operator returns all (amount 0) or part of what is still charged; the payment worker makes the refund. Ops. */
export function refundOrder(deps: OrderHandlerDeps) {
  return async (req: RefundOrderRequest, ctx: HandlerContext) => {
    const principal = requireRole(ctx, "ops");
    requireId("order_id", req.orderId);
    if (req.amountMinor < 0n || req.amountMinor > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw invalid("amount_minor", "must be 0 (everything still charged) or a positive amount in minor units");
    }
    const reason = boundedText("reason", req.reason, LIMITS.reason, true);
    await deps.payments.refund(req.orderId, Number(req.amountMinor), reason, principal.sub);
    const order = await deps.store.get(req.orderId);
    if (!order) throw new NotFoundError("order not found");
    return { order };
  };
}
