import type { HandlerContext } from "@connectrpc/connect";
import type { DeclineOfferRequest } from "../../../gen/dabba/dispatch/v1/dispatch_service_pb.js";
import { requireRole } from "../../platform/auth.js";
import { requireId } from "../../platform/errors.js";
import { parseToken, type DispatchHandlerDeps } from "./common.js";

/** DeclineOffer: releases the driver and moves the order to the next candidate. Driver role. */
export function declineOffer(deps: DispatchHandlerDeps) {
  return async (req: DeclineOfferRequest, ctx: HandlerContext) => {
    const p = requireRole(ctx, "driver");
    requireId("offer_id", req.offerId);
    const token = parseToken("fencing_token", req.fencingToken);
    await deps.engine.decline(p.sub, req.offerId, token);
    return {};
  };
}
