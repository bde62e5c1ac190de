import { toJson } from "@bufbuild/protobuf";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { ActorRole } from "../../gen/dabba/common/v1/common_pb.js";
import { EventSchema, GeofenceKind, PaymentOperation, type Event } from "../../gen/dabba/events/v1/events_pb.js";
import { OrderStatus } from "../../gen/dabba/order/v1/order_pb.js";

/**
 * Pure notification rules: which events concern whom, the text each recipient reads, the
 * webhook body of an event, retry delays and inbox page tokens. No I/O.
 */

export type RecipientKind = "customer" | "restaurant" | "driver";

/** Whose inbox a message lands in: a customer or driver id, or a restaurant id (all its staff). */
export interface Recipient {
  kind: RecipientKind;
  id: string;
}

/** The people of an order, as last seen on its events (geofence events carry no order snapshot). */
export interface OrderParties {
  orderId: string;
  customerId: string;
  restaurantId: string;
  restaurantName: string;
  /** The assigned driver; "" when none. */
  driverId: string;
}

/** One inbox message (and push) for one recipient. */
export interface Message {
  recipient: Recipient;
  /** What the message is about (confirmed, arriving, cancelled ...): also the push data's `kind`. */
  kind: string;
  title: string;
  body: string;
  /**
   * Uniqueness of the message per recipient: the event id, so a redelivered event never makes a
   * second message; for geofence crossings the order and crossing kind, since a driver hovering
   * at the boundary (or two location processes) can report one crossing under several ids.
   */
  dedupeKey: string;
}

/** Event type names: the proto field names of the Event payload cases (webhook event_types use them). */
export const EVENT_TYPES = [
  "placed",
  "confirmed",
  "rejected",
  "preparing",
  "ready",
  "driver_assigned",
  "driver_unassigned",
  "picked_up",
  "en_route",
  "delivered",
  "cancelled",
  "dispatch_flagged",
  "geofence",
  "eta_changed",
  "payment",
] as const;
export type EventType = (typeof EVENT_TYPES)[number];

/** The event's type name (snake case, as in the proto), or "" for an event without a payload. */
export function eventType(ev: Event): EventType | "" {
  const c = ev.payload.case;
  if (!c) return "";
  return c.replace(/[A-Z]/g, (m) => `_${m.toLowerCase()}`) as EventType;
}

/** The parties of an order from an order event's snapshot; undefined when the event has none. */
export function partiesOf(ev: Event): OrderParties | undefined {
  const o = ev.order;
  if (!o || !o.customerId || !o.restaurantId) return undefined;
  return {
    orderId: ev.orderId || o.id,
    customerId: o.customerId,
    restaurantId: o.restaurantId,
    restaurantName: o.restaurantName,
    driverId: o.driverId,
  };
}

/** A short, human order reference ("#a1b2c3"): the last six characters of the id. */
export function orderRef(orderId: string): string {
  return `#${orderId.slice(-6)}`;
}

const ROLE_NAME: Partial<Record<ActorRole, string>> = {
  [ActorRole.CUSTOMER]: "the customer",
  [ActorRole.RESTAURANT]: "the restaurant",
  [ActorRole.OPS]: "dabba support",
  [ActorRole.SERVICE]: "dabba",
  [ActorRole.DRIVER]: "the driver",
};

/** An amount in minor units as people read it ("$2.00", "¥200"), by the currency's own decimals. */
export function formatMoney(amountMinor: bigint | number, currency: string): string {
  try {
    const f = new Intl.NumberFormat("en", { style: "currency", currency });
    return f.format(Number(amountMinor) / 10 ** (f.resolvedOptions().maximumFractionDigits ?? 2));
  } catch {
    return `${currency} ${(Number(amountMinor) / 100).toFixed(2)}`;
  }
}

function withReason(text: string, reason: string): string {
  const r = reason.trim();
  return r ? `${text} Reason: ${r}.` : `${text}`;
}

/**
 * The messages an event makes, one per concerned recipient (none for events nobody needs to
 * hear about: captures and voids, ETA changes, en route after picked up). `parties` are the order's people
 * (from the event's own snapshot when it has one). Cancellations and rejections go to the other
 * parties with the reason, never to the one who did it.
 */
