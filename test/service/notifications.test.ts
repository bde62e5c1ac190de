import assert from "node:assert/strict";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, type Client } from "@connectrpc/connect";
import { sql } from "kysely";
import { ActorRole } from "../../gen/dabba/common/v1/common_pb.js";
import { EventSchema, GeofenceKind, type Event } from "../../gen/dabba/events/v1/events_pb.js";
import { PaymentStatus } from "../../gen/dabba/order/v1/order_pb.js";
import { OrderService } from "../../gen/dabba/order/v1/order_service_pb.js";
import { WebhookDeliveryStatus } from "../../gen/dabba/tracking/v1/tracking_pb.js";
import { TrackingService, type ListNotificationsResponse } from "../../gen/dabba/tracking/v1/tracking_service_pb.js";
import { LOCATION_EVENTS_STREAM } from "../../services/location/keys.js";
import { createMesh, type Mesh } from "../../services/mesh.js";
import { createNotifications, NOTIFICATIONS_GROUP, type Notifications } from "../../services/notifications/index.js";
import type { RecordingPush } from "../../services/notifications/push.js";
import { clearGatewayFaults, injectGatewayFault } from "../../services/order/payments/index.js";
import { ORDER_EVENTS_STREAM } from "../../services/order/store.js";
import type { Role } from "../../services/platform/auth.js";
import type { TrackingServiceModule } from "../../services/tracking/index.js";
import { uniqueId } from "../helpers/backends.js";
import { expectCode } from "../helpers/expect.js";
import { NEARBY } from "../helpers/fixtures.js";
import { startTestMesh, type Backend, type TestMesh } from "../helpers/mesh.js";
import { until } from "../helpers/wait.js";

