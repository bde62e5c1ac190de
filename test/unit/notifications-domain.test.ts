import assert from "node:assert/strict";
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import fc from "fast-check";
import { ActorRole } from "../../gen/dabba/common/v1/common_pb.js";
import { EventSchema, GeofenceKind, PaymentOperation, type Event } from "../../gen/dabba/events/v1/events_pb.js";
import { OrderStatus } from "../../gen/dabba/order/v1/order_pb.js";
import { inboxOwner } from "../../services/notifications/access.js";
import {
  EVENT_TYPES,
  backoffMs,
  afterFailure,
  decodePageToken,
  encodePageToken,
  eventType,
  formatMoney,
  isNotificationId,
  messagesFor,
  pageSize,
  partiesOf,
  webhookBody,
  webhookWants,
  type OrderParties,
} from "../../services/notifications/domain.js";
import { sign, signatureHeader, verifySignature } from "../../services/notifications/signature.js";

const ORDER = "ord-0000abc123";
const PARTIES: OrderParties = { orderId: ORDER, customerId: "c-1", restaurantId: "r-1", restaurantName: "Dosa Corner", driverId: "d-1" };

function ev(payload: MessageInitShape<typeof EventSchema>["payload"], opts: { actor?: ActorRole; driverId?: string; cancelledBy?: ActorRole; reason?: string; status?: OrderStatus } = {}): Event {
  return create(EventSchema, {
    eventId: `${ORDER}-7`,
    orderId: ORDER,
    sequence: 7n,
    occurredAt: timestampFromMs(Date.UTC(2026, 10, 21, 12, 0, 0)),
    actor: { role: opts.actor ?? ActorRole.RESTAURANT, id: "x" },
    order: {
      id: ORDER,
      customerId: "c-1",
      restaurantId: "r-1",
      restaurantName: "Dosa Corner",
      driverId: opts.driverId ?? "",
      status: opts.status ?? OrderStatus.CONFIRMED,
      cancelledBy: opts.cancelledBy !== undefined ? { role: opts.cancelledBy, id: "y" } : undefined,
      cancellationReason: opts.reason ?? "",
      total: { amountMinor: 1234n, currency: "USD" },
    },
    payload,
  });
}

const who = (e: Event, parties: OrderParties | undefined = partiesOf(e)) =>
  messagesFor(e, parties)
    .map((m) => `${m.recipient.kind}:${m.recipient.id}`)
    .sort();

