import type { HandlerContext } from "@connectrpc/connect";
import type { ReleaseAssignmentRequest } from "../../../gen/dabba/dispatch/v1/dispatch_service_pb.js";
import { requireRole } from "../../platform/auth.js";
import { invalid, requireId } from "../../platform/errors.js";
import type { DispatchHandlerDeps } from "./common.js";

const REASON_MAX = 500;

/** ReleaseAssignment: the assigned driver gives the order back before pickup; dispatch starts again. Driver role. */
export function releaseAssignment(deps: DispatchHandlerDeps) {
  return async (req: ReleaseAssignmentRequest, ctx: HandlerContext) => {
    const p = requireRole(ctx, "driver");
    requireId("order_id", req.orderId);
    if ([...req.reason].length > REASON_MAX) throw invalid("reason", `must be at most ${REASON_MAX} characters`);
    await deps.engine.release(p.sub, req.orderId, req.reason.trim());
    return {};
  };
}
