import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { HandlerContext } from "@connectrpc/connect";
import { WebhookDeliveryStatus, type WebhookAttempt } from "../../../gen/dabba/tracking/v1/tracking_pb.js";
import { WebhookAttemptSchema, WebhookDeliverySchema } from "../../../gen/dabba/tracking/v1/tracking_pb.js";
import type { ListWebhookDeliveriesRequest, ListWebhookDeliveriesResponse } from "../../../gen/dabba/tracking/v1/tracking_service_pb.js";
import { ListWebhookDeliveriesResponseSchema } from "../../../gen/dabba/tracking/v1/tracking_service_pb.js";
import { requireWebhookAccess } from "../../notifications/access.js";
import type { DeliveryStatus } from "../../notifications/db/tables.js";
import { pageSize } from "../../notifications/domain.js";
import type { NotificationHandlerDeps } from "../../notifications/handler-deps.js";
import { requireRole } from "../../platform/auth.js";
import { NotFoundError, invalid, requireId } from "../../platform/errors.js";

const TO_PROTO: Record<DeliveryStatus, WebhookDeliveryStatus> = {
  pending: WebhookDeliveryStatus.PENDING,
  delivered: WebhookDeliveryStatus.DELIVERED,
  dead: WebhookDeliveryStatus.DEAD,
};
const FROM_PROTO: Partial<Record<WebhookDeliveryStatus, DeliveryStatus>> = {
  [WebhookDeliveryStatus.PENDING]: "pending",
  [WebhookDeliveryStatus.DELIVERED]: "delivered",
  [WebhookDeliveryStatus.DEAD]: "dead",
};

/** ListWebhookDeliveries: a webhook's most recent deliveries (optionally of one status) with every attempt. The webhook's restaurant or ops. */
export function listWebhookDeliveries(d: NotificationHandlerDeps) {
  return async (req: ListWebhookDeliveriesRequest, ctx: HandlerContext): Promise<ListWebhookDeliveriesResponse> => {
    const p = requireRole(ctx, "restaurant", "ops");
    const id = requireId("webhook_id", req.webhookId);
    const size = pageSize(req.pageSize);
    if (size === undefined) throw invalid("page_size", "must be from 0 (default 20) to 100");
    let status: DeliveryStatus | undefined;
    if (req.status !== WebhookDeliveryStatus.UNSPECIFIED) {
      status = FROM_PROTO[req.status];
      if (!status) throw invalid("status", "unknown delivery status");
    }
    const w = await d.store.webhook(id);
    if (!w) throw new NotFoundError("webhook not found");
    requireWebhookAccess(p, w);
    const deliveries = await d.store.deliveries(w.id, { limit: size, status });
    const attempts = await d.store.attempts(w.id, deliveries.map((x) => x.id));
    const byDelivery = new Map<string, WebhookAttempt[]>();
    for (const a of attempts) {
      let list = byDelivery.get(a.deliveryId);
      if (!list) byDelivery.set(a.deliveryId, (list = []));
      list.push(create(WebhookAttemptSchema, { attempt: a.attempt, statusCode: a.statusCode ?? 0, error: a.error ?? "", durationMs: a.durationMs, at: timestampFromDate(a.at) }));
    }
    return create(ListWebhookDeliveriesResponseSchema, {
      deliveries: deliveries.map((x) =>
        create(WebhookDeliverySchema, {
          id: x.id,
          eventId: x.eventId,
          eventType: x.eventType,
          orderId: x.orderId,
          status: TO_PROTO[x.status],
          attempts: x.attempts,
          createdAt: timestampFromDate(x.createdAt),
          updatedAt: timestampFromDate(x.updatedAt),
          attemptLog: byDelivery.get(x.id) ?? [],
        }),
      ),
    });
  };
}
