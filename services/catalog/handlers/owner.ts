import type { HandlerContext } from "@connectrpc/connect";
import { requireRole, type Principal } from "../../platform/auth.js";
import { PermissionError } from "../../platform/errors.js";

/** Restaurant tokens act only on their own restaurant; ops act on any. */
export function requireRestaurantOwner(ctx: HandlerContext, restaurantId: string): Principal {
  const p = requireRole(ctx, "restaurant", "ops");
  if (p.role === "restaurant" && p.restaurantId !== restaurantId) {
    throw new PermissionError("a restaurant token may only change its own restaurant");
  }
  return p;
}
