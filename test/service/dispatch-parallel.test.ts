import assert from "node:assert/strict";
import { Code } from "@connectrpc/connect";
import { OfferOutcome } from "../../gen/dabba/dispatch/v1/dispatch_pb.js";
import { TimelineKind } from "../../gen/dabba/order/v1/order_pb.js";
import { testConfig } from "../../services/platform/config.js";
import { RESTAURANT, dispatchScope, offerFor, type DispatchScope, type TestDriver } from "../helpers/dispatch.js";
import { expectCode } from "../helpers/expect.js";
import { startTestMesh, type Backend, type TestMesh } from "../helpers/mesh.js";
import { offsetMetres } from "../helpers/push-stream.js";
import { until } from "../helpers/wait.js";

const base = testConfig().dispatch;

for (const backend of ["embedded", "real"] as Backend[]) {
  const label = backend === "embedded" ? "PGlite + in-process redis" : "Postgres + Redis";

  describe(`DispatchService parallel offers (${label})`, function () {
    this.timeout(60_000);
    let tm: TestMesh;
    let t: DispatchScope;

    before(async () => {
      tm = await startTestMesh(backend, { dispatch: { ...base, offerTtlMs: 1500, leaseCheckMs: 1000, retryMs: 300, parallelOffers: 3 } });
    });
    beforeEach(async () => {
      t = await dispatchScope(tm);
    });
    afterEach(async () => t?.cleanup());
    after(async () => tm?.close());

    async function threeNear(): Promise<TestDriver[]> {
      return Promise.all([300, 600, 900].map((m) => t.driver(offsetMetres(RESTAURANT, m, 0))));
    }

    it("offers one order to the best three at once; the first accept wins and the others are withdrawn", async () => {
      const drivers = await threeNear();
      const fourth = await t.driver(offsetMetres(RESTAURANT, 3000, 0));
      const order = await t.order();
      const offers = await Promise.all(drivers.map((d) => offerFor(d, order.id)));
      assert.equal(new Set(offers.map((o) => o.offerId)).size, 3, "one offer per driver");
      assert.equal(new Set(offers.map((o) => o.fencingToken)).size, 3, "each with its own token");
      assert.equal(fourth.offersFor(order.id).length, 0, "only three at once");

      // The farthest of the three answers first: first accept wins, not best score.
      const winner = 2;
      const res = await drivers[winner]!.dispatch.acceptOffer({ offerId: offers[winner]!.offerId, fencingToken: offers[winner]!.fencingToken });
      assert.equal(res.order?.driverId, drivers[winner]!.id);
      for (const i of [0, 1]) {
        await until(() => drivers[i]!.withdrawn().includes(offers[i]!.offerId), 5000, `withdrawn_offer_id for driver ${i}`);
        await expectCode(drivers[i]!.dispatch.acceptOffer({ offerId: offers[i]!.offerId, fencingToken: offers[i]!.fencingToken }), Code.FailedPrecondition);
      }
      assert.ok(!drivers[winner]!.withdrawn().includes(offers[winner]!.offerId));
      const o = await t.getOrder(order.id);
      assert.equal(o.driverId, drivers[winner]!.id);
      assert.equal(o.timeline.filter((e) => e.kind === TimelineKind.DRIVER_ASSIGNED).length, 1);
      const st = await t.state(order.id);
      const outcome = new Map(st.offers.map((x) => [x.driverId, x.outcome]));
      assert.equal(outcome.get(drivers[winner]!.id), OfferOutcome.ACCEPTED);
      assert.equal(outcome.get(drivers[0]!.id), OfferOutcome.WITHDRAWN);
      assert.equal(outcome.get(drivers[1]!.id), OfferOutcome.WITHDRAWN);
    });

    it("lets exactly one of three concurrent accepts succeed, and frees the other two for new offers", async () => {
      const drivers = await threeNear();
      const order = await t.order();
      const offers = await Promise.all(drivers.map((d) => offerFor(d, order.id)));
      const results = await Promise.allSettled(drivers.map((d, i) => d.dispatch.acceptOffer({ offerId: offers[i]!.offerId, fencingToken: offers[i]!.fencingToken })));
      const won = results.flatMap((r, i) => (r.status === "fulfilled" ? [i] : []));
      assert.equal(won.length, 1, `exactly one success, got ${results.map((r) => r.status).join(", ")}`);
      const w = won[0]!;
      assert.equal((results[w] as PromiseFulfilledResult<{ order?: { driverId: string } }>).value.order?.driverId, drivers[w]!.id);
      for (const r of results) if (r.status === "rejected") await expectCode(Promise.reject(r.reason), Code.FailedPrecondition);
      const o = await t.getOrder(order.id);
      assert.equal(o.driverId, drivers[w]!.id);
      assert.equal(o.timeline.filter((e) => e.kind === TimelineKind.DRIVER_ASSIGNED).length, 1);
      const st = await t.state(order.id);
      assert.deepEqual(
        st.offers.map((x) => x.outcome).sort(),
        [OfferOutcome.ACCEPTED, OfferOutcome.WITHDRAWN, OfferOutcome.WITHDRAWN].sort(),
      );

      // The losers' locks are gone: the next order reaches both of them (the winner is carrying).
      const next = await t.order();
      const losers = drivers.filter((_, i) => i !== w);
      await Promise.all(losers.map((d) => offerFor(d, next.id)));
      assert.equal(drivers[w]!.offersFor(next.id).length, 0);
    });
  });
}