describe("notifications domain: who hears about what", () => {
  it("tells the customer about confirmed and preparing, nobody else", () => {
    assert.deepEqual(who(ev({ case: "confirmed", value: { prepMinutes: 15 } })), ["customer:c-1"]);
    assert.deepEqual(who(ev({ case: "preparing", value: {} })), ["customer:c-1"]);
    const [m] = messagesFor(ev({ case: "confirmed", value: { prepMinutes: 15 } }), PARTIES);
    assert.match(m!.body, /Dosa Corner accepted your order #abc123 and expects to need about 15 min/);
  });

  it("tells customer, restaurant and the assigned driver about an assignment", () => {
    assert.deepEqual(who(ev({ case: "driverAssigned", value: { driverId: "d-9", fencingToken: 3n } }, { driverId: "d-9" })), ["customer:c-1", "driver:d-9", "restaurant:r-1"]);
  });

  it("tells customer and restaurant about pickup and delivery", () => {
    assert.deepEqual(who(ev({ case: "pickedUp", value: { driverId: "d-1" } }, { driverId: "d-1" })), ["customer:c-1", "restaurant:r-1"]);
    assert.deepEqual(who(ev({ case: "delivered", value: { driverId: "d-1" } }, { driverId: "d-1" })), ["customer:c-1", "restaurant:r-1"]);
  });

  it("tells the customer the driver is arriving (geofence, no snapshot) once per order", () => {
    const a = create(EventSchema, { eventId: "geo-1", orderId: ORDER, payload: { case: "geofence", value: { kind: GeofenceKind.APPROACHING_CUSTOMER, driverId: "d-1" } } });
    const b = create(EventSchema, { eventId: "geo-2", orderId: ORDER, payload: { case: "geofence", value: { kind: GeofenceKind.APPROACHING_CUSTOMER, driverId: "d-1" } } });
    const ma = messagesFor(a, PARTIES);
    assert.deepEqual(ma.map((m) => m.recipient), [{ kind: "customer", id: "c-1" }]);
    assert.equal(ma[0]!.kind, "arriving");
    // Two crossings reported under different ids make one message (same dedupe key).
    assert.equal(ma[0]!.dedupeKey, messagesFor(b, PARTIES)[0]!.dedupeKey);
    assert.deepEqual(messagesFor(create(EventSchema, { eventId: "geo-3", orderId: ORDER, payload: { case: "geofence", value: { kind: GeofenceKind.ARRIVED_RESTAURANT } } }), PARTIES), []);
    // Without known parties, nobody.
    assert.deepEqual(messagesFor(a, undefined), []);
  });

  it("shows a cancellation's reason to the other parties, never to the one who cancelled", () => {
    const byCustomer = ev({ case: "cancelled", value: { reason: "changed my mind", releasedDriverId: "d-1" } }, { cancelledBy: ActorRole.CUSTOMER, actor: ActorRole.CUSTOMER, reason: "changed my mind" });
    assert.deepEqual(who(byCustomer), ["driver:d-1", "restaurant:r-1"]);
    for (const m of messagesFor(byCustomer, partiesOf(byCustomer))) assert.match(m.body, /cancelled by the customer.*Reason: changed my mind\./);

    const byRestaurant = ev({ case: "cancelled", value: { reason: "out of rice" } }, { cancelledBy: ActorRole.RESTAURANT, driverId: "d-2", reason: "out of rice" });
    assert.deepEqual(who(byRestaurant), ["customer:c-1", "driver:d-2"]);
    assert.match(messagesFor(byRestaurant, partiesOf(byRestaurant)).find((m) => m.recipient.kind === "customer")!.body, /Reason: out of rice/);

    const byOps = ev({ case: "cancelled", value: { reason: "fraud check" } }, { cancelledBy: ActorRole.OPS, actor: ActorRole.OPS });
    assert.deepEqual(who(byOps), ["customer:c-1", "restaurant:r-1"]);
  });

  it("shows a rejection's reason to the customer; the restaurant hears only when it did not reject itself", () => {
    const e = ev({ case: "rejected", value: { reason: "kitchen closed" } });
    assert.deepEqual(who(e), ["customer:c-1"]);
    assert.match(messagesFor(e, PARTIES)[0]!.body, /could not take your order #abc123; you have not been charged\. Reason: kitchen closed\./);
    const auto = ev({ case: "rejected", value: { reason: "no answer" } }, { actor: ActorRole.SERVICE });
    assert.deepEqual(who(auto), ["customer:c-1", "restaurant:r-1"]);
    assert.match(messagesFor(auto, PARTIES)[0]!.body, /did not answer in time/);
  });

  it("tells customer and restaurant that dispatch is delayed", () => {
    const ms = messagesFor(ev({ case: "dispatchFlagged", value: { attempts: 6 } }), PARTIES);
    assert.deepEqual(ms.map((m) => [m.recipient.kind, m.kind]).sort(), [["customer", "dispatch_delayed"], ["restaurant", "dispatch_delayed"]]);
  });

  it("tells the customer about refunds and a tip raise the card refused, and nothing else about payments", () => {
    const usd = (n: bigint) => ({ amountMinor: n, currency: "USD" });
    const [refund] = messagesFor(ev({ case: "payment", value: { operation: PaymentOperation.REFUND, amount: usd(250n), succeeded: true } }), PARTIES);
    assert.deepEqual([refund!.recipient, refund!.kind], [{ kind: "customer", id: "c-1" }, "refunded"]);
    assert.match(refund!.body, /\$2\.50 of your order #abc123 from Dosa Corner/);
    const declined = ev({ case: "payment", value: { operation: PaymentOperation.AUTHORIZE, amount: usd(300n), succeeded: false, failureReason: "insufficient funds" } }, { status: OrderStatus.DELIVERED });
    const [tip] = messagesFor(declined, PARTIES);
    assert.equal(tip!.kind, "tip_declined");
    assert.match(tip!.body, /extra \$3\.00 for the tip.*Reason: insufficient funds\./);
    // A pending order's declined authorization cancels it: the cancellation tells the customer.
    assert.deepEqual(who(ev({ case: "payment", value: { operation: PaymentOperation.AUTHORIZE, succeeded: false } }, { status: OrderStatus.PAYMENT_PENDING })), []);
    for (const op of [PaymentOperation.AUTHORIZE, PaymentOperation.CAPTURE, PaymentOperation.VOID]) {
      assert.deepEqual(who(ev({ case: "payment", value: { operation: op, amount: usd(100n), succeeded: true } })), [], `operation ${op}`);
    }
    assert.deepEqual(who(ev({ case: "payment", value: { operation: PaymentOperation.REFUND, succeeded: false } })), []);
    assert.equal(formatMoney(200n, "JPY"), "¥200");
    assert.equal(formatMoney(1999, "USD"), "$19.99");
  });

  it("says nothing about ETA changes or en route", () => {
    assert.deepEqual(who(ev({ case: "etaChanged", value: {} })), []);
    assert.deepEqual(who(ev({ case: "enRoute", value: { driverId: "d-1" } }, { driverId: "d-1" })), []);
  });

  it("keys every order-event message by its event id (a redelivery is the same message)", () => {
    const e = ev({ case: "driverAssigned", value: { driverId: "d-1" } }, { driverId: "d-1" });
    for (const m of messagesFor(e, partiesOf(e))) assert.equal(m.dedupeKey, e.eventId);
  });

  it("names event types as the proto payload field names", () => {
    assert.equal(eventType(ev({ case: "driverAssigned", value: {} })), "driver_assigned");
    assert.equal(eventType(ev({ case: "dispatchFlagged", value: {} })), "dispatch_flagged");
    assert.equal(eventType(create(EventSchema, {})), "");
    const cases = EventSchema.oneofs.find((o) => o.name === "payload")!.fields.map((f) => f.name);
    assert.deepEqual([...EVENT_TYPES].sort(), [...cases].sort());
  });
});

describe("notifications domain: webhooks", () => {
  it("delivers a restaurant's events only to its own and partner webhooks, filtered by type", () => {
    assert.equal(webhookWants({ restaurantId: "r-1", eventTypes: [] }, "r-1", "confirmed"), true);
    assert.equal(webhookWants({ restaurantId: "r-2", eventTypes: [] }, "r-1", "confirmed"), false);
    assert.equal(webhookWants({ restaurantId: null, eventTypes: [] }, "r-1", "confirmed"), true);
    assert.equal(webhookWants({ restaurantId: "r-1", eventTypes: ["delivered"] }, "r-1", "confirmed"), false);
    assert.equal(webhookWants({ restaurantId: "r-1", eventTypes: ["delivered", "confirmed"] }, "r-1", "confirmed"), true);
  });

  it("builds the body from the envelope and the payload fields", () => {
    const b = webhookBody(ev({ case: "cancelled", value: { reason: "out of rice", fee: { amountMinor: 500n, currency: "USD" } } }, { status: OrderStatus.CANCELLED }));
    assert.equal(b.id, `${ORDER}-7`);
    assert.equal(b.type, "cancelled");
    assert.equal(b.order_id, ORDER);
    assert.equal(b.sequence, 7);
    assert.equal(b.restaurant_id, "r-1");
    assert.equal(b.status, "ORDER_STATUS_CANCELLED");
    assert.equal(b.occurred_at, "2026-11-21T12:00:00.000Z");
    assert.equal(b.data.reason, "out of rice");
    assert.deepEqual(b.data.fee, { amountMinor: "500", currency: "USD" });
    assert.deepEqual(b.data.total, { amount_minor: 1234, currency: "USD" });
  });

  it("signs t.body with HMAC-SHA256 and verifies within the tolerance only", () => {
    const body = '{"id":"e-1"}';
    const h = signatureHeader("whsec_k", 1_700_000_000, body);
    assert.equal(h, `t=1700000000,v1=${sign("whsec_k", 1_700_000_000, body)}`);
    // Known answer, from `printf '%s' '1700000000.{"id":"e-1"}' | openssl dgst -sha256 -hmac whsec_k`.
    assert.equal(h, "t=1700000000,v1=7e8e3f9982f1c6fec03ef15ad9d7ae133da4e4b4c0f609f6f6d906a60635e9b0");
    assert.deepEqual(verifySignature(h, body, "whsec_k", 300, 1_700_000_100), { ok: true, t: 1_700_000_000 });
    assert.deepEqual(verifySignature(h, body, "whsec_k", 300, 1_700_000_301), { ok: false, reason: "stale" });
    assert.deepEqual(verifySignature(h, body + " ", "whsec_k", 300, 1_700_000_000), { ok: false, reason: "mismatch" });
    assert.deepEqual(verifySignature(h, body, "whsec_other", 300, 1_700_000_000), { ok: false, reason: "mismatch" });
    // A replayed body with a fresh timestamp but the old signature fails.
    const forged = h.replace("t=1700000000", "t=1700000500");
    assert.deepEqual(verifySignature(forged, body, "whsec_k", 300, 1_700_000_500), { ok: false, reason: "mismatch" });
    assert.deepEqual(verifySignature("v1=abc", body, "whsec_k", 300), { ok: false, reason: "malformed" });
    assert.deepEqual(verifySignature(undefined, body, "whsec_k", 300), { ok: false, reason: "malformed" });
  });

  it("backs off exponentially with full jitter, capped", () => {
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 60 }), fc.double({ min: 0, max: 0.999999, noNaN: true }), (attempt, r) => {
        const d = backoffMs(attempt, 1000, 60_000, r);
        const ceiling = Math.min(60_000, 1000 * 2 ** (attempt - 1));
        return d >= 0 && d <= ceiling && Number.isInteger(d);
      }),
    );
    assert.equal(backoffMs(1, 1000, 60_000, 0.999999), 999);
    assert.equal(backoffMs(4, 1000, 60_000, 0.5), 4000);
    assert.equal(backoffMs(30, 1000, 60_000, 0.5), 30_000);
    assert.equal(backoffMs(3, 1000, 60_000, 0), 0);
  });

  it("dead-letters after the maximum attempts of a round", () => {
    assert.equal(afterFailure(1, 3), "retry");
    assert.equal(afterFailure(2, 3), "retry");
    assert.equal(afterFailure(3, 3), "dead");
  });
});

