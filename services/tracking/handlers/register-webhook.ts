import { randomBytes, randomUUID } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import type { HandlerContext } from "@connectrpc/connect";
import { WebhookSchema } from "../../../gen/dabba/tracking/v1/tracking_pb.js";
import type { RegisterWebhookRequest, RegisterWebhookResponse } from "../../../gen/dabba/tracking/v1/tracking_service_pb.js";
import { RegisterWebhookResponseSchema } from "../../../gen/dabba/tracking/v1/tracking_service_pb.js";
import { EVENT_TYPES } from "../../notifications/domain.js";
import { refusedUrlReason } from "../../notifications/egress.js";
import { sealSecret } from "../../notifications/secrets.js";
import type { NotificationHandlerDeps } from "../../notifications/handler-deps.js";
import type { Webhook } from "../../notifications/store.js";
import { requireRole } from "../../platform/auth.js";
import { PermissionError, invalid, requireId } from "../../platform/errors.js";

/** Longest accepted webhook URL, characters. */
export const WEBHOOK_URL_MAX = 2048;
/** Most event types in one webhook's filter. */
export const WEBHOOK_EVENT_TYPES_MAX = EVENT_TYPES.length;

/** The webhook as the API shows it (never its secret). */
export function webhookProto(w: Webhook) {
  return create(WebhookSchema, {
    id: w.id,
    url: w.url,
    eventTypes: w.eventTypes,
    restaurantId: w.restaurantId ?? "",
    createdAt: timestampFromDate(w.createdAt),
    deletedAt: w.deletedAt ? timestampFromDate(w.deletedAt) : undefined,
  });
}

/** A webhook URL: absolute http or https, a host, no credentials, at most WEBHOOK_URL_MAX characters. */
export function validateWebhookUrl(raw: string, allowPrivateNetworks: boolean): string {
  if (raw === "") throw invalid("url", "is required");
  if (raw.length > WEBHOOK_URL_MAX) throw invalid("url", `must be at most ${WEBHOOK_URL_MAX} characters`);
  let u: URL;
  try {
    u = new URL(raw);
  } catch {
    throw invalid("url", "is not an absolute URL");
  }
  if (u.protocol !== "https:" && u.protocol !== "http:") throw invalid("url", "must be http or https");
  if (!u.hostname) throw invalid("url", "must name a host");
  if (u.username || u.password) throw invalid("url", "must not carry credentials (the signature authenticates dabba)");
  const refused = allowPrivateNetworks ? undefined : refusedUrlReason(u);
  if (refused) throw invalid("url", `${refused}; webhooks go to public addresses only (WEBHOOK_ALLOW_PRIVATE_NETWORKS=true allows others)`);
  return u.toString();
}

/**
 * RegisterWebhook: a restaurant token registers a webhook for its own restaurant (restaurant_id
 * empty or its own); ops register one for any restaurant, or with restaurant_id empty a partner
 * webhook receiving every order's events. The signing secret (32 random bytes, hex, prefixed
 * whsec_; the whole string is the HMAC key) is returned here only.
 */
export function registerWebhook(d: NotificationHandlerDeps) {
  return async (req: RegisterWebhookRequest, ctx: HandlerContext): Promise<RegisterWebhookResponse> => {
    const p = requireRole(ctx, "restaurant", "ops");
    const url = validateWebhookUrl(req.url, d.config.allowPrivateNetworks);
    if (req.eventTypes.length > WEBHOOK_EVENT_TYPES_MAX) throw invalid("event_types", `at most ${WEBHOOK_EVENT_TYPES_MAX} types`);
    req.eventTypes.forEach((t, i) => {
      if (!(EVENT_TYPES as readonly string[]).includes(t)) throw invalid(`event_types[${i}]`, `unknown event type "${t.slice(0, 40)}" (known: ${EVENT_TYPES.join(", ")})`);
    });
    let restaurantId: string | null;
    if (p.role === "restaurant") {
      if (!p.restaurantId) throw new PermissionError("restaurant token without a restaurant id");
      if (req.restaurantId !== "" && req.restaurantId !== p.restaurantId) throw new PermissionError("a restaurant registers webhooks only for its own restaurant");
      restaurantId = p.restaurantId;
    } else {
      restaurantId = req.restaurantId === "" ? null : requireId("restaurant_id", req.restaurantId);
    }
    const secret = `whsec_${randomBytes(32).toString("hex")}`;
    const w = await d.store.createWebhook({
      id: `wh-${randomUUID()}`,
      url,
      eventTypes: [...new Set(req.eventTypes)],
      restaurantId,
      secret: sealSecret(secret, d.config.secretKey),
      createdBy: `${p.role}:${p.sub}`,
    });
    d.logger.info({ webhookId: w.id, restaurantId, by: `${p.role}:${p.sub}` }, "webhook registered");
    return create(RegisterWebhookResponseSchema, { webhook: webhookProto(w), signingSecret: secret });
  };
}