export function messagesFor(ev: Event, parties: OrderParties | undefined): Message[] {
  const type = eventType(ev);
  if (!type || !parties) return [];
  const p = parties;
  const ref = orderRef(p.orderId);
  const shop = p.restaurantName || "The restaurant";
  const out: Message[] = [];
  const add = (kind: RecipientKind, id: string, mkind: string, title: string, body: string, dedupeKey = ev.eventId) => {
    if (id) out.push({ recipient: { kind, id }, kind: mkind, title, body, dedupeKey });
  };
  const pl = ev.payload;
  switch (pl.case) {
    case "placed":
      add("restaurant", p.restaurantId, "placed", `New order ${ref}`, `A new order ${ref} is waiting for your answer.`);
      break;
    case "confirmed": {
      const mins = pl.value.prepMinutes;
      add("customer", p.customerId, "confirmed", "Order confirmed", `${shop} accepted your order ${ref}${mins > 0 ? ` and expects to need about ${mins} min to prepare it` : ""}.`);
      break;
    }
    case "preparing":
      add("customer", p.customerId, "preparing", "Your food is being prepared", `${shop} started preparing your order ${ref}.`);
      break;
    case "ready":
      add("driver", p.driverId, "ready", `Order ${ref} is ready`, `Order ${ref} is ready for pickup at ${shop}.`);
      break;
    case "driverAssigned": {
      const driverId = pl.value.driverId || p.driverId;
      add("customer", p.customerId, "driver_assigned", "A driver is on the way", `A driver is heading to ${shop} for your order ${ref}.`);
      add("restaurant", p.restaurantId, "driver_assigned", `Driver assigned to ${ref}`, `A driver has been assigned to order ${ref}.`);
      add("driver", driverId, "driver_assigned", "New delivery", `Pick up order ${ref} at ${shop}.`);
      break;
    }
    case "driverUnassigned":
      add("driver", pl.value.driverId, "driver_unassigned", `Delivery ${ref} removed`, withReason(`You are no longer assigned to order ${ref}.`, pl.value.reason));
      break;
    case "pickedUp":
      add("customer", p.customerId, "picked_up", "Your order is on its way", `Your order ${ref} from ${shop} has been picked up.`);
      add("restaurant", p.restaurantId, "picked_up", `Order ${ref} picked up`, `The driver picked up order ${ref}.`);
      break;
    case "geofence":
      if (pl.value.kind === GeofenceKind.APPROACHING_CUSTOMER) {
        add("customer", p.customerId, "arriving", "Your driver is arriving", `Your order ${ref} is almost there: the driver is close by.`, `geofence:${p.orderId}:arriving`);
      }
      break;
    case "delivered":
      add("customer", p.customerId, "delivered", "Delivered. Enjoy!", `Your order ${ref} from ${shop} has been delivered.`);
      add("restaurant", p.restaurantId, "delivered", `Order ${ref} delivered`, `Order ${ref} was delivered to the customer.`);
      break;
    case "rejected": {
      const by = ev.actor?.role ?? ActorRole.RESTAURANT;
      const text = by === ActorRole.SERVICE ? `${shop} did not answer in time, so your order ${ref} was not placed; you have not been charged.` : `${shop} could not take your order ${ref}; you have not been charged.`;
      add("customer", p.customerId, "rejected", "Order not accepted", withReason(text, pl.value.reason));
      // The restaurant rejected it itself unless the answer timer (the service) did.
      if (by !== ActorRole.RESTAURANT) {
        add("restaurant", p.restaurantId, "rejected", `Order ${ref} rejected`, withReason(`Order ${ref} was rejected by ${ROLE_NAME[by] ?? "dabba"}.`, pl.value.reason));
      }
      break;
    }
    case "cancelled": {
      const by = ev.order?.cancelledBy?.role ?? ev.actor?.role ?? ActorRole.UNSPECIFIED;
      const who = ROLE_NAME[by] ?? "dabba";
      const reason = pl.value.reason || ev.order?.cancellationReason || "";
      if (by !== ActorRole.CUSTOMER) {
        add("customer", p.customerId, "cancelled", "Order cancelled", withReason(`Your order ${ref} from ${shop} was cancelled by ${who}.`, reason));
      }
      if (by !== ActorRole.RESTAURANT) {
        add("restaurant", p.restaurantId, "cancelled", `Order ${ref} cancelled`, withReason(`Order ${ref} was cancelled by ${who}; stop preparing it.`, reason));
      }
      // The driver on it (the snapshot is taken after the release, so the event names them).
      const driverId = pl.value.releasedDriverId || p.driverId;
      if (by !== ActorRole.DRIVER) {
        add("driver", driverId, "cancelled", `Delivery ${ref} cancelled`, withReason(`Order ${ref} was cancelled by ${who}; do not pick it up.`, reason));
      }
      break;
    }
    case "dispatchFlagged":
      add("customer", p.customerId, "dispatch_delayed", "Finding a driver is taking longer", `We are still looking for a driver for your order ${ref}. Thanks for your patience.`);
      add("restaurant", p.restaurantId, "dispatch_delayed", `No driver yet for ${ref}`, `No driver has accepted order ${ref} yet; dabba keeps trying.`);
      break;
    case "payment": {
      // The customer hears about money coming back and about a tip change the card refused; the
      // rest (authorization at placement, capture, void) follows from what the order did.
      const v = pl.value;
      const amount = v.amount ? formatMoney(v.amount.amountMinor, v.amount.currency) : "";
      if (v.operation === PaymentOperation.REFUND && v.succeeded) {
        add("customer", p.customerId, "refunded", "Refund issued", `${amount} of your order ${ref} from ${shop} is on its way back to your card.`);
      } else if (v.operation === PaymentOperation.AUTHORIZE && !v.succeeded && ev.order?.status !== OrderStatus.PAYMENT_PENDING) {
        // A declined authorization of a placed order is a top-up for a raised tip (a pending
        // order's decline cancels it, and the cancellation says so).
        add("customer", p.customerId, "tip_declined", "Tip change not charged", withReason(`Your card did not accept the extra ${amount} for the tip on order ${ref}; the tip stays as it was.`, v.failureReason));
      }
      break;
    }
    default:
      // en_route (the customer heard at pickup), eta_changed (TrackOrder shows it): no message.
      break;
  }
  return out;
}