describe("notifications domain: inbox", () => {
  it("pages 20 by default, at most 100", () => {
    assert.equal(pageSize(0), 20);
    assert.equal(pageSize(1), 1);
    assert.equal(pageSize(100), 100);
    assert.equal(pageSize(101), undefined);
    assert.equal(pageSize(-1), undefined);
  });

  it("round-trips page tokens and refuses foreign ones", () => {
    assert.equal(decodePageToken(encodePageToken("42")), "42");
    assert.equal(decodePageToken("bm9wZQ"), undefined);
    assert.equal(decodePageToken(Buffer.from("n1:12abc").toString("base64url")), undefined);
    assert.equal(decodePageToken("x".repeat(100)), undefined);
  });

  it("accepts only numeric notification ids", () => {
    assert.equal(isNotificationId("17"), true);
    assert.equal(isNotificationId("0"), false);
    assert.equal(isNotificationId("1; drop"), false);
    assert.equal(isNotificationId("1".repeat(19)), false);
  });

  it("takes the inbox owner from the token: a restaurant's staff share its inbox, ops and services have none", () => {
    assert.deepEqual(inboxOwner({ role: "customer", sub: "c-1" }), { kind: "customer", id: "c-1" });
    assert.deepEqual(inboxOwner({ role: "driver", sub: "d-1" }), { kind: "driver", id: "d-1" });
    assert.deepEqual(inboxOwner({ role: "restaurant", sub: "staff-7", restaurantId: "r-1" }), { kind: "restaurant", id: "r-1" });
    assert.throws(() => inboxOwner({ role: "ops", sub: "op" }), /no inbox/);
    assert.throws(() => inboxOwner({ role: "service", sub: "svc" }), /no inbox/);
  });
});
