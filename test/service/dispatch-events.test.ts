import assert from "node:assert/strict";
import { Code, ConnectError } from "@connectrpc/connect";
import { testConfig } from "../../services/platform/config.js";
import { uniqueId } from "../helpers/backends.js";
import { RESTAURANT, dispatchScope, type DispatchScope } from "../helpers/dispatch.js";
import { NEARBY } from "../helpers/fixtures.js";
import { startTestMesh, type Backend, type TestMesh } from "../helpers/mesh.js";
import { offsetMetres } from "../helpers/push-stream.js";
import { sleep } from "../helpers/wait.js";

const base = testConfig().dispatch;

for (const backend of ["embedded", "real"] as Backend[]) {
  const label = backend === "embedded" ? "PGlite + in-process redis" : "Postgres + Redis";

  // Its own mesh: when this fails, the orders it leaves searching would reach other tests' drivers.
  describe(`DispatchService order events (${label})`, function () {
    this.timeout(60_000);
    let tm: TestMesh;
    let t: DispatchScope;

    before(async () => {
      tm = await startTestMesh(backend, { dispatch: { ...base, offerTtlMs: 1500, leaseCheckMs: 1000, retryMs: 300 } });
    });
    beforeEach(async () => {
      t = await dispatchScope(tm);
    });
    afterEach(async () => t?.cleanup());
    after(async () => tm?.close());

    it("never dispatches an order cancelled right after its confirmation", async () => {
      // A cancellation read in the same batch as its confirmation must still find its job (events
      // are applied in stream order). An order offered in the few ms before its cancellation is
      // fine, as long as the offer is withdrawn and no further round runs.
      const d = await t.driver(offsetMetres(RESTAURANT, 300, 0));
      const ids: string[] = [];
      for (let i = 0; i < 20; i++) {
        const placed = await t.parties.customer.placeOrder(
          {
            restaurantId: tm.restaurantId,
            lines: [{ itemId: `${tm.restaurantId}-dosa`, quantity: 1, optionIds: [], note: "" }],
            delivery: { location: NEARBY, addressLine: "Church Street 5", instructions: "" },
            tipMinor: 0n, paymentToken: "tok_visa",
          },
          { headers: { "idempotency-key": uniqueId() } },
        );
        const id = placed.order!.id;
        await t.parties.restaurant.acceptOrder({ orderId: id, prepMinutes: 10 });
        await t.parties.customer.cancelOrder({ orderId: id, reason: "changed my mind" });
        ids.push(id);
      }
      const attempts = async () =>
        Promise.all(ids.map((id) => t.state(id).then((s) => s.attempt, (e) => (ConnectError.from(e).code === Code.NotFound ? -1 : Promise.reject(e)))));
      // The subject is time: a dispatch that missed a cancellation keeps running rounds (one
      // every 300 ms), so its attempt never holds still for a second. The cancellations are
      // applied by a consumer that may lag on a loaded machine: give it up to 10 s to settle.
      let before = await attempts();
      let after = before;
      for (let i = 0; i < 10; i++) {
        await sleep(1000);
        after = await attempts();
        if (after.every((a, k) => a === before[k])) break;
        if (i < 9) before = after;
      }
      const listed = (await d.dispatch.listAvailableDeliveries({ location: RESTAURANT, radiusKm: 5 })).deliveries.map((x) => x.orderId);
      const withdrawn = new Set(d.withdrawn());
      const leaked = ids.filter((id, i) => after[i] !== before[i] || d.offersFor(id).some((o) => !withdrawn.has(o.offerId)) || listed.includes(id));
      assert.deepEqual(leaked, [], `${leaked.length} of ${ids.length} cancelled orders still dispatched`);
    });
  });
}
