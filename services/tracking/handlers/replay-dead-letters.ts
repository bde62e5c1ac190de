import { create } from "@bufbuild/protobuf";
import type { HandlerContext } from "@connectrpc/connect";
import type { ReplayDeadLettersRequest, ReplayDeadLettersResponse } from "../../../gen/dabba/tracking/v1/tracking_service_pb.js";
import { ReplayDeadLettersResponseSchema } from "../../../gen/dabba/tracking/v1/tracking_service_pb.js";
import { requireWebhookAccess } from "../../notifications/access.js";
import type { NotificationHandlerDeps } from "../../notifications/handler-deps.js";
import { requireRole } from "../../platform/auth.js";
import { NotFoundError, PreconditionError, requireId } from "../../platform/errors.js";

/**
 * ReplayDeadLetters: moves the webhook's dead-lettered deliveries back to pending, each with a
 * fresh round of attempts, and queues their next attempt in the same transaction. Returns how
 * many were re-queued (0 when none were dead). The webhook's restaurant or ops.
 */
export function replayDeadLetters(d: NotificationHandlerDeps) {
  return async (req: ReplayDeadLettersRequest, ctx: HandlerContext): Promise<ReplayDeadLettersResponse> => {
    const p = requireRole(ctx, "restaurant", "ops");
    const id = requireId("webhook_id", req.webhookId);
    const w = await d.store.webhook(id);
    if (!w) throw new NotFoundError("webhook not found");
    requireWebhookAccess(p, w);
    if (w.deletedAt) throw new PreconditionError("webhook was deleted; register a new one");
    let wake = false;
    const requeued = await d.store.transaction(async (trx) => {
      const rows = await d.store.requeueDead(trx, w.id);
      await d.queue.send(rows.map((r) => ({ job: { deliveryId: r.id, attempt: r.attempt } })), trx);
      wake = d.queue.sentDueIn(trx);
      return rows.length;
    });
    if (wake) d.queue.wake();
    d.logger.info({ webhookId: w.id, requeued, by: `${p.role}:${p.sub}` }, "webhook dead letters replayed");
    return create(ReplayDeadLettersResponseSchema, { requeued });
  };
}
