import { create } from "@bufbuild/protobuf";
import type { HandlerContext } from "@connectrpc/connect";
import type { DeleteWebhookRequest, DeleteWebhookResponse } from "../../../gen/dabba/tracking/v1/tracking_service_pb.js";
import { DeleteWebhookResponseSchema } from "../../../gen/dabba/tracking/v1/tracking_service_pb.js";
import { requireWebhookAccess } from "../../notifications/access.js";
import type { NotificationHandlerDeps } from "../../notifications/handler-deps.js";
import { requireRole } from "../../platform/auth.js";
import { NotFoundError, requireId } from "../../platform/errors.js";
import { webhookProto } from "./register-webhook.js";

/**
 * DeleteWebhook: stops a webhook (no deliveries for later events; pending ones dead-lettered in
 * the same transaction). The webhook and its delivery log stay readable (ListWebhookDeliveries).
 * Repeating it answers the deleted webhook with nothing cancelled. The webhook's restaurant or ops.
 */
export function deleteWebhook(d: NotificationHandlerDeps) {
  return async (req: DeleteWebhookRequest, ctx: HandlerContext): Promise<DeleteWebhookResponse> => {
    const p = requireRole(ctx, "restaurant", "ops");
    const id = requireId("webhook_id", req.webhookId);
    const w = await d.store.webhook(id);
    if (!w) throw new NotFoundError("webhook not found");
    requireWebhookAccess(p, w);
    const r = await d.store.deleteWebhook(id);
    if (!r) throw new NotFoundError("webhook not found");
    d.logger.info({ webhookId: id, cancelled: r.cancelled, by: `${p.role}:${p.sub}` }, "webhook deleted");
    return create(DeleteWebhookResponseSchema, { webhook: webhookProto(r.webhook), cancelled: r.cancelled });
  };
}
