import assert from "node:assert/strict";
import { create } from "@bufbuild/protobuf";
import { timestampFromMs, timestampMs } from "@bufbuild/protobuf/wkt";
import { Redis } from "ioredis";
import { sql, type Kysely } from "kysely";
import { OfferOutcome, VehicleType, type Offer } from "../../gen/dabba/dispatch/v1/dispatch_pb.js";
import { DispatchService } from "../../gen/dabba/dispatch/v1/dispatch_service_pb.js";
import { PingSchema } from "../../gen/dabba/location/v1/location_pb.js";
import { LocationService } from "../../gen/dabba/location/v1/location_service_pb.js";
import { OrderService } from "../../gen/dabba/order/v1/order_service_pb.js";
import { offerLockKey } from "../../services/dispatch/keys.js";
import type { Db } from "../../services/platform/db.js";
import { uniqueId } from "../helpers/backends.js";
import { RESTAURANT } from "../helpers/dispatch.js";
import { problems, procClients, seedRestaurants, startProcStorage, startProcess, stopProcess, type Proc, type ProcStorage } from "../helpers/dispatch-procs.js";
import { NEARBY, fixtureRestaurant } from "../helpers/fixtures.js";
import { offsetMetres } from "../helpers/push-stream.js";
import { until } from "../helpers/wait.js";

// Dispatch state is durable: a dabba process that dies in the middle of dispatching an order
// (SIGKILL: no drain, no cleanup) leaves its job leased in pg-boss and its timers in Postgres, and
// a process started afterwards on the same Postgres and Redis carries on from there.

const LEASE_MS = 3000;
const OFFER_TTL_MS = 4000;
/** Lease, lease check, pg-boss's retry delay and the dead process's orphaned driver lock (offer TTL) all fit in this. */
const RESUME_LIMIT_MS = 20_000;

interface Driver {
  id: string;
  offers: Offer[];
  /** Opens (or reopens) the offer stream on the process at `port`. */
  listen(port: number): void;
  accept(offer: Offer): Promise<string | undefined>;
  close(): void;
}

