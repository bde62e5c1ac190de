import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { HandlerContext } from "@connectrpc/connect";
import { NotificationSchema } from "../../../gen/dabba/tracking/v1/tracking_pb.js";
import type { ListNotificationsRequest, ListNotificationsResponse } from "../../../gen/dabba/tracking/v1/tracking_service_pb.js";
import { ListNotificationsResponseSchema } from "../../../gen/dabba/tracking/v1/tracking_service_pb.js";
import { inboxOwner } from "../../notifications/access.js";
import { decodePageToken, encodePageToken, pageSize } from "../../notifications/domain.js";
import type { NotificationHandlerDeps } from "../../notifications/handler-deps.js";
import { principalOf } from "../../platform/auth.js";
import { invalid } from "../../platform/errors.js";

/** ListNotifications: the caller's inbox (see inboxOwner), newest first, keyset pages. */
export function listNotifications(d: NotificationHandlerDeps) {
  return async (req: ListNotificationsRequest, ctx: HandlerContext): Promise<ListNotificationsResponse> => {
    const owner = inboxOwner(principalOf(ctx));
    const size = pageSize(req.pageSize);
    if (size === undefined) throw invalid("page_size", "must be from 0 (default 20) to 100");
    let afterId: string | undefined;
    if (req.pageToken !== "") {
      afterId = decodePageToken(req.pageToken);
      if (afterId === undefined) throw invalid("page_token", "is not a token from a previous ListNotifications");
    }
    const rows = await d.store.listInbox(owner, { unreadOnly: req.unreadOnly, limit: size + 1, afterId });
    const page = rows.slice(0, size);
    return create(ListNotificationsResponseSchema, {
      notifications: page.map((n) =>
        create(NotificationSchema, { id: n.id, orderId: n.orderId, title: n.title, body: n.body, createdAt: timestampFromDate(n.createdAt), read: n.read }),
      ),
      nextPageToken: rows.length > size ? encodePageToken(page[page.length - 1]!.id) : "",
    });
  };
}
