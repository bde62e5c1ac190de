import type { HandlerContext } from "@connectrpc/connect";
import type { MarkNotificationsReadRequest, MarkNotificationsReadResponse } from "../../../gen/dabba/tracking/v1/tracking_service_pb.js";
import { MarkNotificationsReadResponseSchema } from "../../../gen/dabba/tracking/v1/tracking_service_pb.js";
import { create } from "@bufbuild/protobuf";
import { inboxOwner } from "../../notifications/access.js";
import { isNotificationId } from "../../notifications/domain.js";
import type { NotificationHandlerDeps } from "../../notifications/handler-deps.js";
import { principalOf } from "../../platform/auth.js";
import { invalid } from "../../platform/errors.js";

/** Most ids in one MarkNotificationsRead. */
export const MARK_READ_MAX_IDS = 100;

/**
 * MarkNotificationsRead: marks the caller's own unread messages among the ids read. Ids of other
 * people's messages (or unknown ones) are ignored, not an error, so the answer never tells whether
 * someone else's id exists; `marked` counts only what changed.
 */
export function markNotificationsRead(d: NotificationHandlerDeps) {
  return async (req: MarkNotificationsReadRequest, ctx: HandlerContext): Promise<MarkNotificationsReadResponse> => {
    const owner = inboxOwner(principalOf(ctx));
    if (req.notificationIds.length === 0) throw invalid("notification_ids", "is required");
    if (req.notificationIds.length > MARK_READ_MAX_IDS) throw invalid("notification_ids", `at most ${MARK_READ_MAX_IDS} ids`);
    req.notificationIds.forEach((id, i) => {
      if (!isNotificationId(id)) throw invalid(`notification_ids[${i}]`, "is not a notification id");
    });
    const marked = await d.store.markRead(owner, [...new Set(req.notificationIds)]);
    return create(MarkNotificationsReadResponseSchema, { marked });
  };
}
