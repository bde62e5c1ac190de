import assert from "node:assert/strict";
import { OfferOutcome } from "../../gen/dabba/dispatch/v1/dispatch_pb.js";
import { TimelineKind } from "../../gen/dabba/order/v1/order_pb.js";
import { testConfig } from "../../services/platform/config.js";
import { RESTAURANT, dispatchScope, driverCounters, eventually, offerFor, type DispatchScope } from "../helpers/dispatch.js";
import { startTestMesh, type Backend, type TestMesh } from "../helpers/mesh.js";
import { offsetMetres } from "../helpers/push-stream.js";
import { sleep } from "../helpers/wait.js";

const base = testConfig().dispatch;

for (const backend of ["embedded", "real"] as Backend[]) {
  const label = backend === "embedded" ? "PGlite + in-process redis" : "Postgres + Redis";

  describe(`DispatchService timers (${label})`, function () {
    this.timeout(60_000);
    let tm: TestMesh;
    let t: DispatchScope;

    before(async () => {
      tm = await startTestMesh(backend, {
        dispatch: {
          ...base,
          offerTtlMs: 1500,
          leaseCheckMs: 1000,
          retryMs: 300,
          flagAfterMs: 1000,
          slowRetryMs: 300,
          pickupGraceMs: 1000,
          // Lead time on: an order whose food is far from ready waits; one ready now does not.
          leadBufferMs: 60_000,
        },
      });
    });
    beforeEach(async () => {
      t = await dispatchScope(tm);
    });
    afterEach(async () => t?.cleanup());
    after(async () => tm?.close());

    it("flags an order nobody can take once flagAfterMs has passed", async () => {
      const order = await t.order(0);
      await eventually(async () => (await t.state(order.id)).flagged, 10_000, "flagged");
      const st = await t.state(order.id);
      assert.equal(st.offers.length, 0);
      assert.ok(st.attempt >= 1, `rounds went on: attempt ${st.attempt}`);
    });

    it("unassigns a driver who misses the pickup deadline, counts the no-show and offers the order to another driver", async () => {
      // 10 m away: travel is under 2 s, and the food is ready at once (prep 0).
      const late = await t.driver(offsetMetres(RESTAURANT, 10, 0));
      const other = await t.driver(offsetMetres(RESTAURANT, 1000, 0));
      const order = await t.order(0);
      const offer = await offerFor(late, order.id);
      const res = await late.dispatch.acceptOffer({ offerId: offer.offerId, fencingToken: offer.fencingToken });
      assert.equal(res.order?.driverId, late.id);

      await offerFor(other, order.id, 15_000);
      const o = await t.getOrder(order.id);
      assert.equal(o.driverId, "", "the no-show's assignment is cleared");
      const gone = o.timeline.filter((e) => e.kind === TimelineKind.DRIVER_UNASSIGNED);
      assert.equal(gone.length, 1);
      assert.equal(gone[0]!.driverId, late.id);
      assert.match(gone[0]!.reason, /no-show/);
      assert.equal(late.offersFor(order.id).length, 1, "the no-show is not offered the order again");
      await eventually(async () => (await driverCounters(tm, late.id)).no_shows === "1", 5000, "no_shows counted");
      const st = await t.state(order.id);
      assert.deepEqual(st.offers.map((x) => [x.driverId, x.outcome]), [[late.id, OfferOutcome.ACCEPTED], [other.id, OfferOutcome.UNSPECIFIED]]);
    });

    it("with lead time, waits to offer an order whose food is 30 minutes away, but offers one ready now", async () => {
      const d = await t.driver(offsetMetres(RESTAURANT, 300, 0));
      const later = await t.order(30);
      // The subject is time: the first round has run (it takes milliseconds) and chose to wait.
      await sleep(1500);
      assert.equal(d.offersFor(later.id).length, 0);
      const st = await t.state(later.id);
      assert.equal(st.offers.length, 0);
      assert.equal(st.flagged, false, "waiting on purpose is not failing to find a driver");

      const now = await t.order(0);
      await offerFor(d, now.id);
      assert.equal(d.offersFor(later.id).length, 0);
    });
  });
}
