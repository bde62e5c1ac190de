import assert from "node:assert/strict";
import { DispatchService } from "../../gen/dabba/dispatch/v1/dispatch_service_pb.js";
import { OfferOutcome } from "../../gen/dabba/dispatch/v1/dispatch_pb.js";
import { testConfig } from "../../services/platform/config.js";
import { offsetMetres } from "../helpers/push-stream.js";
import { RESTAURANT, nextOffer, orderParties, placeConfirmed, startDriver, type TestDriver } from "../helpers/dispatch.js";
import { startTestMesh, type Backend, type TestMesh } from "../helpers/mesh.js";
import { until } from "../helpers/wait.js";

const base = testConfig().dispatch;

for (const backend of ["embedded", "real"] as Backend[]) {
  const label = backend === "embedded" ? "PGlite + in-process redis" : "Postgres + Redis";

  describe(`DispatchService offers (${label})`, function () {
    this.timeout(60_000);
    let tm: TestMesh;
    const drivers: TestDriver[] = [];

    before(async () => {
      tm = await startTestMesh(backend, { dispatch: { ...base, offerTtlMs: 1500, leaseCheckMs: 1000, retryMs: 300 } });
    });
    afterEach(() => {
      for (const d of drivers.splice(0)) d.close();
    });
    after(async () => tm?.close());

    it("offers a confirmed order to the nearest driver and assigns it on accept", async () => {
      const near = await startDriver(tm, offsetMetres(RESTAURANT, 300, 0));
      const far = await startDriver(tm, offsetMetres(RESTAURANT, 2500, 0));
      drivers.push(near, far);
      const p = await orderParties(tm);
      const order = await placeConfirmed(tm, p);
      const offer = await nextOffer(near);
      assert.equal(offer.orderId, order.id);
      assert.ok(offer.fencingToken > 0n);
      assert.ok(offer.pickupDistanceKm > 0.2 && offer.pickupDistanceKm < 0.4, `pickup ${offer.pickupDistanceKm}`);
      assert.equal(far.offers().length, 0);
      const res = await near.dispatch.acceptOffer({ offerId: offer.offerId, fencingToken: offer.fencingToken });
      assert.equal(res.order?.driverId, near.id);
      const ops = await tm.client(DispatchService, "connect-grpc", "ops", "op-1");
      await until(async () => (await ops.getDispatchState({ orderId: order.id })).offers[0]?.outcome === OfferOutcome.ACCEPTED, 5000, "accepted state");
      const st = await ops.getDispatchState({ orderId: order.id });
      assert.equal(st.offers.length, 1);
      assert.equal(st.offers[0]!.driverId, near.id);
      assert.ok(st.offers[0]!.candidates.length >= 2, "records the scored candidates");
    });
  });
}