for (const backend of ["embedded", "real"] as Backend[]) {
  describe(`TrackingService notifications (${backend} storage)`, function () {
    this.timeout(120_000);
    let t: TestMesh;
    let tracking: TrackingServiceModule;
    let push: RecordingPush;
    let hookServer: Server;
    let hookUrl: string;
    const received: { eventId: string; type: string; restaurantId: string }[] = [];

    before(async () => {
      t = await startTestMesh(backend, { services: ["catalog", "order", "tracking"] });
      tracking = t.mesh.modules.get("tracking") as TrackingServiceModule;
      push = tracking.notifications.push as RecordingPush;
      hookServer = createServer((req, res) => {
        let body = "";
        req.on("data", (c) => (body += c));
        req.on("end", () => {
          if (req.url === "/hang") return; // never answers: the attempt stays in flight until the sender's timeout
          const b = JSON.parse(body);
          received.push({ eventId: String(req.headers["dabba-event-id"]), type: b.type, restaurantId: b.restaurant_id });
          res.writeHead(204).end();
        });
      });
      await new Promise<void>((r) => hookServer.listen(0, "127.0.0.1", r));
      hookUrl = `http://127.0.0.1:${(hookServer.address() as AddressInfo).port}/hook`;
    });
    after(async () => {
      await t?.close();
      hookServer?.closeAllConnections();
      await new Promise((r) => hookServer?.close(r));
    });

    const trackingAs = (role: Role, sub: string, rid?: string) => t.client(TrackingService, "connect-grpc", role, sub, rid);
    const ordersAs = (role: Role, sub: string, rid?: string) => t.client(OrderService, "connect-grpc", role, sub, rid);

    async function placeOrder(customerId: string): Promise<string> {
      const orders = await ordersAs("customer", customerId);
      const placed = await orders.placeOrder(
        { restaurantId: t.restaurantId, lines: [{ itemId: `${t.restaurantId}-dosa`, quantity: 1 }], delivery: { location: NEARBY, addressLine: "12 Church Street" }, paymentToken: "tok_visa" },
        { headers: { "idempotency-key": `k-${uniqueId()}` } },
      );
      return placed.order!.id;
    }

    async function inbox(c: Client<typeof TrackingService>, unreadOnly = false): Promise<ListNotificationsResponse["notifications"]> {
      const all: ListNotificationsResponse["notifications"] = [];
      let pageToken = "";
      do {
        const page = await c.listNotifications({ pageSize: 100, pageToken, unreadOnly });
        all.push(...page.notifications);
        pageToken = page.nextPageToken;
      } while (pageToken);
      return all;
    }

    /** Runs an order through delivery; returns its id. */
    async function deliverOrder(customerId: string, driverId: string): Promise<string> {
      const orderId = await placeOrder(customerId);
      const kitchen = await ordersAs("restaurant", "staff", t.restaurantId);
      const ops = await ordersAs("ops", "op-1");
      const driver = await ordersAs("driver", driverId);
      await kitchen.acceptOrder({ orderId });
      await kitchen.startPreparing({ orderId });
      await kitchen.markReady({ orderId });
      await ops.assignDriver({ orderId, driverId });
      await driver.confirmPickup({ orderId });
      await driver.markEnRoute({ orderId });
      await driver.confirmDelivery({ orderId });
      return orderId;
    }

    it("tells customer, restaurant and driver about each meaningful event, in the inbox and by push", async () => {
      const customer = `c-${uniqueId()}`;
      const driverId = `d-${uniqueId()}`;
      const orderId = await deliverOrder(customer, driverId);
      const c = await trackingAs("customer", customer);
      await until(async () => (await inbox(c)).some((n) => /delivered/.test(n.body)), 15_000, "customer's delivered message");
      const mine = (await inbox(c)).filter((n) => n.orderId === orderId);
      // Newest first: delivered, picked up, driver on the way, preparing, confirmed.
      assert.deepEqual(
        mine.map((n) => n.title),
        ["Delivered. Enjoy!", "Your order is on its way", "A driver is on the way", "Your food is being prepared", "Order confirmed"],
      );
      assert.ok(mine.every((n) => !n.read && n.createdAt));
      const d = await trackingAs("driver", driverId);
      await until(async () => (await inbox(d)).length >= 1, 10_000, "driver's message");
      assert.deepEqual((await inbox(d)).map((n) => n.title), ["New delivery"]);
      // Any staff token of the restaurant sees the restaurant's inbox.
      const r1 = await trackingAs("restaurant", "staff-a", t.restaurantId);
      const r2 = await trackingAs("restaurant", "staff-b", t.restaurantId);
      await until(async () => (await inbox(r1)).filter((n) => n.orderId === orderId).length >= 4, 10_000, "restaurant's messages");
      const forShop = (await inbox(r1)).filter((n) => n.orderId === orderId);
      assert.deepEqual(
        forShop.map((n) => n.title.replace(/#\w+/, "#")),
        ["Order # delivered", "Order # picked up", "Driver assigned to #", "New order #"],
      );
      assert.deepEqual((await inbox(r2)).map((n) => n.id), (await inbox(r1)).map((n) => n.id));
      // One push per inbox message, to the recipient's address, with the notification id.
      const pushed = push.sentTo(`customer:${customer}`);
      assert.deepEqual(pushed.map((p) => p.data.notification_id).sort(), mine.map((n) => n.id).sort());
      assert.equal(pushed.find((p) => p.data.kind === "delivered")!.notification.title, "Delivered. Enjoy!");
      assert.equal(push.sentTo(`driver:${driverId}`).length, 1);
    });

    it("shows a cancellation's reason to the restaurant and the driver, not to the customer who cancelled", async () => {
      const customer = `c-${uniqueId()}`;
      const driverId = `d-${uniqueId()}`;
      const orderId = await placeOrder(customer);
      const kitchen = await ordersAs("restaurant", "staff", t.restaurantId);
      await kitchen.acceptOrder({ orderId });
      await (await ordersAs("ops", "op-1")).assignDriver({ orderId, driverId });
      await (await ordersAs("customer", customer)).cancelOrder({ orderId, reason: "ordered twice" });
      const d = await trackingAs("driver", driverId);
      await until(async () => (await inbox(d)).some((n) => n.title.includes("cancelled")), 10_000, "driver's cancellation");
      assert.match((await inbox(d)).find((n) => n.title.includes("cancelled"))!.body, /cancelled by the customer.*Reason: ordered twice/);
      const r = await trackingAs("restaurant", "staff", t.restaurantId);
      await until(async () => (await inbox(r)).some((n) => n.orderId === orderId && n.title.includes("cancelled")), 10_000, "restaurant's cancellation");
      const c = await trackingAs("customer", customer);
      assert.ok(!(await inbox(c)).some((n) => n.title === "Order cancelled"));
    });

    it("tells the customer the driver is arriving from a geofence event, once per order", async () => {
      const customer = `c-${uniqueId()}`;
      const orderId = await placeOrder(customer);
      await until(async () => (await tracking.notifications.store.parties(orderId)) !== undefined, 10_000, "the order's parties");
      for (const id of ["geo-a", "geo-b"]) {
        const ev = create(EventSchema, {
          eventId: `${id}-${uniqueId()}`,
          orderId,
          occurredAt: timestampFromMs(Date.now()),
          actor: { role: ActorRole.SERVICE, id: "location" },
          payload: { case: "geofence", value: { kind: GeofenceKind.APPROACHING_CUSTOMER, driverId: "d-x" } },
        });
        await t.mesh.redis.eventLog.append(LOCATION_EVENTS_STREAM, { type: "geofence", key: orderId, eventId: ev.eventId, data: toBinary(EventSchema, ev) });
      }
      const c = await trackingAs("customer", customer);
      await until(async () => (await inbox(c)).some((n) => n.title === "Your driver is arriving"), 10_000, "arriving message");
      await until(async () => (await t.mesh.redis.eventLog.pendingCount(LOCATION_EVENTS_STREAM, NOTIFICATIONS_GROUP)) === 0, 10_000, "location events handled");
      assert.equal((await inbox(c)).filter((n) => n.title === "Your driver is arriving").length, 1);
    });

    it("pages the inbox newest first with keyset tokens, marks only the caller's own messages read", async () => {
      const customer = `c-${uniqueId()}`;
      await deliverOrder(customer, `d-${uniqueId()}`);
      const c = await trackingAs("customer", customer);
      await until(async () => (await inbox(c)).length === 5, 15_000, "five messages");
      const all = await inbox(c);
      const p1 = await c.listNotifications({ pageSize: 2 });
      const p2 = await c.listNotifications({ pageSize: 2, pageToken: p1.nextPageToken });
      const p3 = await c.listNotifications({ pageSize: 2, pageToken: p2.nextPageToken });
      assert.deepEqual([...p1.notifications, ...p2.notifications, ...p3.notifications].map((n) => n.id), all.map((n) => n.id));
      assert.equal(p3.nextPageToken, "");
      assert.equal((await c.listNotifications({})).notifications.length, 5);

      // Someone else's ids are ignored, not an error.
      const other = await trackingAs("customer", `c-${uniqueId()}`);
      assert.equal((await other.markNotificationsRead({ notificationIds: all.map((n) => n.id) })).marked, 0);
      assert.equal((await inbox(c, true)).length, 5);
      // Own ids: counted once, repeated marks change nothing.
      const two = [all[0]!.id, all[1]!.id, all[0]!.id];
      assert.equal((await c.markNotificationsRead({ notificationIds: two })).marked, 2);
      assert.equal((await c.markNotificationsRead({ notificationIds: two })).marked, 0);
      const unread = await inbox(c, true);
      assert.deepEqual(unread.map((n) => n.id), all.slice(2).map((n) => n.id));
      assert.deepEqual((await inbox(c)).map((n) => n.read), [true, true, false, false, false]);
      const u1 = await c.listNotifications({ pageSize: 2, unreadOnly: true });
      const u2 = await c.listNotifications({ pageSize: 2, unreadOnly: true, pageToken: u1.nextPageToken });
      assert.deepEqual([...u1.notifications, ...u2.notifications].map((n) => n.id), unread.map((n) => n.id));
      assert.equal(u2.nextPageToken, "");
    });

    it("refuses bad inbox requests naming the field, and callers without an inbox", async () => {
      const c = await trackingAs("customer", "c-bad");
      await expectCode(c.listNotifications({ pageSize: 101 }), Code.InvalidArgument, /page_size/);
      await expectCode(c.listNotifications({ pageSize: -1 }), Code.InvalidArgument, /page_size/);
      await expectCode(c.listNotifications({ pageToken: "garbage!" }), Code.InvalidArgument, /page_token/);
      await expectCode(c.markNotificationsRead({ notificationIds: [] }), Code.InvalidArgument, /notification_ids/);
      await expectCode(c.markNotificationsRead({ notificationIds: Array.from({ length: 101 }, (_, i) => String(i + 1)) }), Code.InvalidArgument, /notification_ids/);
      await expectCode(c.markNotificationsRead({ notificationIds: ["1", "abc"] }), Code.InvalidArgument, /notification_ids\[1\]/);
      await expectCode((await trackingAs("ops", "op-1")).listNotifications({}), Code.PermissionDenied, /no inbox/);
      await expectCode((await trackingAs("service", "svc")).markNotificationsRead({ notificationIds: ["1"] }), Code.PermissionDenied, /no inbox/);
    });

    it("writes one inbox message and one push per recipient however often an event is handled (two consumers, redelivered entries)", async () => {
      const customer = `c-${uniqueId()}`;
      const driverId = `d-${uniqueId()}`;
      const orderId = await deliverOrder(customer, driverId);
      const c = await trackingAs("customer", customer);
      await until(async () => (await inbox(c)).length === 5, 15_000, "five messages");
      const entries = (await t.mesh.redis.eventLog.range(ORDER_EVENTS_STREAM, undefined, 100_000)).filter((e) => e.key === orderId);
      assert.ok(entries.length >= 7, `order events: ${entries.length}`);
      const events: Event[] = entries.map((e) => fromBinary(EventSchema, e.data));
      const pushesBefore = push.sent.length;

      // Direct: the same event handled again by this consumer and by a second one (another process).
      const second: Notifications = createNotifications({
        db: t.mesh.db,
        redis: t.mesh.redis,
        config: t.config.notifications,
        shutdownGraceMs: 1000,
        logger: t.mesh.logger,
        orders: () => {
          throw new Error("not needed: order events carry their parties");
        },
        consumer: `second-${uniqueId()}`,
        blockMs: 50,
      });
      for (const ev of events) {
        assert.deepEqual(await tracking.notifications.handle(ev), []);
        assert.deepEqual(await second.handle(ev), []);
      }
      // Through the stream: every entry appended twice more, read by this process's consumer
      // and a second consumer of the group (its own seen-set, so only the database stops it).
      await second.consumers[0]!.start();
      try {
        for (const e of entries) {
          await t.mesh.redis.eventLog.appendMany(ORDER_EVENTS_STREAM, [
            { type: e.type, key: e.key, eventId: e.eventId, data: e.data },
            { type: e.type, key: e.key, eventId: e.eventId, data: e.data },
          ]);
        }
        await until(async () => (await t.mesh.redis.eventLog.pendingCount(ORDER_EVENTS_STREAM, NOTIFICATIONS_GROUP)) === 0, 15_000, "redelivered entries handled");
      } finally {
        await second.consumers[0]!.stop();
      }
      const mine = (await inbox(c)).filter((n) => n.orderId === orderId);
      assert.equal(mine.length, 5);
      assert.equal(new Set(mine.map((n) => n.title)).size, 5);
      assert.equal((await inbox(await trackingAs("driver", driverId))).length, 1);
      const r = await inbox(await trackingAs("restaurant", "staff", t.restaurantId));
      assert.equal(r.filter((n) => n.orderId === orderId).length, 4);
      assert.equal(push.sent.length, pushesBefore, "no push for a repeated event");
      assert.equal((second.push as RecordingPush).sent.length, 0);
    });

    it("tells the customer about a refund and about a tip raise the card refused", async () => {
      const customer = `c-${uniqueId()}`;
      const orderId = await deliverOrder(customer, `d-${uniqueId()}`);
      const orders = await ordersAs("customer", customer);
      const c = await trackingAs("customer", customer);
      await until(async () => (await orders.getOrder({ orderId })).order!.paymentStatus === PaymentStatus.CAPTURED, 15_000, "captured");
      await injectGatewayFault(t.mesh.db, "authorize", { kind: "decline", count: 1 });
      try {
        await orders.adjustTip({ orderId, tipMinor: 500n });
        await until(async () => (await inbox(c)).some((n) => n.title === "Tip change not charged"), 15_000, "tip declined message");
      } finally {
        await clearGatewayFaults(t.mesh.db);
      }
      const declined = (await inbox(c)).find((n) => n.title === "Tip change not charged")!;
      assert.match(declined.body, /did not accept the extra .* for the tip.*Reason: card declined\./);
      await (await ordersAs("ops", "op-1")).refundOrder({ orderId, amountMinor: 120n, reason: "cold food" });
      await until(async () => (await inbox(c)).some((n) => n.title === "Refund issued"), 15_000, "refund message");
      assert.match((await inbox(c)).find((n) => n.title === "Refund issued")!.body, /^\$1\.20 of your order/);
    });

    it("deletes inbox messages past the retention and keeps the rest", async () => {
      const customer = `c-${uniqueId()}`;
      const orderId = await deliverOrder(customer, `d-${uniqueId()}`);
      const c = await trackingAs("customer", customer);
      await until(async () => (await inbox(c)).length === 5, 15_000, "five messages");
      const all = await inbox(c);
      const old = all.slice(2).map((n) => n.id);
      const days = t.mesh.config.notifications.inboxRetentionDays;
      await sql`update notification_inbox set created_at = now() - ${`${days + 1} days`}::interval where id in (${sql.join(old.map(Number))})`.execute(t.mesh.db.kysely);
      assert.ok((await tracking.notifications.pruneInbox()) >= old.length);
      assert.deepEqual((await inbox(c)).map((n) => n.id), all.slice(0, 2).map((n) => n.id));
      assert.ok((await inbox(c)).every((n) => n.orderId === orderId));
    });

    it("deletes finished webhook deliveries and their attempt log past the log retention, never a pending one", async () => {
      const ops = await trackingAs("ops", "op-1");
      const kitchen = await trackingAs("restaurant", "staff", t.restaurantId);
      const good = (await ops.registerWebhook({ url: hookUrl, restaurantId: t.restaurantId, eventTypes: ["confirmed", "delivered"] })).webhook!;
      const hang = (await ops.registerWebhook({ url: hookUrl.replace(/\/hook$/, "/hang"), restaurantId: t.restaurantId, eventTypes: ["confirmed"] })).webhook!;
      try {
        const deliveries = async (webhookId: string, orderId: string) =>
          (await kitchen.listWebhookDeliveries({ webhookId, pageSize: 100 })).deliveries.filter((x) => x.orderId === orderId);
        const delivered = async (orderId: string) =>
          (await deliveries(good.id, orderId)).filter((x) => x.status === WebhookDeliveryStatus.DELIVERED).length === 2;
        const old = await deliverOrder(`c-${uniqueId()}`, `d-${uniqueId()}`);
        const recent = await deliverOrder(`c-${uniqueId()}`, `d-${uniqueId()}`);
        await until(() => delivered(old), 20_000, "the old order's deliveries");
        await until(() => delivered(recent), 20_000, "the recent order's deliveries");
        await until(async () => (await deliveries(hang.id, old)).length === 1, 20_000, "the hanging delivery");

        const days = t.mesh.config.notifications.webhookLogRetentionDays;
        await sql`update webhook_deliveries set created_at = now() - ${`${days + 1} days`}::interval where order_id = ${old}`.execute(t.mesh.db.kysely);
        assert.ok((await tracking.notifications.pruneWebhookLog()) >= 2);

        assert.deepEqual(await deliveries(good.id, old), [], "the old finished deliveries are gone");
        const kept = await deliveries(good.id, recent);
        assert.equal(kept.length, 2, "the recent ones are kept");
        assert.ok(kept.every((x) => x.attemptLog.length === 1 && x.attemptLog[0]!.statusCode === 204), "with their attempt log");
        const attempts = await sql<{ n: string }>`select count(*)::text as n from webhook_attempts where webhook_id = ${good.id}`.execute(t.mesh.db.kysely);
        assert.equal(Number(attempts.rows[0]!.n), 2, "the old deliveries' attempts went with them");
        const pending = await deliveries(hang.id, old);
        assert.equal(pending.length, 1, "a pending delivery is never deleted, however old");
        assert.equal(pending[0]!.status, WebhookDeliveryStatus.PENDING);
      } finally {
        await ops.deleteWebhook({ webhookId: good.id });
        await ops.deleteWebhook({ webhookId: hang.id });
      }
    });

    it("registers webhooks for the caller's restaurant or (ops) any restaurant or partner, validating the request", async () => {
      const kitchen = await trackingAs("restaurant", "staff", t.restaurantId);
      const own = await kitchen.registerWebhook({ url: hookUrl, eventTypes: ["confirmed", "delivered"] });
      assert.equal(own.webhook!.restaurantId, t.restaurantId);
      assert.deepEqual(own.webhook!.eventTypes, ["confirmed", "delivered"]);
      assert.match(own.signingSecret, /^whsec_[0-9a-f]{64}$/);
      assert.ok(own.webhook!.id && own.webhook!.createdAt);
      const again = await kitchen.registerWebhook({ url: hookUrl, restaurantId: t.restaurantId });
      assert.notEqual(again.signingSecret, own.signingSecret);
      await expectCode(kitchen.registerWebhook({ url: hookUrl, restaurantId: "r-someone-else" }), Code.PermissionDenied);
      await expectCode(kitchen.registerWebhook({ url: "" }), Code.InvalidArgument, /url/);
      await expectCode(kitchen.registerWebhook({ url: "ftp://example.com/x" }), Code.InvalidArgument, /url/);
      await expectCode(kitchen.registerWebhook({ url: "not a url" }), Code.InvalidArgument, /url/);
      await expectCode(kitchen.registerWebhook({ url: `https://example.com/${"a".repeat(2100)}` }), Code.InvalidArgument, /url/);
      await expectCode(kitchen.registerWebhook({ url: "https://user:pw@example.com/" }), Code.InvalidArgument, /url/);
      await expectCode(kitchen.registerWebhook({ url: hookUrl, eventTypes: ["confirmed", "exploded"] }), Code.InvalidArgument, /event_types\[1\]/);
      await expectCode((await trackingAs("customer", "c-1")).registerWebhook({ url: hookUrl }), Code.PermissionDenied);
      const ops = await trackingAs("ops", "op-1");
      const partner = await ops.registerWebhook({ url: hookUrl });
      assert.equal(partner.webhook!.restaurantId, "");
      // A restaurant cannot look at or replay a partner's webhook, nor another restaurant's.
      await expectCode(kitchen.replayDeadLetters({ webhookId: partner.webhook!.id }), Code.PermissionDenied);
      await expectCode(kitchen.listWebhookDeliveries({ webhookId: partner.webhook!.id }), Code.PermissionDenied);
      await expectCode(kitchen.replayDeadLetters({ webhookId: "wh-nope" }), Code.NotFound);
      await expectCode(kitchen.replayDeadLetters({ webhookId: "" }), Code.InvalidArgument, /webhook_id/);
      await expectCode(kitchen.listWebhookDeliveries({ webhookId: own.webhook!.id, pageSize: 500 }), Code.InvalidArgument, /page_size/);
      assert.equal((await ops.replayDeadLetters({ webhookId: partner.webhook!.id })).requeued, 0);
    });

    it("DeleteWebhook stops a webhook: pending deliveries dead-lettered, no deliveries for later events, the log kept", async () => {
      const kitchen = await trackingAs("restaurant", "staff", t.restaurantId);
      const ops = await trackingAs("ops", "op-1");
      // Nothing listens on port 1: every attempt fails and the delivery waits for its retry.
      const hook = (await kitchen.registerWebhook({ url: "http://127.0.0.1:1/hook", eventTypes: ["confirmed"] })).webhook!;
      const first = await deliverOrder(`c-${uniqueId()}`, `d-${uniqueId()}`);
      await until(
        async () => (await kitchen.listWebhookDeliveries({ webhookId: hook.id })).deliveries.some((x) => x.orderId === first && x.attempts >= 1 && x.status === WebhookDeliveryStatus.PENDING),
        20_000,
        "a failed attempt waiting for its retry",
      );
      const partner = (await ops.registerWebhook({ url: hookUrl })).webhook!;
      await expectCode(kitchen.deleteWebhook({ webhookId: partner.id }), Code.PermissionDenied);
      await expectCode(kitchen.deleteWebhook({ webhookId: "wh-nope" }), Code.NotFound);
      await expectCode(kitchen.deleteWebhook({ webhookId: "" }), Code.InvalidArgument, /webhook_id/);
      await expectCode((await trackingAs("customer", "c-1")).deleteWebhook({ webhookId: hook.id }), Code.PermissionDenied);

      const deleted = await kitchen.deleteWebhook({ webhookId: hook.id });
      assert.ok(deleted.webhook!.deletedAt, "deleted_at is set");
      assert.ok(deleted.cancelled >= 1, `cancelled ${deleted.cancelled}`);
      const again = await kitchen.deleteWebhook({ webhookId: hook.id });
      assert.equal(again.cancelled, 0);
      assert.deepEqual(again.webhook!.deletedAt, deleted.webhook!.deletedAt);
      const log = (await kitchen.listWebhookDeliveries({ webhookId: hook.id })).deliveries;
      assert.ok(log.length >= 1 && log.every((x) => x.status !== WebhookDeliveryStatus.PENDING), "no delivery left pending");
      await expectCode(kitchen.replayDeadLetters({ webhookId: hook.id }), Code.FailedPrecondition, /deleted/);

      // A later order reaches the partner webhook but makes no delivery for the deleted one.
      const later = await deliverOrder(`c-${uniqueId()}`, `d-${uniqueId()}`);
      await until(async () => (await ops.listWebhookDeliveries({ webhookId: partner.id, pageSize: 100 })).deliveries.some((x) => x.orderId === later && x.eventType === "confirmed"), 20_000, "partner delivery of the later order");
      assert.ok(!(await kitchen.listWebhookDeliveries({ webhookId: hook.id, pageSize: 100 })).deliveries.some((x) => x.orderId === later));
      await ops.deleteWebhook({ webhookId: partner.id });
    });

    it("delivers an order's events to its restaurant's webhooks (filtered by type) and partners, never to other restaurants'", async () => {
      const kitchen = await trackingAs("restaurant", "staff", t.restaurantId);
      const ops = await trackingAs("ops", "op-1");
      const filtered = (await kitchen.registerWebhook({ url: hookUrl, eventTypes: ["confirmed"] })).webhook!;
      const other = (await ops.registerWebhook({ url: hookUrl, restaurantId: `r-other-${uniqueId()}` })).webhook!;
      const partner = (await ops.registerWebhook({ url: hookUrl })).webhook!;
      const orderId = await deliverOrder(`c-${uniqueId()}`, `d-${uniqueId()}`);
      await until(async () => (await ops.listWebhookDeliveries({ webhookId: partner.id, pageSize: 100 })).deliveries.some((x) => x.orderId === orderId && x.eventType === "delivered"), 20_000, "delivered queued");
      const entries = (await t.mesh.redis.eventLog.range(ORDER_EVENTS_STREAM, undefined, 100_000)).filter((e) => e.key === orderId);
      await until(
        async () => (await ops.listWebhookDeliveries({ webhookId: partner.id, pageSize: 100 })).deliveries.filter((x) => x.orderId === orderId && x.status === WebhookDeliveryStatus.DELIVERED).length === entries.length,
        20_000,
        "partner deliveries",
      );
      const forFiltered = (await kitchen.listWebhookDeliveries({ webhookId: filtered.id })).deliveries.filter((x) => x.orderId === orderId);
      assert.deepEqual(forFiltered.map((x) => x.eventType), ["confirmed"]);
      await until(async () => (await kitchen.listWebhookDeliveries({ webhookId: filtered.id })).deliveries[0]!.status === WebhookDeliveryStatus.DELIVERED, 10_000, "filtered delivered");
      const log = (await kitchen.listWebhookDeliveries({ webhookId: filtered.id })).deliveries[0]!;
      assert.equal(log.attempts, 1);
      assert.equal(log.attemptLog.length, 1);
      assert.equal(log.attemptLog[0]!.statusCode, 204);
      assert.equal((await ops.listWebhookDeliveries({ webhookId: other.id })).deliveries.length, 0);
      const seen = received.filter((r) => entries.some((e) => e.eventId === r.eventId));
      assert.ok(seen.every((r) => r.restaurantId === t.restaurantId));
      assert.deepEqual(
        new Set(seen.map((r) => r.eventId)),
        new Set(entries.map((e) => e.eventId)),
      );
    });
  });
}

// A second process's mesh on the same Postgres and Redis: both host the notifications consumer.
describe("Notifications across two processes (real storage)", function () {
  this.timeout(120_000);
  let t: TestMesh;
  let second: Mesh | undefined;

  before(async function () {
    t = await startTestMesh("real", { services: ["catalog", "order", "tracking"] });
    second = await createMesh({ ...t.config, port: 0, webPort: 0 }, { db: t.mesh.db, redis: t.mesh.redis, logger: t.mesh.logger });
    await second.start();
  });
  after(async () => {
    await second?.stop();
    await t?.close();
  });

  it("writes exactly one message per recipient and event when both consume redelivered entries", async () => {
    const customers = Array.from({ length: 6 }, () => `c-${uniqueId()}`);
    const ids: string[] = [];
    for (const customer of customers) {
      const o = await t.client(OrderService, "connect-grpc", "customer", customer);
      const placed = await o.placeOrder(
        { restaurantId: t.restaurantId, lines: [{ itemId: `${t.restaurantId}-dosa`, quantity: 1 }], delivery: { location: NEARBY, addressLine: "1 Road" }, paymentToken: "tok_visa" },
        { headers: { "idempotency-key": `k-${uniqueId()}` } },
      );
      ids.push(placed.order!.id);
    }
    const kitchen = await t.client(OrderService, "connect-grpc", "restaurant", "staff", t.restaurantId);
    for (const orderId of ids) {
      await kitchen.acceptOrder({ orderId });
      await kitchen.startPreparing({ orderId });
    }
    // Every entry of these orders appended twice more, as a relay republishing after a crash does.
    const entries = (await t.mesh.redis.eventLog.range(ORDER_EVENTS_STREAM, undefined, 100_000)).filter((e) => ids.includes(e.key));
    for (let i = 0; i < 2; i++) {
      await t.mesh.redis.eventLog.appendMany(ORDER_EVENTS_STREAM, entries.map((e) => ({ type: e.type, key: e.key, eventId: e.eventId, data: e.data })));
    }
    await until(async () => (await t.mesh.redis.eventLog.pendingCount(ORDER_EVENTS_STREAM, NOTIFICATIONS_GROUP)) === 0, 20_000, "entries handled");
    const a = (t.mesh.modules.get("tracking") as TrackingServiceModule).notifications;
    const b = (second!.modules.get("tracking") as TrackingServiceModule).notifications;
    await until(async () => {
      for (const customer of customers) {
        const page = await a.store.listInbox({ kind: "customer", id: customer }, { unreadOnly: false, limit: 100 });
        if (page.length < 2) return false;
      }
      return true;
    }, 20_000, "customers' messages");
    for (const customer of customers) {
      const page = await a.store.listInbox({ kind: "customer", id: customer }, { unreadOnly: false, limit: 100 });
      assert.deepEqual(page.map((n) => n.kind).sort(), ["confirmed", "preparing"], customer);
      // One push per message, from whichever process inserted it.
      const pushes = [...(a.push as RecordingPush).sentTo(`customer:${customer}`), ...(b.push as RecordingPush).sentTo(`customer:${customer}`)];
      assert.equal(pushes.length, 2, customer);
    }
  });
});