/** Push data of a message: flat string pairs, as FCM and APNs custom data want them. */
export function pushData(m: Message, ev: Event): Record<string, string> {
  return { kind: m.kind, order_id: ev.orderId, event_id: ev.eventId };
}

// ---------------------------------------------------------------- webhooks

/** Whether a webhook (restaurant scope, event type filter) receives an order event of this restaurant and type. */
export function webhookWants(w: { restaurantId: string | null; eventTypes: readonly string[] }, restaurantId: string, type: string): boolean {
  if (!type) return false;
  if (w.restaurantId !== null && w.restaurantId !== restaurantId) return false;
  return w.eventTypes.length === 0 || w.eventTypes.includes(type);
}

/** The JSON body posted for an event: envelope fields plus the payload's fields (proto JSON names). */
export interface WebhookBody {
  id: string;
  type: string;
  occurred_at: string;
  order_id: string;
  sequence: number;
  restaurant_id: string;
  status: string;
  data: Record<string, unknown>;
}

/** Builds the webhook body of an event; parties name the restaurant of events without an order snapshot (geofence). */
export function webhookBody(ev: Event, parties?: OrderParties): WebhookBody {
  const type = eventType(ev);
  const json = toJson(EventSchema, ev, { alwaysEmitImplicit: false }) as Record<string, unknown>;
  const data = (ev.payload.case ? (json[ev.payload.case] as Record<string, unknown> | undefined) : undefined) ?? {};
  const o = ev.order;
  const status = o ? (OrderStatus[o.status] ?? "UNSPECIFIED") : "UNSPECIFIED";
  const extra: Record<string, unknown> = {};
  if (o?.total) extra.total = { amount_minor: Number(o.total.amountMinor), currency: o.total.currency };
  if (type === "cancelled" && o?.cancellationReason && data.reason === undefined) extra.reason = o.cancellationReason;
  return {
    id: ev.eventId,
    type,
    occurred_at: new Date(ev.occurredAt ? timestampMs(ev.occurredAt) : 0).toISOString(),
    order_id: ev.orderId || parties?.orderId || "",
    sequence: Number(ev.sequence),
    restaurant_id: o?.restaurantId || parties?.restaurantId || "",
    status: `ORDER_STATUS_${status}`,
    data: { ...data, ...extra },
  };
}

/**
 * The delay before retry attempt `attempt + 1` after `attempt` failed: full jitter, a uniform
 * random value in [0, min(cap, base * 2^(attempt-1))] (spreads retries of many deliveries that
 * failed together). `rand` is in [0, 1).
 */
export function backoffMs(attempt: number, baseMs: number, capMs: number, rand: number): number {
  const ceiling = Math.min(capMs, baseMs * 2 ** Math.max(0, Math.min(attempt - 1, 40)));
  return Math.floor(rand * ceiling);
}

/** What happens after a failed attempt: retry later or dead-letter (attempts counted since the last replay). */
export function afterFailure(attemptsInRound: number, maxAttempts: number): "retry" | "dead" {
  return attemptsInRound >= maxAttempts ? "dead" : "retry";
}

/** Is the HTTP status a success (2xx)? */
export const isSuccess = (status: number) => status >= 200 && status < 300;

// ---------------------------------------------------------------- inbox pages

/** Inbox page size: 0 means 20; above 100 or negative is refused (undefined). */
export function pageSize(n: number): number | undefined {
  if (n === 0) return 20;
  if (!Number.isInteger(n) || n < 0 || n > 100) return undefined;
  return n;
}

/** Keyset page token: the id of the last message of the page (ids grow with insertion). */
export function encodePageToken(lastId: string): string {
  return Buffer.from(`n1:${lastId}`).toString("base64url");
}

/** The last id of the previous page, or undefined when the token is not one of ours. */
export function decodePageToken(token: string): string | undefined {
  if (token.length > 64) return undefined;
  const raw = Buffer.from(token, "base64url").toString();
  const m = /^n1:(\d{1,18})$/.exec(raw);
  return m ? m[1] : undefined;
}

/** Inbox message ids are decimal numbers (bigserial). */
export function isNotificationId(id: string): boolean {
  return /^[1-9]\d{0,17}$/.test(id);
}