describe("dispatch across a crashed process (Postgres + Redis)", function () {
  this.timeout(90_000);
  let storage: ProcStorage | undefined;
  let db: Db | undefined;
  let redis: Redis | undefined;
  const procs: Proc[] = [];
  const drivers: Driver[] = [];
  let rid = "";
  let env: Record<string, string> = {};
  // Clients go to the process whose port is current.
  let port = 0;
  const client = procClients(() => [port]);

  beforeEach(async () => {
    storage = await startProcStorage("dispatch_crash");
    rid = `r-crash-${uniqueId()}`;
    env = {
      ...storage.env,
      SERVICES: "all",
      DISPATCH_JOB_LEASE_MS: String(LEASE_MS),
      DISPATCH_LEASE_CHECK_MS: "1000",
      DISPATCH_OFFER_TTL_MS: String(OFFER_TTL_MS),
      DISPATCH_RETRY_MS: "500",
    };
    redis = new Redis(storage.redisUrl);
  });

  afterEach(async function () {
    if (this.currentTest?.state === "failed") {
      for (const [i, p] of procs.entries()) console.log(`      process ${i} (exit ${p.child.exitCode ?? p.child.signalCode ?? "-"}):\n        ${problems(p, 10).join("\n        ")}`);
    }
    for (const d of drivers.splice(0)) d.close();
    for (const p of procs.splice(0)) await stopProcess(p, "SIGKILL");
    redis?.disconnect();
    db = undefined; // closed with the storage
    await storage?.close();
  });

  async function start(extra: Record<string, string> = {}): Promise<Proc> {
    const p = await startProcess({ ...env, ...extra });
    procs.push(p);
    port = p.port;
    return p;
  }

  async function k(): Promise<Kysely<any>> {
    db ??= await storage!.openDb();
    return db.kysely as Kysely<any>;
  }

  /** A driver online at p: its state and fix are in Redis, so they outlive the process that took them. */
  async function driverAt(p: { lat: number; lng: number }): Promise<Driver> {
    const id = `crash-drv-${uniqueId()}`;
    const dispatch = await client(DispatchService, 0, "driver", id);
    await dispatch.goOnline({ city: "bengaluru", vehicleType: VehicleType.SCOOTER });
    const location = await client(LocationService, 0, "driver", id);
    const ping = create(PingSchema, { location: p, accuracyM: 5, speedMps: 0, headingDeg: 0, deviceTime: timestampFromMs(Date.now()), sequence: 1n });
    await location.reportLocations((async function* () { yield { pings: [ping] }; })());
    const offers: Offer[] = [];
    let abort: AbortController | undefined;
    const d: Driver = {
      id,
      offers,
      listen(at) {
        abort?.abort();
        const a = (abort = new AbortController());
        void (async () => {
          const stream = procClients(() => [at]);
          const c = await stream(DispatchService, 0, "driver", id);
          try {
            for await (const m of c.streamOffers({}, { signal: a.signal })) {
              if (m.offer && !offers.some((o) => o.offerId === m.offer!.offerId)) offers.push(m.offer);
            }
          } catch {
            // closed by the test, or the process died
          }
        })();
      },
      async accept(offer) {
        const c = await client(DispatchService, 0, "driver", id);
        return (await c.acceptOffer({ offerId: offer.offerId, fencingToken: offer.fencingToken })).order?.driverId;
      },
      close: () => abort?.abort(),
    };
    drivers.push(d);
    return d;
  }

  async function placeConfirmed(): Promise<string> {
    const customer = await client(OrderService, 0, "customer", `cust-${uniqueId()}`);
    const placed = await customer.placeOrder(
      { restaurantId: rid, lines: [{ itemId: `${rid}-dosa`, quantity: 1, optionIds: [], note: "" }], delivery: { location: NEARBY, addressLine: "Church Street 5", instructions: "" }, tipMinor: 0n, paymentToken: "tok_visa" },
      { headers: { "idempotency-key": uniqueId() } },
    );
    const kitchen = await client(OrderService, 0, "restaurant", "tablet-1", rid);
    await kitchen.acceptOrder({ orderId: placed.order!.id, prepMinutes: 10 });
    return placed.order!.id;
  }

  it("resumes an order whose process died between locking a driver and recording the offer", async () => {
    const a = await start({ DABBA_FAILPOINT: "dispatch:offer-locked" });
    await seedRestaurants(storage!, [fixtureRestaurant(rid)]);
    const driver = await driverAt(offsetMetres(RESTAURANT, 400, 0));
    const orderId = await placeConfirmed();

    // The first round locks the driver, then the failpoint SIGKILLs the process.
    let timer: NodeJS.Timeout | undefined;
    const { signal } = await Promise.race([
      a.exited,
      new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error("the failpoint was not reached within 15 s")), 15_000))),
    ]).finally(() => clearTimeout(timer));
    const killedAt = Date.now();
    assert.equal(signal, "SIGKILL");
    // Mid-offer: the driver is locked for this order, no offer is recorded, the round is leased.
    const lock = await redis!.get(offerLockKey(driver.id));
    assert.ok(lock?.startsWith(`${orderId}:`), `driver lock ${lock}`);
    const q = await k();
    assert.equal((await q.selectFrom("dispatch_offers").select("offer_id").where("order_id", "=", orderId).execute()).length, 0);
    const { rows: leased } = await sql<{ state: string }>`select state from pgboss.job where name = 'dispatch' and data->>'orderId' = ${orderId}`.execute(q);
    assert.ok(leased.some((j) => j.state === "active"), `round jobs of the order: ${JSON.stringify(leased)}`);

    // Another process, started afterwards, picks the job up once its lease has passed.
    const b = await start();
    driver.listen(b.port);
    await until(() => driver.offers.some((o) => o.orderId === orderId), RESUME_LIMIT_MS, "the order offered by the second process");
    const resumedMs = Date.now() - killedAt;
    // ...as a retry of the leased round, not a fresh one.
    const { rows: rounds } = await sql<{ retry_count: number }>`select retry_count from pgboss.job where name = 'dispatch' and data->>'orderId' = ${orderId} and data->>'kind' = 'round'`.execute(q);
    assert.ok(rounds.some((r) => r.retry_count >= 1), `round jobs' retries: ${JSON.stringify(rounds)}`);
    const offer = driver.offers.find((o) => o.orderId === orderId)!;
    assert.equal(await driver.accept(offer), driver.id);

    const ops = await client(DispatchService, 0, "ops", "op-1");
    const st = await ops.getDispatchState({ orderId });
    assert.equal(st.offers.length, 1, "one offer: the dead process recorded none");
    assert.equal(st.offers[0]!.driverId, driver.id);
    assert.equal(st.offers[0]!.outcome, OfferOutcome.ACCEPTED);
    const order = await (await client(OrderService, 0, "ops", "op-1")).getOrder({ orderId });
    assert.equal(order.order?.driverId, driver.id);
    console.log(`      offered again ${resumedMs} ms after the crash (lease ${LEASE_MS} ms, offer TTL ${OFFER_TTL_MS} ms)`);
  });

  it("expires an open offer of a killed process from another process and offers the next driver", async () => {
    const a = await start();
    await seedRestaurants(storage!, [fixtureRestaurant(rid)]);
    const near = await driverAt(offsetMetres(RESTAURANT, 300, 0));
    const far = await driverAt(offsetMetres(RESTAURANT, 0, 900));
    near.listen(a.port);
    far.listen(a.port);
    const orderId = await placeConfirmed();
    await until(() => [...near.offers, ...far.offers].some((o) => o.orderId === orderId), 10_000, "the first offer");
    await stopProcess(a, "SIGKILL");
    const killedAt = Date.now();
    const [first, second] = near.offers.length > 0 ? [near, far] : [far, near];
    const offer = first.offers[0]!;
    assert.ok(timestampMs(offer.expiresAt!) > killedAt, "the offer was still open when its process died");

    // The expiry is a durable job: the second process runs it, and the next round offers the other driver.
    const b = await start();
    first.listen(b.port);
    second.listen(b.port);
    await until(() => second.offers.some((o) => o.orderId === orderId), OFFER_TTL_MS + RESUME_LIMIT_MS, "the next driver offered after the expiry");
    const nextMs = Date.now() - timestampMs(offer.expiresAt!);
    assert.equal(await second.accept(second.offers.find((o) => o.orderId === orderId)!), second.id);

    const ops = await client(DispatchService, 0, "ops", "op-1");
    const st = await ops.getDispatchState({ orderId });
    assert.deepEqual(
      st.offers.map((o) => [o.driverId, OfferOutcome[o.outcome]]),
      [
        [first.id, "EXPIRED"],
        [second.id, "ACCEPTED"],
      ],
    );
    console.log(`      next driver offered ${nextMs} ms after the dead process's offer expired`);
  });
});
