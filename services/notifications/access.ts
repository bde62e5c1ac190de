import type { Principal } from "../platform/auth.js";
import { PermissionError } from "../platform/errors.js";
import type { Recipient } from "./domain.js";
import type { Webhook } from "./store.js";

/**
 * The inbox of the caller: a customer's or driver's own (token subject), a restaurant's (any
 * staff token of that restaurant sees the restaurant's inbox). Operators and services have no
 * inbox: PERMISSION_DENIED, so a misconfigured client fails loudly instead of showing an empty list.
 */
export function inboxOwner(p: Principal): Recipient {
  switch (p.role) {
    case "customer":
      return { kind: "customer", id: p.sub };
    case "driver":
      return { kind: "driver", id: p.sub };
    case "restaurant":
      if (!p.restaurantId) throw new PermissionError("restaurant token without a restaurant id has no inbox");
      return { kind: "restaurant", id: p.restaurantId };
    default:
      throw new PermissionError(`${p.role} tokens have no inbox (inboxes belong to customers, drivers and restaurants)`);
  }
}

/** A restaurant token may manage only its own restaurant's webhooks; ops any. PERMISSION_DENIED otherwise. */
export function requireWebhookAccess(p: Principal, w: Webhook): void {
  if (p.role === "ops") return;
  if (p.role === "restaurant" && p.restaurantId && w.restaurantId === p.restaurantId) return;
  throw new PermissionError("this webhook belongs to another restaurant or partner");
}
