import assert from "node:assert/strict";
import { Code } from "@connectrpc/connect";
import { OfferOutcome, VehicleType } from "../../gen/dabba/dispatch/v1/dispatch_pb.js";
import { DispatchService } from "../../gen/dabba/dispatch/v1/dispatch_service_pb.js";
import { LocationService } from "../../gen/dabba/location/v1/location_service_pb.js";
import { testConfig } from "../../services/platform/config.js";
import { uniqueId } from "../helpers/backends.js";
import { RESTAURANT, dispatchScope, driverCounters, offerFor, type DispatchScope } from "../helpers/dispatch.js";
import { expectCode } from "../helpers/expect.js";
import { startTestMesh, type Backend, type TestMesh } from "../helpers/mesh.js";
import { offsetMetres } from "../helpers/push-stream.js";

const base = testConfig().dispatch;

for (const backend of ["embedded", "real"] as Backend[]) {
  const label = backend === "embedded" ? "PGlite + in-process redis" : "Postgres + Redis";

  describe(`DispatchService shifts (${label})`, function () {
    this.timeout(60_000);
    let tm: TestMesh;
    let t: DispatchScope;

    before(async () => {
      // Offers outlive the test's steps here (expiry is not the subject), so a lock seen in a
      // step is still the offer's lock and not a lapsed one.
      tm = await startTestMesh(backend, { dispatch: { ...base, offerTtlMs: 5000, leaseCheckMs: 1000, retryMs: 300 } });
    });
    beforeEach(async () => {
      t = await dispatchScope(tm);
    });
    afterEach(async () => t?.cleanup());
    after(async () => tm?.close());

    describe("GoOnline", () => {
      it("refuses an unknown city with INVALID_ARGUMENT naming city, and the driver stays offline", async () => {
        const id = `drv-${uniqueId()}`;
        const d = await tm.client(DispatchService, "connect-grpc", "driver", id);
        await expectCode(d.goOnline({ city: "atlantis", vehicleType: VehicleType.SCOOTER }), Code.InvalidArgument, /^city: .*atlantis/);
        await expectCode(d.goOnline({ city: "", vehicleType: VehicleType.SCOOTER }), Code.InvalidArgument, /^city: /);
        assert.notEqual((await driverCounters(tm, id)).online, "1");
      });

      it("refuses a missing vehicle with INVALID_ARGUMENT naming vehicle_type", async () => {
        const id = `drv-${uniqueId()}`;
        const d = await tm.client(DispatchService, "connect-grpc", "driver", id);
        await expectCode(d.goOnline({ city: "bengaluru" }), Code.InvalidArgument, /^vehicle_type: /);
        assert.notEqual((await driverCounters(tm, id)).online, "1");
      });

      it("refuses a token that is not a driver's with PERMISSION_DENIED", async () => {
        const customer = await tm.client(DispatchService, "connect-grpc", "customer", `cust-${uniqueId()}`);
        await expectCode(customer.goOnline({ city: "bengaluru", vehicleType: VehicleType.CAR }), Code.PermissionDenied);
        const restaurant = await tm.client(DispatchService, "connect-grpc", "restaurant", "tablet-1", tm.restaurantId);
        await expectCode(restaurant.goOnline({ city: "bengaluru", vehicleType: VehicleType.CAR }), Code.PermissionDenied);
      });

      it("accepts a city in any case and answers online", async () => {
        const id = `drv-${uniqueId()}`;
        const d = await tm.client(DispatchService, "connect-grpc", "driver", id);
        const res = await d.goOnline({ city: " Bengaluru ", vehicleType: VehicleType.BICYCLE });
        assert.equal(res.online, true);
        const h = await driverCounters(tm, id);
        assert.equal(h.online, "1");
        assert.equal(h.city, "bengaluru");
        assert.equal(h.vehicle, "bicycle");
        assert.equal((await d.goOffline({})).online, false);
      });
    });

    describe("who is offered", () => {
      it("offers nothing to a driver who went offline, though nearest", async () => {
        const gone = await t.driver(offsetMetres(RESTAURANT, 200, 0));
        await gone.dispatch.goOffline({});
        const on = await t.driver(offsetMetres(RESTAURANT, 1000, 0));
        const order = await t.order();
        const offer = await offerFor(on, order.id);
        assert.equal(gone.offersFor(order.id).length, 0);
        const st = await t.state(order.id);
        assert.deepEqual(st.offers.map((o) => o.driverId), [on.id]);
        assert.ok(!st.offers[0]!.candidates.some((c) => c.driverId === gone.id), "an offline driver is not even a candidate");
        assert.equal(offer.orderId, order.id);
      });

      it("offers nothing to a driver whose last position is not fresh, though nearest", async () => {
        // Older than freshFixMs, yet young enough for location to accept and keep it.
        const stale = await t.driver(offsetMetres(RESTAURANT, 200, 0), { fixAgeMs: base.freshFixMs + 60_000 });
        // The position is stored and findable: only its age keeps the driver out.
        const loc = await tm.client(LocationService, "connect-grpc", "ops", "op-1");
        const near = await loc.findNearbyDrivers({ city: "bengaluru", location: RESTAURANT, radiusKm: 1, limit: 200 });
        assert.ok(near.drivers.some((d) => d.driverId === stale.id), "stale driver is in the geo index");
        const fresh = await t.driver(offsetMetres(RESTAURANT, 1000, 0));
        const order = await t.order();
        await offerFor(fresh, order.id);
        assert.equal(stale.offersFor(order.id).length, 0);
        const st = await t.state(order.id);
        assert.deepEqual(st.offers.map((o) => o.driverId), [fresh.id]);
        assert.ok(!st.offers[0]!.candidates.some((c) => c.driverId === stale.id), "a stale driver is not a candidate");
      });

      it("offers nothing to a driver who never reported a position", async () => {
        const blind = await t.driver(null);
        const seen = await t.driver(offsetMetres(RESTAURANT, 1000, 0));
        const order = await t.order();
        await offerFor(seen, order.id);
        assert.equal(blind.offers().length, 0);
      });

      it("does not offer a second order to a driver whose offer is still open", async () => {
        const busy = await t.driver(offsetMetres(RESTAURANT, 300, 0));
        const other = await t.driver(offsetMetres(RESTAURANT, 1500, 0));
        const first = await t.order();
        const held = await offerFor(busy, first.id);
        const second = await t.order();
        await offerFor(other, second.id);
        assert.equal(busy.offersFor(second.id).length, 0);
        const st = await t.state(second.id);
        assert.deepEqual(st.offers.map((o) => o.driverId), [other.id]);
        assert.ok(!st.offers[0]!.candidates.some((c) => c.driverId === busy.id), "a locked driver is not a candidate");
        // The first offer was open all along: the lock, not an expiry, kept the driver out.
        const st1 = await t.state(first.id);
        assert.equal(st1.offers[0]!.offer!.offerId, held.offerId);
        assert.equal(st1.offers[0]!.outcome, OfferOutcome.UNSPECIFIED, "first offer still undecided");
        // And the held offer can still be taken.
        const res = await busy.dispatch.acceptOffer({ offerId: held.offerId, fencingToken: held.fencingToken });
        assert.equal(res.order?.driverId, busy.id);
      });
    });
  });
}
