import type { HandlerContext } from "@connectrpc/connect";
import type { ListOrdersRequest } from "../../../gen/dabba/order/v1/order_service_pb.js";
import { principalOf } from "../../platform/auth.js";
import { PermissionError, invalid } from "../../platform/errors.js";
import type { ListCursor, ListScope } from "../store.js";
import { LIMITS, requireId, type OrderHandlerDeps } from "./common.js";

/**
 * ListOrders: a customer's orders newest first, or a restaurant's (active by default), keyset
 * paged with opaque tokens.
 */
export function listOrders(deps: OrderHandlerDeps) {
  return async (req: ListOrdersRequest, ctx: HandlerContext) => {
    const p = principalOf(ctx);
    if (req.pageSize < 0 || req.pageSize > LIMITS.pageSizeMax) throw invalid("page_size", `must be 0 to ${LIMITS.pageSizeMax}`);
    const limit = req.pageSize || LIMITS.pageSizeDefault;
    if (req.restaurantId !== "") requireId("restaurant_id", req.restaurantId);

    let scope: ListScope;
    switch (p.role) {
      case "customer":
        scope = { customerId: p.sub };
        break;
      case "restaurant":
        if (req.restaurantId !== "" && req.restaurantId !== p.restaurantId) {
          throw new PermissionError("restaurant_id does not match the token's restaurant");
        }
        scope = { restaurantId: p.restaurantId!, includeClosed: req.includeClosed };
        break;
      case "ops":
      case "service":
        if (req.restaurantId === "") throw invalid("restaurant_id", "is required for ops and service callers");
        scope = { restaurantId: req.restaurantId, includeClosed: req.includeClosed };
        break;
      default:
        throw new PermissionError(`role ${p.role} may not list orders`);
    }
    const scopeKey = "customerId" in scope ? `c:${scope.customerId}` : `r:${scope.restaurantId}:${scope.includeClosed ? 1 : 0}`;
    const after = decodeToken(req.pageToken, scopeKey);
    const { orders, next } = await deps.store.list(scope, { limit, after });
    return { orders, nextPageToken: next ? encodeToken(next, scopeKey) : "" };
  };
}

function encodeToken(c: ListCursor, scope: string): string {
  return Buffer.from(JSON.stringify({ t: c.createdAtMs, i: c.id, s: scope })).toString("base64url");
}

function decodeToken(token: string, scope: string): ListCursor | undefined {
  if (token === "") return undefined;
  if (token.length > LIMITS.pageTokenMax) throw invalid("page_token", "is too long");
  try {
    const v = JSON.parse(Buffer.from(token, "base64url").toString("utf8")) as { t?: unknown; i?: unknown; s?: unknown };
    if (typeof v.t === "number" && Number.isFinite(v.t) && typeof v.i === "string" && v.s === scope) {
      return { createdAtMs: v.t, id: v.i };
    }
  } catch {
    // fall through
  }
  throw invalid("page_token", "is not a token of this listing");
}
