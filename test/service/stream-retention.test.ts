import assert from "node:assert/strict";
import type { Kysely } from "kysely";
import { OrderService } from "../../gen/dabba/order/v1/order_service_pb.js";
import { RESTAURANT_FEED_GROUP } from "../../services/order/index.js";
import { ORDER_EVENTS_STREAM } from "../../services/order/store.js";
import { uniqueId } from "../helpers/backends.js";
import { NEARBY } from "../helpers/fixtures.js";
import { startTestMesh, type Backend, type TestMesh } from "../helpers/mesh.js";
import { until } from "../helpers/wait.js";

for (const backend of ["embedded", "real"] as Backend[]) {
  describe(`event stream retention in the order service (${backend} storage)`, function () {
    this.timeout(60_000);
    let t: TestMesh;

    before(async () => {
      // The restaurant feed is the only group on events:orders in this mesh.
      t = await startTestMesh(backend, { services: ["catalog", "order"], eventStreams: { retentionMs: 0, maxLen: 1_000_000, everyMs: 1000 } });
    });
    after(async () => t?.close());

    it("trims events:orders once the consumer groups are done with its entries", async () => {
      const customer = `cust-${uniqueId()}`;
      const orders = await t.client(OrderService, "connect-grpc", "customer", customer);
      for (let i = 0; i < 3; i++) {
        await orders.placeOrder(
          { restaurantId: t.restaurantId, lines: [{ itemId: `${t.restaurantId}-dosa`, quantity: 1 }], delivery: { location: NEARBY, addressLine: "1 Church St" }, paymentToken: "tok_visa" },
          { headers: { "idempotency-key": `k-${uniqueId()}` } },
        );
      }
      const log = t.mesh.redis.eventLog;
      // Every event of these orders has reached the stream (the relay marks what it appended).
      const outbox = () => (t.mesh.db.kysely as Kysely<any>).selectFrom("outbox").select(["id", "published_at"]).execute();
      await until(async () => {
        const rows = await outbox();
        return rows.length >= 3 && rows.every((r) => r.published_at !== null);
      }, 10_000, "events appended");
      // Everything is delivered and acked by the feed, then the retention pass (every second)
      // leaves at most the last delivered entry.
      await until(async () => {
        const [feed] = (await log.groups(ORDER_EVENTS_STREAM)).filter((g) => g.name === RESTAURANT_FEED_GROUP);
        return feed !== undefined && feed.pending === 0 && (await log.length(ORDER_EVENTS_STREAM)) <= 1;
      }, 15_000, "the stream trimmed to what the feed still needs");
      const [feed] = (await log.groups(ORDER_EVENTS_STREAM)).filter((g) => g.name === RESTAURANT_FEED_GROUP);
      assert.notEqual(feed!.lastDeliveredId, "0-0");
      const left = await log.range(ORDER_EVENTS_STREAM, undefined, 10);
      assert.ok(left.every((e) => e.id === feed!.lastDeliveredId), "only the feed's last delivered entry may remain");
    });
  });
}
