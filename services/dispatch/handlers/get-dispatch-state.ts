import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import type { HandlerContext } from "@connectrpc/connect";
import { OfferOutcome } from "../../../gen/dabba/dispatch/v1/dispatch_pb.js";
import type { GetDispatchStateRequest } from "../../../gen/dabba/dispatch/v1/dispatch_service_pb.js";
import { requireRole } from "../../platform/auth.js";
import { NotFoundError, requireId } from "../../platform/errors.js";
import type { DispatchHandlerDeps } from "./common.js";

const OUTCOMES = {
  accepted: OfferOutcome.ACCEPTED,
  declined: OfferOutcome.DECLINED,
  expired: OfferOutcome.EXPIRED,
  withdrawn: OfferOutcome.WITHDRAWN,
} as const;

interface RecordedCandidate {
  driverId: string;
  score: number;
  pickupEtaSeconds: number;
  acceptanceRate: number;
  idleSeconds: number;
}

/** GetDispatchState: an order's dispatch history (offers, drivers, scores, outcomes, times). Ops. */
export function getDispatchState(deps: DispatchHandlerDeps) {
  return async (req: GetDispatchStateRequest, ctx: HandlerContext) => {
    requireRole(ctx, "ops");
    requireId("order_id", req.orderId);
    const job = await deps.store.getJob(req.orderId);
    if (!job) throw new NotFoundError("no dispatch for this order (not confirmed yet, or unknown)");
    const offers = await deps.store.offersOfOrder(req.orderId);
    return {
      orderId: job.order_id,
      attempt: job.attempt,
      radiusKm: job.radius_km,
      flagged: job.flagged_at !== null,
      offers: offers.map((o) => ({
        offer: deps.engine.offerMessage(job, o),
        driverId: o.driver_id,
        outcome: o.outcome ? OUTCOMES[o.outcome] : OfferOutcome.UNSPECIFIED,
        decidedAt: o.decided_at ? timestampFromMs(new Date(o.decided_at).getTime()) : undefined,
        candidates: ((typeof o.candidates === "string" ? JSON.parse(o.candidates) : o.candidates) as RecordedCandidate[]).map((c) => ({
          driverId: c.driverId,
          score: c.score,
          pickupEtaSeconds: c.pickupEtaSeconds,
          acceptanceRate: c.acceptanceRate,
          idleSeconds: c.idleSeconds,
        })),
      })),
    };
  };
}
