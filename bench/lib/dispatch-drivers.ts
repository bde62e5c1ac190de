/**
 * The drivers of the dispatch benchmark, in a process of their own (bench/dispatch.ts forks this
 * file), so receiving offers and answering them does not share an event loop with the burst of
 * confirmations whose times the offers are measured from.
 *
 * Per driver, as a driver app would: its own token, GoOnline (city bengaluru, a mixed vehicle),
 * one StreamOffers server stream and one ReportLocations client stream (a fix every pingMs from
 * the street simulator, services/location/sim), both on the same HTTP/2 connection (connect-node's
 * gRPC transport, a few connections shared by all drivers). On an offer the driver thinks for a
 * random 0 to thinkMaxMs, then declines with probability declineShare or accepts with the offer's
 * fencing token; a withdrawn_offer_id cancels a pending answer. An offer whose expires_at passed
 * before the answer is counted as expired and not answered. Times are absolute ms on this
 * machine (performance.timeOrigin + performance.now()), comparable with the parent's.
 */
import { setMaxListeners } from "node:events";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { DispatchService, type StreamOffersResponse } from "../../gen/dabba/dispatch/v1/dispatch_service_pb.js";
import { VehicleType } from "../../gen/dabba/dispatch/v1/dispatch_pb.js";
import { LocationService } from "../../gen/dabba/location/v1/location_service_pb.js";
import { mulberry32 } from "../../services/catalog/seed.js";
import { createFleet, timestampToMs } from "../../services/location/sim/drivers.js";
import { mintToken } from "../../services/platform/auth.js";
import { BENGALURU } from "../../services/platform/config.js";
import { sleep } from "../../test/helpers/wait.js";

/** Set in the environment of the forked process. */
export const DRIVERS_ROLE = "DABBA_BENCH_DISPATCH_DRIVERS";

export interface DriversPlan {
  /** gRPC port of LocationService (ReportLocations). */
  port: number;
  /** gRPC port of DispatchService (the same as port unless dispatch runs in its own process). */
  dispatchPort: number;
  jwtSecret: string;
  runId: string;
  drivers: number;
  connections: number;
  /** One fix per driver this often. */
  pingMs: number;
  seed: number;
  /** Share of offers declined (0 to 1). */
  declineShare: number;
  /** Think time before answering, uniform in [0, thinkMaxMs). */
  thinkMaxMs: number;
}

export type ToDrivers = { type: "start"; plan: DriversPlan } | { type: "snapshot" } | { type: "finish" };

export interface DriversProgress {
  online: number;
  onlineFailed: number;
  pingsSent: number;
  offers: number;
  withdrawn: number;
  accepted: number;
  lost: number;
  declined: number;
  expired: number;
  answerErrors: number;
  /** Distinct orders accepted successfully so far. */
  assignedOrders: number;
  offerStreamErrors: number;
  locationStreamErrors: number;
}

export type OfferAnswer = "open" | "accepted" | "lost" | "declined" | "decline_failed" | "withdrawn" | "expired" | "error";

/** One offer as a driver saw it. */
export interface OfferSeen {
  orderId: string;
  offerId: string;
  /** Driver index in the fleet (ids are `${idPrefix}${index}`). */
  driver: number;
  recvAbs: number;
  pickupKm: number;
  answer: OfferAnswer;
  /** When the answer came back (or the offer was withdrawn or seen expired). */
  answeredAbs?: number;
  /** AcceptOffer / DeclineOffer round trip, ms (think time excluded). */
  rttMs?: number;
  /** The driver already held an accepted order when this offer arrived. */
  toBusy: boolean;
}

export type FromDrivers =
  | { type: "progress"; p: DriversProgress }
  | { type: "ready"; p: DriversProgress; setupMs: number; failures: string[] }
  | { type: "snapshot"; atAbs: number; lat: number[]; lng: number[] }
  | {
      type: "done";
      p: DriversProgress;
      offers: OfferSeen[];
      pings: { sent: number; accepted: number; rejected: number; byReason: Record<string, number> };
      failures: string[];
      cpuMs: number;
    }
  | { type: "failed"; message: string };

