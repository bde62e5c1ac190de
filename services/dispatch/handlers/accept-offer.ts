import type { HandlerContext } from "@connectrpc/connect";
import type { AcceptOfferRequest } from "../../../gen/dabba/dispatch/v1/dispatch_service_pb.js";
import { requireRole } from "../../platform/auth.js";
import { requireId } from "../../platform/errors.js";
import { parseToken, type DispatchHandlerDeps } from "./common.js";

/**
 * AcceptOffer: the lock's compare-and-delete with the offer's token, then OrderService's
 * assignment compare-and-set with the same token; a late, duplicate or replayed accept never
 * double-assigns. Driver role (the driver is the token's subject).
 */
export function acceptOffer(deps: DispatchHandlerDeps) {
  return async (req: AcceptOfferRequest, ctx: HandlerContext) => {
    const p = requireRole(ctx, "driver");
    requireId("offer_id", req.offerId);
    const token = parseToken("fencing_token", req.fencingToken);
    return { order: await deps.engine.accept(p.sub, req.offerId, token) };
  };
}
