import assert from "node:assert/strict";
import { testConfig } from "../../services/platform/config.js";
import { createCatalogStore } from "../../services/catalog/store.js";
import { uniqueId } from "../helpers/backends.js";
import { RESTAURANT, dispatchScope, offerFor, type DispatchScope, type TestDriver } from "../helpers/dispatch.js";
import { fixtureRestaurant } from "../helpers/fixtures.js";
import { startTestMesh, type Backend, type TestMesh } from "../helpers/mesh.js";
import { offsetMetres } from "../helpers/push-stream.js";

const base = testConfig().dispatch;

for (const backend of ["embedded", "real"] as Backend[]) {
  const label = backend === "embedded" ? "PGlite + in-process redis" : "Postgres + Redis";

  describe(`DispatchService stacking (${label})`, function () {
    this.timeout(60_000);
    let tm: TestMesh;
    let t: DispatchScope;

    before(async () => {
      tm = await startTestMesh(backend, { dispatch: { ...base, offerTtlMs: 5000, leaseCheckMs: 1000, retryMs: 300, stackSize: 2 } });
    });
    beforeEach(async () => {
      t = await dispatchScope(tm);
    });
    afterEach(async () => t?.cleanup());
    after(async () => tm?.close());

    async function take(d: TestDriver, restaurantId?: string) {
      const order = await t.order(10, restaurantId);
      const offer = await offerFor(d, order.id);
      const res = await d.dispatch.acceptOffer({ offerId: offer.offerId, fencingToken: offer.fencingToken });
      assert.equal(res.order?.driverId, d.id);
      return order;
    }

    it("offers a carrying driver a second order from the same restaurant, lets them hold both, and refuses a third", async () => {
      const a = await t.driver(offsetMetres(RESTAURANT, 300, 0));
      const b = await t.driver(offsetMetres(RESTAURANT, 2000, 0));
      const first = await take(a);
      // Same restaurant, ready within the window (both 10 minutes of prep), same drop area.
      const second = await take(a);
      assert.equal((await t.getOrder(first.id)).driverId, a.id);
      assert.equal((await t.getOrder(second.id)).driverId, a.id);
      assert.equal(b.offers().length, 0);

      const third = await t.order();
      await offerFor(b, third.id);
      assert.equal(a.offersFor(third.id).length, 0, "stack of two is full");
      const st = await t.state(third.id);
      assert.ok(!st.offers[0]!.candidates.some((c) => c.driverId === a.id), "a full driver is not a candidate");
    });

    it("does not offer a carrying driver an order from another restaurant", async () => {
      const otherId = `r-${uniqueId()}`;
      const other = offsetMetres(RESTAURANT, 0, 500);
      await createCatalogStore(tm.mesh.db).insertRestaurants([fixtureRestaurant(otherId, other)]);
      // a is the nearest driver to both restaurants; b is farther from the other one.
      const a = await t.driver(offsetMetres(RESTAURANT, 300, 0));
      const b = await t.driver(offsetMetres(RESTAURANT, 2000, 0));
      await take(a);
      const elsewhere = await t.order(10, otherId);
      await offerFor(b, elsewhere.id);
      assert.equal(a.offersFor(elsewhere.id).length, 0);
      const st = await t.state(elsewhere.id);
      assert.ok(!st.offers[0]!.candidates.some((c) => c.driverId === a.id), "a driver carrying another restaurant's order is not a candidate");
    });
  });
}