export function driverIdPrefix(runId: string): string {
  return `bench-${runId}-d`;
}

const VEHICLES: [VehicleType, number][] = [
  [VehicleType.SCOOTER, 0.6],
  [VehicleType.BICYCLE, 0.2],
  [VehicleType.CAR, 0.2],
];

/** Deadline of each unary call: a wedged server fails the run instead of hanging it. */
export const CALL_TIMEOUT_MS = 30_000;
const SUMMARY_WAIT_MS = 15_000;

const nowAbs = () => performance.timeOrigin + performance.now();
const send = (m: FromDrivers) => process.send!(m);

async function drivers(plan: DriversPlan): Promise<void> {
  const cpu0 = process.cpuUsage();
  const setupStarted = performance.now();
  const n = plan.drivers;
  const auth = { hsSecret: plan.jwtSecret, issuer: "dabba", audience: "dabba", devSecret: false };
  const fleet = createFleet({ city: BENGALURU, drivers: n, seed: plan.seed, startMs: Date.now(), idPrefix: driverIdPrefix(plan.runId) });
  const transports = Array.from({ length: plan.connections }, () => createGrpcTransport({ baseUrl: `http://127.0.0.1:${plan.port}` }));
  const dispatchTransports =
    plan.dispatchPort === plan.port ? transports : Array.from({ length: plan.connections }, () => createGrpcTransport({ baseUrl: `http://127.0.0.1:${plan.dispatchPort}` }));
  const dispatch: Client<typeof DispatchService>[] = dispatchTransports.map((t) => createClient(DispatchService, t));
  const location: Client<typeof LocationService>[] = transports.map((t) => createClient(LocationService, t));
  const headers = await Promise.all(fleet.drivers.map(async (d) => ({ authorization: `Bearer ${await mintToken(auth, { role: "driver", sub: d.id }, 7200)}` })));
  const rng = mulberry32(plan.seed ^ 0x51ed27);

  const p: DriversProgress = {
    online: 0,
    onlineFailed: 0,
    pingsSent: 0,
    offers: 0,
    withdrawn: 0,
    accepted: 0,
    lost: 0,
    declined: 0,
    expired: 0,
    answerErrors: 0,
    assignedOrders: 0,
    offerStreamErrors: 0,
    locationStreamErrors: 0,
  };
  const failures: string[] = [];
  const fail = (what: string) => {
    if (failures.length < 20) failures.push(what);
  };
  const progress = setInterval(() => send({ type: "progress", p }), 1000);

  // GoOnline, 64 at a time.
  {
    let next = 0;
    await Promise.all(
      Array.from({ length: 64 }, async () => {
        for (let k = next++; k < n; k = next++) {
          const u = rng();
          let acc = 0;
          const vehicleType = VEHICLES.find(([, share]) => (acc += share) > u)?.[0] ?? VehicleType.SCOOTER;
          try {
            await dispatch[k % plan.connections]!.goOnline({ city: BENGALURU.name, vehicleType }, { headers: headers[k]!, timeoutMs: CALL_TIMEOUT_MS });
            p.online++;
          } catch (err) {
            p.onlineFailed++;
            fail(`GoOnline ${fleet.drivers[k]!.id}: ${ConnectError.from(err).message}`);
          }
        }
      }),
    );
  }

  let finishing = false;
  const abort = new AbortController();
  setMaxListeners(0, abort.signal); // one signal ends every offer stream
  const offers: OfferSeen[] = [];
  const pending = new Map<string, { timer: NodeJS.Timeout; seen: OfferSeen }>();
  const answering = new Set<Promise<void>>();
  const held = new Uint16Array(n); // accepted orders per driver
  const acceptedOrders = new Set<string>();

  async function answer(k: number, seen: OfferSeen, token: bigint, decline: boolean, expiresAbs: number): Promise<void> {
    if (nowAbs() > expiresAbs) {
      seen.answer = "expired";
      seen.answeredAbs = nowAbs();
      p.expired++;
      return;
    }
    const client = dispatch[k % plan.connections]!;
    const t0 = performance.now();
    try {
      if (decline) {
        await client.declineOffer({ offerId: seen.offerId, fencingToken: token }, { headers: headers[k]!, timeoutMs: CALL_TIMEOUT_MS });
        seen.answer = "declined";
        p.declined++;
      } else {
        await client.acceptOffer({ offerId: seen.offerId, fencingToken: token }, { headers: headers[k]!, timeoutMs: CALL_TIMEOUT_MS });
        seen.answer = "accepted";
        p.accepted++;
        held[k]!++;
        acceptedOrders.add(seen.orderId);
        p.assignedOrders = acceptedOrders.size;
      }
    } catch (err) {
      const e = ConnectError.from(err);
      if (e.code === Code.FailedPrecondition) {
        // A lost race (the offer was withdrawn, expired or superseded): the fencing said no.
        seen.answer = decline ? "decline_failed" : "lost";
        if (!decline) p.lost++;
      } else {
        seen.answer = "error";
        p.answerErrors++;
        fail(`${decline ? "DeclineOffer" : "AcceptOffer"} ${seen.offerId}: [${Code[e.code]}] ${e.rawMessage}`);
      }
    }
    seen.rttMs = performance.now() - t0;
    seen.answeredAbs = nowAbs();
  }

  function onMessage(k: number, m: StreamOffersResponse): void {
    const t = nowAbs();
    const o = m.offer;
    if (o) {
      const seen: OfferSeen = { orderId: o.orderId, offerId: o.offerId, driver: k, recvAbs: t, pickupKm: o.pickupDistanceKm, answer: "open", toBusy: held[k]! > 0 };
      offers.push(seen);
      p.offers++;
      const expiresAbs = o.expiresAt ? timestampToMs(o.expiresAt) : Infinity;
      const think = rng() * plan.thinkMaxMs;
      const decline = rng() < plan.declineShare;
      const timer = setTimeout(() => {
        pending.delete(o.offerId);
        const a = answer(k, seen, o.fencingToken, decline, expiresAbs);
        answering.add(a);
        void a.finally(() => answering.delete(a));
      }, think);
      pending.set(o.offerId, { timer, seen });
    } else if (m.withdrawnOfferId) {
      p.withdrawn++;
      const w = pending.get(m.withdrawnOfferId);
      if (w) {
        clearTimeout(w.timer);
        pending.delete(m.withdrawnOfferId);
        w.seen.answer = "withdrawn";
        w.seen.answeredAbs = t;
      }
    }
  }

  /** A driver app keeps its offer stream open: reconnect after a second unless the service is missing. */
  async function offerLoop(k: number): Promise<void> {
    while (!finishing) {
      try {
        const stream = dispatch[k % plan.connections]!.streamOffers({}, { signal: abort.signal, headers: headers[k]! });
        for await (const m of stream) onMessage(k, m);
      } catch (err) {
        if (finishing) return;
        const e = ConnectError.from(err);
        p.offerStreamErrors++;
        fail(`StreamOffers ${fleet.drivers[k]!.id}: [${Code[e.code]}] ${e.rawMessage}`);
        if (e.code === Code.Unimplemented || e.code === Code.Unauthenticated || e.code === Code.PermissionDenied) return;
      }
      await sleep(1000);
    }
  }

  // Pacing of the location streams: one timer per driver, woken early when finishing.
  const wakers: ((() => void) | undefined)[] = new Array(n);
  const wait = (k: number, ms: number) =>
    new Promise<void>((resolve) => {
      const t = setTimeout(() => {
        wakers[k] = undefined;
        resolve();
      }, Math.max(0, ms));
      wakers[k] = () => {
        clearTimeout(t);
        wakers[k] = undefined;
        resolve();
      };
    });
  const hasSent = new Uint8Array(n);
  let summariesIn = 0;
  let driversWithFix = 0;
  const locationAbort = new AbortController();
  setMaxListeners(0, locationAbort.signal);
  const pings = { sent: 0, accepted: 0, rejected: 0, byReason: {} as Record<string, number> };
  const locationStart = nowAbs() + 100;

  async function locationLoop(k: number): Promise<void> {
    const driver = fleet.drivers[k]!;
    // Phases spread evenly over the interval, as independent phones would be.
    let due = locationStart + (k / n) * plan.pingMs;
    while (!finishing) {
      async function* body() {
        while (!finishing) {
          await wait(k, due - nowAbs());
          if (finishing) return;
          const now = nowAbs();
          due += plan.pingMs;
          // A stalled loop skips fixes rather than bursting them, and keeps its phase.
          while (due <= now) due += plan.pingMs;
          if (!hasSent[k]) {
            hasSent[k] = 1;
            driversWithFix++;
          }
          p.pingsSent++;
          yield { pings: [driver.next(Date.now())] };
        }
      }
      try {
        const r = await location[k % plan.connections]!.reportLocations(body(), { headers: headers[k]!, signal: locationAbort.signal });
        summariesIn++;
        pings.accepted += Number(r.accepted);
        pings.rejected += Number(r.rejected);
        for (const [reason, c] of Object.entries(r.rejectedByReason)) pings.byReason[reason] = (pings.byReason[reason] ?? 0) + Number(c);
      } catch (err) {
        const e = ConnectError.from(err);
        if (locationAbort.signal.aborted) return;
        p.locationStreamErrors++;
        fail(`ReportLocations ${driver.id}: [${Code[e.code]}] ${e.rawMessage}`);
        if (!finishing) await sleep(1000);
      }
    }
  }

  const offerLoops = fleet.drivers.map((_, k) => offerLoop(k));
  const locationLoops = fleet.drivers.map((_, k) => locationLoop(k));
  // Every driver has sent its first fix (on a busy machine later than one interval in), and the server had a moment to write it.
  await sleep(locationStart + plan.pingMs - nowAbs());
  for (const until = nowAbs() + 60_000; driversWithFix < n && nowAbs() < until; ) await sleep(100);
  await sleep(500);
  send({ type: "ready", p, setupMs: performance.now() - setupStarted, failures: [...failures] });

  await new Promise<void>((resolve) => {
    process.on("message", (m: ToDrivers) => {
      if (m.type === "snapshot") {
        // The true positions (no GPS error) now: the same instant for every driver.
        const at = Date.now();
        const lat: number[] = new Array(n);
        const lng: number[] = new Array(n);
        fleet.drivers.forEach((d, k) => {
          d.advanceTo(at);
          const t = d.truth();
          lat[k] = t.lat;
          lng[k] = t.lng;
        });
        send({ type: "snapshot", atAbs: at, lat, lng });
      } else if (m.type === "finish") resolve();
    });
  });

  finishing = true;
  for (const { timer } of pending.values()) clearTimeout(timer);
  pending.clear();
  await Promise.all(answering);
  abort.abort();
  for (const w of wakers) w?.();
  await Promise.all(offerLoops);
  // Each location stream half-closes and waits for its summary; a server that cannot answer within SUMMARY_WAIT_MS is given up on.
  const summaries = Promise.all(locationLoops);
  const late = setTimeout(() => {
    p.locationStreamErrors += n - summariesIn;
    fail(`${n - summariesIn} ReportLocations summaries not received within ${SUMMARY_WAIT_MS} ms`);
    locationAbort.abort();
  }, SUMMARY_WAIT_MS);
  await summaries;
  clearTimeout(late);
  clearInterval(progress);
  pings.sent = p.pingsSent;
  const cpu = process.cpuUsage(cpu0);
  process.send!({ type: "done", p, offers, pings, failures, cpuMs: (cpu.user + cpu.system) / 1000 } satisfies FromDrivers, undefined, {}, () => process.exit(0));
}


if (process.env[DRIVERS_ROLE] === "1" && process.send) {
  process.once("message", (m: ToDrivers) => {
    if (m.type !== "start") return;
    drivers(m.plan).catch((err: unknown) => {
      process.send!({ type: "failed", message: err instanceof Error ? (err.stack ?? err.message) : String(err) } satisfies FromDrivers, undefined, {}, () => process.exit(1));
    });
  });
}
