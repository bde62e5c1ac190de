import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { timestampFromMs } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { MoneySchema } from "../../gen/dabba/common/v1/common_pb.js";
import { OfferSchema, VehicleType, type Offer } from "../../gen/dabba/dispatch/v1/dispatch_pb.js";
import { StreamOffersResponseSchema } from "../../gen/dabba/dispatch/v1/dispatch_service_pb.js";
import { EventSchema, type Event } from "../../gen/dabba/events/v1/events_pb.js";
import type { LocationService } from "../../gen/dabba/location/v1/location_service_pb.js";
import type { Order } from "../../gen/dabba/order/v1/order_pb.js";
import type { OrderService } from "../../gen/dabba/order/v1/order_service_pb.js";
import { cityAt, type Config } from "../platform/config.js";
import { NotFoundError, PreconditionError, UnavailableError } from "../platform/errors.js";
import type { Logger } from "../platform/logger.js";
import { haversineKm, type RedisPorts, type StreamEntry } from "../platform/redis.js";
import { cityGeoKey, driverFixKey, driverProfileKey, readFixHash } from "../location/keys.js";
import type { JobRow, NewJobRow, NewOfferRow, OfferRow } from "./db/tables.js";
import {
  acceptanceRate,
  canStack,
  chooseDrivers,
  estimatedEarningsMinor,
  leadStartAtMs,
  nextRoundDelayMs,
  pickupDeadlineMs,
  radiusForAttempt,
  scoreCandidates,
  shouldFlag,
  travelSeconds,
  type Candidate,
  type CarriedOrder,
  type Scored,
  type Vehicle,
} from "./domain.js";
import { TOKEN_KEY, acceptingValue, carryingKey, driverStateKey, offerChannel, offerLockKey, offerLockValue } from "./keys.js";
import { solveAssignment } from "./assignment.js";
import { orderPriority, type JobQueue, type NewJob as QueuedJob, type RunningJob as QueueRunningJob } from "../platform/jobs.js";

/** Dispatch's jobs: a round for an order, an offer's expiry, an assignment's pickup deadline. */
export type DispatchJob =
  | { kind: "round"; orderId: string }
  | { kind: "expire"; orderId: string; offerId: string }
  | { kind: "pickup"; orderId: string; driverId: string; token: number };
type NewJob = QueuedJob<DispatchJob>;
type RunningJob = QueueRunningJob<DispatchJob>;
import type { DispatchStore, Trx } from "./store.js";

/** How long an accept may hold the driver's lock (as "accepting") while the assignment is made and recorded. */
const ACCEPTING_TTL_MS = 30_000;
/** GEOSEARCH COUNT is this many times candidateCount: busy drivers are filtered out after the search. */
const SEARCH_WIDTH = 4;
/** Candidates kept in an offer's record (why that driver). */
const RECORDED_CANDIDATES = 5;
/** Tries when a compare-and-set lost to a concurrent change of the same order (a round, a timer, an RPC). */
const CAS_RETRIES = 8;

export const VEHICLES: Record<Exclude<VehicleType, VehicleType.UNSPECIFIED>, Vehicle> = {
  [VehicleType.BICYCLE]: "bicycle",
  [VehicleType.SCOOTER]: "scooter",
  [VehicleType.CAR]: "car",
};

/** What dispatch keeps per driver in Redis (keys.ts driverStateKey). */
export interface DriverState {
  online: boolean;
  city: string;
  vehicle: Vehicle;
  offers: number;
  accepts: number;
  declines: number;
  expiries: number;
  noShows: number;
  idleSinceMs?: number;
}

export function readDriverState(h: Record<string, string>): DriverState | undefined {
  if (!h.city) return undefined;
  const n = (v: string | undefined) => (v ? Number(v) || 0 : 0);
  return {
    online: h.online === "1",
    city: h.city,
    vehicle: (h.vehicle as Vehicle) ?? "scooter",
    offers: n(h.offers),
    accepts: n(h.accepts),
    declines: n(h.declines),
    expiries: n(h.expiries),
    noShows: n(h.no_shows),
    idleSinceMs: h.idle_since ? Number(h.idle_since) : undefined,
  };
}

/** The carrying hash field that marks an order picked up. */
function pickedField(orderId: string): string {
  return `${orderId}:picked`;
}

/** The orders of a carrying hash (keys.ts carryingKey): one JSON field per order, `<order>:picked` once picked up. */
export function readCarrying(h: Record<string, string>): CarriedOrder[] {
  const out: CarriedOrder[] = [];
  for (const [k, v] of Object.entries(h)) {
    if (k.endsWith(":picked")) continue;
    const c = JSON.parse(v) as CarriedOrder;
    out.push({ ...c, pickedUp: h[pickedField(k)] === "1" });
  }
  return out;
}

export interface EngineOptions {
  config: Config;
  store: DispatchStore;
  queue: JobQueue<DispatchJob>;
  redis: RedisPorts;
  logger: Logger;
  order: () => Client<typeof OrderService>;
  location: () => Client<typeof LocationService>;
  /** Randomness for exploration (tests pass a seeded one). */
  rand?: () => number;
  /** Test-only fault injection: called at named points; may kill the process. */
  failpoint?: (name: "offer-locked") => void;
}

export type Engine = ReturnType<typeof createEngine>;

/**
 * The dispatch state machine. Jobs (queue.ts) and RPCs call into it; every change to an order's
 * dispatch is a compare-and-set on dispatch_jobs.version, and every Redis effect that must not
 * outlive a lost compare-and-set (an offer lock) is undone when it loses.
 */
export function createEngine(opts: EngineOptions) {
  const { config, store, queue, redis } = opts;
  const cfg = config.dispatch;
  const logger = opts.logger.child({ component: "dispatch-engine" });
  const rand = opts.rand ?? Math.random;
  const kv = redis.kv;

  /** A dispatch transaction; jobs due now that it sent are fetched right after its commit. */
  async function tx<T>(f: (trx: Trx) => Promise<T>): Promise<T> {
    let used: Trx | undefined;
    const r = await store.tx((trx) => {
      used = trx;
      return f(trx);
    });
    if (used && queue.sentDueIn(used)) queue.wake();
    return r;
  }

  // ------------------------------------------------------------------------------------------
  // Redis helpers

  async function driverStates(ids: string[]): Promise<{ state: (DriverState | undefined)[]; carrying: CarriedOrder[][] }> {
    const hashes = await redis.hgetallMany([...ids.map(driverStateKey), ...ids.map(carryingKey)]);
    return {
      state: ids.map((_, i) => readDriverState(hashes[i])),
      carrying: ids.map((_, i) => readCarrying(hashes[ids.length + i])),
    };
  }

  async function publishToDriver(driverId: string, msg: { offer?: Offer; withdrawnOfferId?: string }): Promise<void> {
    try {
      await redis.channels.publish(offerChannel(driverId), toBinary(StreamOffersResponseSchema, create(StreamOffersResponseSchema, msg)));
    } catch (err) {
      // The offer is recorded; a driver who missed the push gets it on (re)connect.
      logger.warn({ err, driverId }, "offer push failed");
    }
  }

  async function releaseLocks(offers: Pick<OfferRow, "driver_id" | "order_id" | "token">[]): Promise<void> {
    await Promise.all(offers.map((o) => kv.compareAndDelete(offerLockKey(o.driver_id), offerLockValue(o.order_id, Number(o.token)))));
  }

  async function withdraw(offers: OfferRow[]): Promise<void> {
    if (offers.length === 0) return;
    await releaseLocks(offers);
    await Promise.all(offers.map((o) => publishToDriver(o.driver_id, { withdrawnOfferId: o.offer_id })));
  }

  function bump(driverId: string, field: "offers" | "accepts" | "declines" | "expiries" | "no_shows"): Promise<unknown> {
    return kv.hincrby(driverStateKey(driverId), field, 1).catch((err) => logger.warn({ err, driverId, field }, "driver counter update failed"));
  }

  async function carryingRemove(driverId: string, orderId: string): Promise<void> {
    await kv.hdel(carryingKey(driverId), [orderId, pickedField(orderId)]);
    const remaining = readCarrying(await kv.hgetall(carryingKey(driverId)));
    if (remaining.length === 0) await kv.hset(driverStateKey(driverId), { idle_since: String(Date.now()) });
  }

  // ------------------------------------------------------------------------------------------
  // Offers

  function offerMessage(job: JobRow, o: Pick<OfferRow, "offer_id" | "token" | "pickup_km" | "earnings_minor" | "expires_at">): Offer {
    return create(OfferSchema, {
      offerId: o.offer_id,
      orderId: job.order_id,
      fencingToken: BigInt(o.token),
      restaurantName: job.restaurant_name,
      pickup: { lat: job.pickup_lat, lng: job.pickup_lng },
      dropoff: { lat: job.dropoff_lat, lng: job.dropoff_lng },
      pickupDistanceKm: o.pickup_km,
      deliveryDistanceKm: job.delivery_km,
      estimatedEarnings: create(MoneySchema, { amountMinor: BigInt(o.earnings_minor), currency: job.currency }),
      expiresAt: timestampFromMs(new Date(o.expires_at).getTime()),
    });
  }

  function candidateRecord(s: Scored) {
    return {
      driverId: s.driverId,
      score: Math.round(s.score * 1000) / 1000,
      pickupEtaSeconds: Math.round(s.pickupEtaS),
      acceptanceRate: Math.round(s.acceptanceRate * 1000) / 1000,
      idleSeconds: Math.round(s.idleS),
      distanceKm: Math.round(s.distanceKm * 1000) / 1000,
    };
  }

  /**
   * Drivers near the restaurant that may be offered this order, with what scoring needs:
   * GEOSEARCH on the city's key (location's index) for a wide nearest set, filtered by dispatch's
   * own state (online in this city, not locked by an offer, idle or stackable, not tried) before
   * the nearest candidateCount of them have their last fix read (fresh, heading, speed). Filtering
   * before the cut matters in a rush: the 50 nearest may all be busy while free drivers sit just
   * beyond them.
   */
  async function findCandidates(job: JobRow, radiusKm: number, now: number): Promise<Candidate[]> {
    const hits = await redis.geo.search(cityGeoKey(job.city), {
      lng: job.pickup_lng,
      lat: job.pickup_lat,
      radiusKm,
      count: cfg.candidateCount * SEARCH_WIDTH,
    });
    const tried = new Set(job.tried);
    const near = hits.filter((h) => !tried.has(h.member));
    if (near.length === 0) return [];
    const ids = near.map((h) => h.member);
    const [{ state, carrying }, locks] = await Promise.all([driverStates(ids), kv.mget(ids.map(offerLockKey))]);
    const free: { hit: (typeof near)[number]; s: DriverState; carried: CarriedOrder[] }[] = [];
    near.forEach((hit, i) => {
      const s = state[i];
      if (!s || !s.online || s.city !== job.city || locks[i] !== null) return;
      const carried = carrying[i];
      if (carried.length > 0) {
        if (carried.some((c) => c.orderId === job.order_id)) return;
        const check = canStack(
          carried,
          {
            restaurantId: job.restaurant_id,
            readyAtMs: new Date(job.ready_at).getTime(),
            pickup: { lat: job.pickup_lat, lng: job.pickup_lng },
            dropoff: { lat: job.dropoff_lat, lng: job.dropoff_lng },
          },
          s.vehicle,
          cfg,
        );
        if (!check.ok) return;
      }
      free.push({ hit, s, carried });
    });
    const top = free.slice(0, cfg.candidateCount);
    const fixes = await redis.hgetallMany(top.map((f) => driverFixKey(f.hit.member)));
    const out: Candidate[] = [];
    top.forEach(({ hit, s, carried }, i) => {
      const fix = readFixHash(fixes[i]!);
      // No fix (expired: the driver went quiet) or an old one: not a candidate.
      if (!fix || fix.atMs < now - cfg.freshFixMs) return;
      out.push({
        driverId: hit.member,
        position: { lat: fix.lat, lng: fix.lng },
        distanceKm: hit.distanceKm,
        headingDeg: fix.headingDeg,
        speedMps: fix.speedMps,
        vehicle: s.vehicle,
        offers: s.offers,
        accepts: s.accepts,
        idleSinceMs: carried.length > 0 ? undefined : s.idleSinceMs,
        carrying: carried.map((c) => c.orderId),
      });
    });
    return out;
  }

  /**
   * Takes a driver's offer lock for an order; returns the fencing token, or undefined if the driver
   * is locked or now carries an order it did not carry when it was chosen (`seen`). The carrying
   * hash is read after the lock is taken: an accept records the assignment there before it
   * releases its lock, so a driver whose whole offer-accept cycle ran between this process's
   * candidate read and its lock is seen busy here and released again.
   */
  async function lockDriver(driverId: string, orderId: string, seen: readonly string[]): Promise<number | undefined> {
    const token = await kv.incr(TOKEN_KEY);
    const value = offerLockValue(orderId, token);
    if (!(await kv.set(offerLockKey(driverId), value, { nx: true, ttlMs: cfg.offerTtlMs }))) return undefined;
    const now = readCarrying(await kv.hgetall(carryingKey(driverId)));
    if (now.every((c) => seen.includes(c.orderId))) return token;
    await kv.compareAndDelete(offerLockKey(driverId), value);
    return undefined;
  }

  /** Locks up to n of the scored drivers, best first; returns the locked ones with their tokens. */
  async function lockDrivers(orderId: string, scored: Scored[], picks: Scored[], n: number): Promise<{ s: Scored; token: number }[]> {
    const locked: { s: Scored; token: number }[] = [];
    const order = [...picks, ...scored.filter((s) => !picks.includes(s))];
    for (const s of order) {
      if (locked.length >= n) break;
      const token = await lockDriver(s.driverId, orderId, s.carrying);
      if (token !== undefined) locked.push({ s, token });
    }
    return locked;
  }

  /** A round's facts before anyone is locked. */
  interface Prepared {
    job: JobRow;
    now: number;
    flagNow: boolean;
    flagged: boolean;
    radiusKm: number;
    degraded: boolean;
    scored: Scored[];
  }

  /**
   * Rounds of several orders due together (a burst): candidates are found per order, then the
   * orders that compete for drivers are matched jointly (min-cost assignment on the scores), so
   * the first order does not take the driver a later one needed more. Orders are tried oldest
   * first; an order whose matched driver cannot be locked falls back to its own ranking.
   */
  async function rounds(items: { orderId: string; lateMs: number }[]): Promise<void> {
    const prepared = await Promise.all(items.map((it) => prepareRound(it.orderId, it.lateMs)));
    const ready = prepared.filter((p): p is Prepared => p !== undefined);
    ready.sort((a, b) => new Date(a.job.confirmed_at).getTime() - new Date(b.job.confirmed_at).getTime());
    const matched = cfg.parallelOffers === 1 && ready.length > 1 ? matchJointly(ready) : new Map<string, Scored>();
    // Together: matched drivers are distinct, and the locks arbitrate fallbacks that collide.
    const lockedHere = new Set<string>();
    await Promise.all(
      ready.map(async (p) => {
        let done = false;
        for (let i = 0; i < CAS_RETRIES && !done; i++) {
          const cur = i === 0 ? p : await prepareRound(p.job.order_id, 0);
          if (!cur) break;
          done = await offerRound(cur, i === 0 ? matched.get(p.job.order_id) : undefined, lockedHere);
        }
      }),
    );
  }

  /** The drivers the orders of a batch should get: min total (-score), each driver at most once. */
  function matchJointly(batch: Prepared[]): Map<string, Scored> {
    const drivers = new Map<string, number>();
    for (const p of batch) for (const s of p.scored) if (!drivers.has(s.driverId)) drivers.set(s.driverId, drivers.size);
    const rows = batch.length;
    // A private "nobody" column per order keeps the problem feasible: it costs more than any driver.
    const cols = drivers.size + rows;
    const cost = new Float64Array(rows * cols);
    let worst = 0;
    for (const p of batch) for (const s of p.scored) worst = Math.max(worst, Math.abs(s.score));
    const none = 2 * worst + 1e6;
    cost.fill(4 * none);
    batch.forEach((p, r) => {
      for (const s of p.scored) cost[r * cols + drivers.get(s.driverId)!] = -s.score;
      cost[r * cols + drivers.size + r] = none;
    });
    const { rowToCol } = solveAssignment(cost, rows, cols);
    const out = new Map<string, Scored>();
    batch.forEach((p, r) => {
      const c = rowToCol[r]!;
      if (c < drivers.size) {
        const s = p.scored.find((x) => drivers.get(x.driverId) === c);
        if (s) out.set(p.job.order_id, s);
      }
    });
    return out;
  }

  /** Loads the job and finds and scores its candidates; undefined when there is nothing to do (or it waits for its lead time). */
  async function prepareRound(orderId: string, lateMs: number): Promise<Prepared | undefined> {
    const job = await store.getJob(orderId);
    if (!job || job.state !== "searching") return undefined;
    const now = Date.now();
    const flagNow = job.flagged_at === null && shouldFlag(new Date(job.confirmed_at).getTime(), now, cfg);
    const flagged = job.flagged_at !== null || flagNow;
    const radiusKm = radiusForAttempt(job.attempt, cfg);
    const degraded = lateMs > cfg.degradeAfterMs;
    const candidates = job.city ? await findCandidates(job, radiusKm, now) : [];
    const scored = scoreCandidates({ lat: job.pickup_lat, lng: job.pickup_lng }, candidates, cfg, now, degraded);

    // Lead time: the first round waits until the food is ready less the best driver's travel time.
    if (job.attempt === 0 && cfg.leadBufferMs > 0 && scored.length > 0) {
      const travelS = Math.min(...scored.map((s) => s.pickupEtaS));
      const startAt = leadStartAtMs(new Date(job.ready_at).getTime(), travelS, now, cfg);
      if (startAt > now + 500) {
        await scheduleRound(job, startAt, {});
        return undefined;
      }
    }
    return { job, now, flagNow, flagged, radiusKm, degraded, scored };
  }

  /**
   * Locks and offers (1 or parallelOffers drivers, `preferred` first when given), or, when nobody
   * can be offered, counts the round, widens, flags when it is time, and comes back later.
   * False when the compare-and-set lost (the caller prepares again).
   */
  async function offerRound(p: Prepared, preferred: Scored | undefined, exclude: Set<string>): Promise<boolean> {
    const { job, now, flagNow, flagged, radiusKm, degraded } = p;
    // The flag is OrderService's (an order event the customer and operators see; a full refund
    // if the customer cancels); idempotent there, so a lost compare-and-set below only repeats it.
    if (flagNow) await flag(job);
    const scored = p.scored.filter((s) => !exclude.has(s.driverId));
    const n = Math.max(1, Math.min(cfg.parallelOffers, 3));
    const picks = preferred && !exclude.has(preferred.driverId)
      ? [preferred]
      : degraded ? scored.slice(0, n) : chooseDrivers(scored, n, cfg.explorationShare, rand);
    const locked = scored.length > 0 ? await lockDrivers(job.order_id, scored, picks, n) : [];

    if (locked.length === 0) {
      // Nobody to offer: the round counts; once flagged, decliners may be asked again.
      const lastRadius = radiusKm >= cfg.radiiKm[cfg.radiiKm.length - 1];
      return scheduleRound(job, now + nextRoundDelayMs(flagged, cfg), {
        attempt: job.attempt + 1,
        radius_km: radiusForAttempt(job.attempt + 1, cfg),
        ...(flagged && lastRadius && job.tried.length > 0 ? { tried: [] } : {}),
        ...(flagNow ? { flagged_at: new Date(now) } : {}),
      });
    }
    for (const l of locked) exclude.add(l.s.driverId);
    opts.failpoint?.("offer-locked");

    const sentAt = new Date(now);
    const expiresAt = new Date(now + cfg.offerTtlMs);
    const recorded = p.scored.slice(0, RECORDED_CANDIDATES).map(candidateRecord);
    const mode = degraded ? "nearest" : locked.length > 1 ? "parallel" : "scored";
    const rows: NewOfferRow[] = locked.map(({ s, token }) => ({
      offer_id: `of_${token}`,
      order_id: job.order_id,
      driver_id: s.driverId,
      token,
      attempt: job.attempt + 1,
      mode,
      pickup_km: Math.round(s.distanceKm * 1000) / 1000,
      earnings_minor: estimatedEarningsMinor(Number(job.pay_minor), 0, s.distanceKm, job.delivery_km),
      candidates: recorded.some((c) => c.driverId === s.driverId) ? recorded : [...recorded, candidateRecord(s)],
      sent_at: sentAt,
      expires_at: expiresAt,
      outcome: null,
      decided_at: null,
    }));
    const priority = orderPriority(new Date(job.confirmed_at).getTime());
    let ok = false;
    try {
      ok = await tx(async (trx) => {
        const won = await store.updateJob(trx, job.order_id, job.version, {
          state: "offered",
          attempt: job.attempt + 1,
          radius_km: radiusKm,
          tried: [...job.tried, ...locked.map((l) => l.s.driverId)],
          ...(flagNow ? { flagged_at: sentAt } : {}),
        });
        if (!won) return false;
        await store.insertOffers(trx, rows);
        await queue.send(
          rows.map((r) => ({ job: { kind: "expire", orderId: job.order_id, offerId: r.offer_id }, dueAtMs: expiresAt.getTime(), priority })),
          trx,
        );
        return true;
      });
    } finally {
      if (!ok) await releaseLocks(rows.map((r) => ({ driver_id: r.driver_id, order_id: r.order_id, token: r.token as number })));
    }
    if (!ok) {
      for (const l of locked) exclude.delete(l.s.driverId);
      return false;
    }
    await Promise.all(
      rows.map(async (r) => {
        await publishToDriver(r.driver_id, { offer: offerMessage(job, { ...r, token: r.token as number, expires_at: expiresAt, earnings_minor: r.earnings_minor as number }) });
        await bump(r.driver_id, "offers");
      }),
    );
    return true;
  }

  /** Records the round's changes (if any) and schedules the next round at dueAtMs. */
  async function scheduleRound(job: JobRow, dueAtMs: number, set: Parameters<DispatchStore["updateJob"]>[3]): Promise<boolean> {
    return tx(async (trx) => {
      if (!(await store.updateJob(trx, job.order_id, job.version, set))) return false;
      await queue.send([{ job: { kind: "round", orderId: job.order_id }, dueAtMs, priority: orderPriority(new Date(job.confirmed_at).getTime()) }], trx);
      return true;
    });
  }

  /** Flags the order on OrderService; an order that got a driver or ended meanwhile is left alone. */
  async function flag(job: JobRow): Promise<void> {
    try {
      await opts.order().flagDispatch({ orderId: job.order_id, attempts: job.attempt });
      logger.warn({ orderId: job.order_id, attempts: job.attempt }, "no driver found in time; order flagged");
    } catch (err) {
      if (err instanceof ConnectError && (err.code === Code.FailedPrecondition || err.code === Code.NotFound)) return;
      throw err;
    }
  }

  /** Closes an open offer (declined, expired) and, when it was the order's last open offer, starts the next round. */
  async function closeOffer(offer: OfferRow, outcome: "declined" | "expired" | "withdrawn"): Promise<boolean> {
    const now = new Date();
    for (let i = 0; i < CAS_RETRIES; i++) {
      const job = await store.getJob(offer.order_id);
      if (!job) return false;
      const res = await tx(async (trx) => {
        // The job row first, then the offers, as every writer does (no lock-order deadlock).
        if (!(await store.updateJob(trx, job.order_id, job.version, {}))) throw new CasRetry();
        if (!(await store.decideOffer(trx, offer.offer_id, outcome, now))) return "decided" as const;
        const open = await trx.selectFrom("dispatch_offers").select("offer_id").where("order_id", "=", offer.order_id).where("outcome", "is", null).execute();
        if (job.state === "offered" && open.length === 0) {
          if (!(await store.updateJob(trx, job.order_id, job.version + 1, { state: "searching" }))) throw new CasRetry();
          await queue.send([{ job: { kind: "round", orderId: job.order_id }, priority: orderPriority(new Date(job.confirmed_at).getTime()) }], trx);
        }
        return "closed" as const;
      }).catch((err) => {
        if (err instanceof CasRetry) return "retry" as const;
        throw err;
      });
      if (res === "retry") continue;
      return res === "closed";
    }
    return false;
  }

  // ------------------------------------------------------------------------------------------
  // Assignment bookkeeping (from AcceptOffer/ClaimDelivery at once, and from the order event)

  async function recordAssignment(orderId: string, driverId: string, token: number, atMs: number, eventSeq?: number): Promise<void> {
    for (let i = 0; i < CAS_RETRIES; i++) {
      const job = await store.getJob(orderId);
      if (!job) return;
      // Already recorded (the accept did it; this is its event): nothing to write.
      if (job.driver_id === driverId && Number(job.driver_token ?? -1) === token && job.state !== "searching" && job.state !== "offered") return;
      const ended = job.state === "picked_up" || job.state === "delivered" || job.state === "cancelled";
      // An older event changes nothing, except that it fills in the driver of an order that moved
      // on without it (its event failed once and was handled again after later ones).
      if (eventSeq !== undefined && job.event_seq >= eventSeq && !(ended && job.driver_id === null)) return;
      const offer = await store.getOffer(`of_${token}`);
      const vehicle = readDriverState(await kv.hgetall(driverStateKey(driverId)))?.vehicle ?? "scooter";
      const pickupKm = offer?.order_id === orderId ? offer.pickup_km : 0;
      const deadline = pickupDeadlineMs(atMs, travelSeconds(pickupKm, vehicle, cfg), new Date(job.ready_at).getTime(), cfg);
      let withdrawn: OfferRow[] = [];
      const won = await tx(async (trx) => {
        const set = ended
          ? { driver_id: driverId, driver_token: token, assigned_at: new Date(atMs) }
          : {
              state: "assigned" as const,
              driver_id: driverId,
              driver_token: token,
              assigned_at: new Date(atMs),
              pickup_deadline: new Date(deadline),
              ...(eventSeq !== undefined ? { event_seq: eventSeq } : {}),
            };
        if (!(await store.updateJob(trx, orderId, job.version, set))) return false;
        withdrawn = await store.acceptAndWithdraw(trx, orderId, token, new Date(atMs));
        if (!ended) {
          await queue.send([{ job: { kind: "pickup", orderId, driverId, token }, dueAtMs: deadline, priority: orderPriority(new Date(job.confirmed_at).getTime()) }], trx);
        }
        return true;
      });
      if (!won) continue;
      if (!ended) {
        const carried: CarriedOrder = {
          orderId,
          restaurantId: job.restaurant_id,
          readyAtMs: new Date(job.ready_at).getTime(),
          pickup: { lat: job.pickup_lat, lng: job.pickup_lng },
          dropoff: { lat: job.dropoff_lat, lng: job.dropoff_lng },
          pickedUp: false,
        };
        await kv.hset(carryingKey(driverId), { [orderId]: JSON.stringify(carried) });
      }
      await bump(driverId, "accepts");
      await withdraw(withdrawn);
      return;
    }
    if (eventSeq !== undefined) throw new Error(`order ${orderId}: assignment event ${eventSeq} lost its compare-and-set ${CAS_RETRIES} times`);
  }

  // ------------------------------------------------------------------------------------------
  // Jobs

  /** Runs the jobs fetched together: their rounds as one batch, timers one by one. */
  async function runJobs(batch: RunningJob[]): Promise<void> {
    const roundJobs: { orderId: string; lateMs: number }[] = [];
    const seen = new Set<string>();
    const others: Promise<void>[] = [];
    for (const r of batch) {
      const j: DispatchJob = r.job;
      if (j.kind === "round") {
        if (!seen.has(j.orderId)) roundJobs.push({ orderId: j.orderId, lateMs: r.lateMs });
        seen.add(j.orderId);
      } else if (j.kind === "expire") others.push(expire(j.offerId));
      else others.push(pickupDeadline(j.orderId, j.driverId, j.token));
    }
    await Promise.all([rounds(roundJobs), ...others]);
  }

  async function expire(offerId: string): Promise<void> {
    const offer = await store.getOffer(offerId);
    if (!offer || offer.outcome !== null) return;
    const lock = offerLockKey(offer.driver_id);
    if ((await kv.get(lock)) === acceptingValue(offer.order_id, Number(offer.token))) {
      // An accept is under way: it decides the offer. Look again once its marker must have gone
      // (a crashed accept leaves it until its TTL).
      await queue.send([{ job: { kind: "expire", orderId: offer.order_id, offerId }, dueAtMs: Date.now() + ACCEPTING_TTL_MS, priority: 0 }]);
      return;
    }
    await releaseLocks([offer]);
    if (await closeOffer(offer, "expired")) {
      await bump(offer.driver_id, "expiries");
      await publishToDriver(offer.driver_id, { withdrawnOfferId: offer.offer_id });
    }
  }

  async function pickupDeadline(orderId: string, driverId: string, token: number): Promise<void> {
    const job = await store.getJob(orderId);
    if (!job || job.state !== "assigned" || job.driver_id !== driverId || Number(job.driver_token) !== token) return;
    try {
      await opts.order().unassignDriver({ orderId, driverId, reason: "no-show: pickup deadline passed" });
    } catch (err) {
      // Picked up or cancelled meanwhile: nothing to undo.
      if (err instanceof ConnectError && (err.code === Code.FailedPrecondition || err.code === Code.NotFound)) return;
      throw err;
    }
    await bump(driverId, "no_shows");
    logger.info({ orderId, driverId }, "driver missed the pickup deadline; unassigned");
  }

  // ------------------------------------------------------------------------------------------
  // Order events (the dispatch consumer group on events:orders)

  async function onOrderEvents(entries: StreamEntry[]): Promise<void> {
    // In stream order per order: confirmations become jobs in one transaction, written before any
    // later event of the same order (a cancellation right after a confirmation must find its job).
    // Events dispatch does not act on (placed, payment, ETA changes, ...) and events of other
    // orders do not split the run (each confirmation is followed by its capture's payment event and
    // by other orders' assignments), so a burst becomes jobs in few transactions.
    const confirmed: Event[] = [];
    for (const entry of entries) {
      const e = fromBinary(EventSchema, entry.data);
      if (e.payload.case === "confirmed") {
        confirmed.push(e);
        continue;
      }
      if (!e.payload.case || !JOB_EVENTS.has(e.payload.case)) continue;
      if (confirmed.some((c) => c.orderId === e.orderId)) await createJobs(confirmed.splice(0));
      await onOrderEvent(e);
    }
    if (confirmed.length > 0) await createJobs(confirmed);
  }

  async function createJobs(events: Event[]): Promise<void> {
    const rows: NewJobRow[] = [];
    const jobs: NewJob[] = [];
    for (const e of events) {
      const o = e.order;
      if (!o || e.payload.case !== "confirmed") continue;
      const confirmedAt = e.occurredAt ? Number(e.occurredAt.seconds) * 1000 + Math.floor(e.occurredAt.nanos / 1e6) : Date.now();
      const pickup = o.pickupLocation ?? { lat: 0, lng: 0 };
      const dropoff = o.delivery?.location ?? { lat: 0, lng: 0 };
      const city = cityAt(config.location.cities, pickup.lat, pickup.lng)?.name ?? "";
      rows.push({
        order_id: o.id,
        city,
        restaurant_id: o.restaurantId,
        restaurant_name: o.restaurantName,
        pickup_lat: pickup.lat,
        pickup_lng: pickup.lng,
        dropoff_lat: dropoff.lat,
        dropoff_lng: dropoff.lng,
        delivery_km: Math.round(haversineKm(pickup.lng, pickup.lat, dropoff.lng, dropoff.lat) * 1000) / 1000,
        pay_minor: Number(o.deliveryFee?.amountMinor ?? 0n) + Number(o.tip?.amountMinor ?? 0n),
        currency: o.total?.currency ?? config.orders.currency,
        state: "searching",
        attempt: 0,
        radius_km: cfg.radiiKm[0],
        tried: [],
        driver_id: null,
        driver_token: null,
        confirmed_at: new Date(confirmedAt),
        ready_at: new Date(confirmedAt + e.payload.value.prepMinutes * 60_000),
        event_seq: Number(e.sequence),
        flagged_at: null,
        assigned_at: null,
        pickup_deadline: null,
        updated_at: new Date(),
      });
      jobs.push({ job: { kind: "round", orderId: o.id }, priority: orderPriority(confirmedAt) });
    }
    await tx(async (trx) => {
      const inserted = new Set(await store.insertJobs(trx, rows));
      await queue.send(jobs.filter((j) => inserted.has(j.job.orderId)), trx);
    });
  }

  /** The order events that change a dispatch job or a driver's load (onOrderEvent's cases). */
  const JOB_EVENTS: ReadonlySet<NonNullable<Event["payload"]["case"]>> = new Set(["driverAssigned", "driverUnassigned", "ready", "pickedUp", "delivered", "cancelled"]);

  async function onOrderEvent(e: Event): Promise<void> {
    const seq = Number(e.sequence);
    const p = e.payload;
    switch (p.case) {
      case "driverAssigned": {
        const at = e.occurredAt ? Number(e.occurredAt.seconds) * 1000 : Date.now();
        return recordAssignment(e.orderId, p.value.driverId, Number(p.value.fencingToken), at, seq);
      }
      case "driverUnassigned":
        return onUnassigned(e.orderId, p.value.driverId, seq);
      case "ready": {
        await applyToJob(e.orderId, seq, (job) => ({
          set: job.state === "searching" || job.state === "offered" || job.state === "assigned" ? { ready_at: new Date() } : {},
          // A round waiting for its lead time starts now that the food is ready (an extra round is harmless).
          inTx: job.state === "searching" && job.attempt === 0 && cfg.leadBufferMs > 0
            ? (trx) => queue.send([{ job: { kind: "round", orderId: e.orderId }, priority: orderPriority(new Date(job.confirmed_at).getTime()) }], trx)
            : undefined,
        }));
        return;
      }
      case "pickedUp":
        await applyToJob(e.orderId, seq, () => ({ set: { state: "picked_up" } }));
        return markPickedUp(p.value.driverId, e.orderId);
      case "delivered":
        await applyToJob(e.orderId, seq, () => ({ set: { state: "delivered" } }));
        return carryingRemove(p.value.driverId, e.orderId);
      case "cancelled":
        return onCancelled(e.orderId, seq, p.value.releasedDriverId);
      default:
        return;
    }
  }

  /**
   * Applies an order event to its job: a compare-and-set (with `inTx` in the same transaction),
   * retried; an event older than (or as old as) the newest applied changes nothing. Throws when
   * it keeps losing, so the consumer leaves the event pending and retries it.
   */
  async function applyToJob(
    orderId: string,
    seq: number,
    change: (job: JobRow) => { set: Parameters<DispatchStore["updateJob"]>[3]; inTx?: (trx: Trx) => Promise<void> },
  ): Promise<JobRow | undefined> {
    for (let i = 0; i < CAS_RETRIES; i++) {
      const job = await store.getJob(orderId);
      if (!job || job.event_seq >= seq) return undefined;
      const c = change(job);
      const won = await tx(async (trx) => {
        if (!(await store.updateJob(trx, orderId, job.version, { ...c.set, event_seq: seq }))) return false;
        await c.inTx?.(trx);
        return true;
      });
      if (won) return job;
    }
    throw new Error(`order ${orderId}: event ${seq} lost its compare-and-set ${CAS_RETRIES} times`);
  }

  /** A field of its own (no read-modify-write of the entry that a removal could race with). */
  async function markPickedUp(driverId: string, orderId: string): Promise<void> {
    await kv.hset(carryingKey(driverId), { [pickedField(orderId)]: "1" });
  }

  async function onUnassigned(orderId: string, driverId: string, seq: number): Promise<void> {
    await applyToJob(orderId, seq, (job) => {
      if (!(job.state === "assigned" && job.driver_id === driverId)) return { set: {} };
      return {
        set: { state: "searching", driver_id: null, driver_token: null, assigned_at: null, pickup_deadline: null, tried: [...new Set([...job.tried, driverId])] },
        inTx: (trx) => queue.send([{ job: { kind: "round", orderId }, priority: orderPriority(new Date(job.confirmed_at).getTime()) }], trx),
      };
    });
    await carryingRemove(driverId, orderId);
  }

  async function onCancelled(orderId: string, seq: number, releasedDriverId: string): Promise<void> {
    let withdrawn: OfferRow[] = [];
    await applyToJob(orderId, seq, () => ({
      set: { state: "cancelled" },
      inTx: async (trx) => {
        withdrawn = await store.withdrawOpen(trx, orderId, new Date());
      },
    }));
    await withdraw(withdrawn);
    if (releasedDriverId) await carryingRemove(releasedDriverId, orderId);
  }

  // ------------------------------------------------------------------------------------------
  // Driver commands

  async function requireOnline(driverId: string): Promise<{ state: DriverState; carrying: CarriedOrder[] }> {
    const { state, carrying } = await driverStates([driverId]);
    if (!state[0]?.online) throw new PreconditionError("driver is offline; call GoOnline first");
    return { state: state[0], carrying: carrying[0] };
  }

  async function goOnline(driverId: string, city: string, vehicle: Vehicle): Promise<void> {
    const carrying = readCarrying(await kv.hgetall(carryingKey(driverId)));
    const prev = readDriverState(await kv.hgetall(driverStateKey(driverId)));
    const now = String(Date.now());
    await kv.hset(driverStateKey(driverId), {
      online: "1",
      city,
      vehicle,
      online_at: now,
      ...(carrying.length === 0 && !(prev?.online && prev.idleSinceMs) ? { idle_since: now } : {}),
    });
    await kv.hset(driverProfileKey(driverId), { vehicle });
  }

  async function goOffline(driverId: string): Promise<void> {
    await kv.hset(driverStateKey(driverId), { online: "0" });
    // Open offers go to the next driver at once rather than at expiry.
    for (const o of await store.openOffersOfDriver(driverId, new Date())) {
      if (await kv.compareAndDelete(offerLockKey(driverId), offerLockValue(o.order_id, Number(o.token)))) {
        await closeOffer(o, "declined");
      }
    }
  }

  function openOfferOf(offer: OfferRow | undefined, driverId: string, token: bigint): OfferRow {
    // Another driver's offer is answered as missing: a driver sees only their own offers.
    if (!offer || offer.driver_id !== driverId) throw new NotFoundError("offer not found");
    if (BigInt(offer.token) !== token) {
      throw new PreconditionError(`stale fencing token ${token}: the offer's token is ${offer.token}`);
    }
    return offer;
  }

  async function accept(driverId: string, offerId: string, token: bigint): Promise<Order> {
    const offer = openOfferOf(await store.getOffer(offerId), driverId, token);
    if (offer.outcome === "accepted") {
      // A repeated accept: answer with the order while this driver still holds it.
      const { order } = await opts.order().getOrder({ orderId: offer.order_id });
      if (order?.driverId === driverId) return order;
      throw new PreconditionError("offer was accepted, but the assignment has ended since");
    }
    if (offer.outcome !== null) throw new PreconditionError(`offer is ${offer.outcome}`);
    if (new Date(offer.expires_at).getTime() <= Date.now()) throw new PreconditionError("offer is expired");
    // The Lua compare-and-swap: only the holder of this exact token takes the lock, which stays on
    // the driver (as "accepting") until the assignment is recorded, so no other order is offered
    // to them in between.
    const lock = offerLockKey(driverId);
    const accepting = acceptingValue(offer.order_id, Number(offer.token));
    if (!(await kv.compareAndSwap(lock, offerLockValue(offer.order_id, Number(offer.token)), accepting, ACCEPTING_TTL_MS))) {
      throw new PreconditionError("offer is no longer open (expired, answered or withdrawn)");
    }
    try {
      return await assign(offer);
    } finally {
      await kv.compareAndDelete(lock, accepting);
    }
  }

  /** The driver's lock is ours: OrderService's compare-and-set checks the token again, then the bookkeeping. */
  async function assign(offer: OfferRow): Promise<Order> {
    let order: Order | undefined;
    try {
      ({ order } = await opts.order().assignDriver({ orderId: offer.order_id, driverId: offer.driver_id, fencingToken: BigInt(offer.token) }));
    } catch (err) {
      if (err instanceof ConnectError && (err.code === Code.FailedPrecondition || err.code === Code.NotFound)) {
        await closeOffer(offer, "withdrawn").catch((e) => logger.warn({ err: e, offerId: offer.offer_id }, "closing a failed offer failed"));
        throw new PreconditionError(`order can no longer be assigned: ${err.rawMessage}`);
      }
      // Unknown outcome (order service unavailable): the order event settles the bookkeeping if it went through.
      throw new UnavailableError("assignment could not be confirmed; try again");
    }
    if (!order) throw new UnavailableError("assignment returned no order");
    try {
      await recordAssignment(offer.order_id, offer.driver_id, Number(offer.token), Date.now());
    } catch (err) {
      // The driver has the order (OrderService said so); the driver_assigned event redoes the bookkeeping.
      logger.warn({ err, orderId: offer.order_id }, "assignment bookkeeping failed; left to the order event");
    }
    return order;
  }

  async function decline(driverId: string, offerId: string, token: bigint): Promise<void> {
    const offer = openOfferOf(await store.getOffer(offerId), driverId, token);
    if (offer.outcome === "declined") return;
    if (offer.outcome !== null) throw new PreconditionError(`offer is ${offer.outcome}`);
    await kv.compareAndDelete(offerLockKey(driverId), offerLockValue(offer.order_id, Number(offer.token)));
    if (await closeOffer(offer, "declined")) await bump(driverId, "declines");
  }

  async function claim(driverId: string, orderId: string): Promise<Order> {
    const { state, carrying } = await requireOnline(driverId);
    const job = await store.getJob(orderId);
    if (!job || job.state === "cancelled" || job.state === "delivered") throw new NotFoundError("delivery not found");
    if (job.driver_id === driverId) {
      const { order } = await opts.order().getOrder({ orderId });
      if (order) return order;
    }
    if (job.state !== "searching") throw new PreconditionError(`delivery is ${job.state === "offered" ? "offered to another driver" : "already taken"}`);
    if (job.city !== state.city) throw new PreconditionError(`delivery is in ${job.city || "no configured city"}, driver is online in ${state.city}`);
    if (carrying.length > 0) {
      const check = canStack(carrying, {
        restaurantId: job.restaurant_id,
        readyAtMs: new Date(job.ready_at).getTime(),
        pickup: { lat: job.pickup_lat, lng: job.pickup_lng },
        dropoff: { lat: job.dropoff_lat, lng: job.dropoff_lng },
      }, state.vehicle, cfg);
      if (!check.ok) throw new PreconditionError(`cannot carry this delivery as well: ${check.reason}`);
    }
    const token = await lockDriver(driverId, orderId, carrying.map((c) => c.orderId));
    if (token === undefined) throw new PreconditionError("driver has an open offer or just took another delivery; answer or retry");
    const fix = await opts.location().getDriverLocation({ driverId }).catch(() => undefined);
    const pos = fix?.position?.location;
    const pickupKm = pos ? haversineKm(pos.lng, pos.lat, job.pickup_lng, job.pickup_lat) : 0;
    const now = new Date();
    const row: NewOfferRow = {
      offer_id: `of_${token}`,
      order_id: orderId,
      driver_id: driverId,
      token,
      attempt: job.attempt,
      mode: "claim",
      pickup_km: Math.round(pickupKm * 1000) / 1000,
      earnings_minor: estimatedEarningsMinor(Number(job.pay_minor), 0, pickupKm, job.delivery_km),
      candidates: [],
      sent_at: now,
      expires_at: new Date(now.getTime() + cfg.offerTtlMs),
      outcome: null,
      decided_at: null,
    };
    // A round of the same order (an empty search every retryMs) may move the version meanwhile:
    // retry while the order is still searching.
    let won = false;
    try {
      let cur: JobRow | undefined = job;
      for (let i = 0; i < CAS_RETRIES && !won && cur?.state === "searching"; i++) {
        const at: JobRow = cur;
        won = await tx(async (trx) => {
          if (!(await store.updateJob(trx, orderId, at.version, { state: "offered", tried: [...at.tried, driverId] }))) return false;
          await store.insertOffers(trx, [row]);
          await queue.send([{ job: { kind: "expire", orderId, offerId: row.offer_id }, dueAtMs: now.getTime() + cfg.offerTtlMs, priority: orderPriority(new Date(at.confirmed_at).getTime()) }], trx);
          return true;
        });
        if (!won) cur = await store.getJob(orderId);
      }
    } finally {
      if (!won) await kv.compareAndDelete(offerLockKey(driverId), offerLockValue(orderId, token));
    }
    if (!won) throw new PreconditionError("delivery was just offered to or taken by another driver");
    await bump(driverId, "offers");
    const offer = (await store.getOffer(row.offer_id))!;
    const accepting = acceptingValue(orderId, token);
    if (!(await kv.compareAndSwap(offerLockKey(driverId), offerLockValue(orderId, token), accepting, ACCEPTING_TTL_MS))) {
      throw new PreconditionError("claim expired before it was confirmed; try again");
    }
    try {
      return await assign(offer);
    } finally {
      await kv.compareAndDelete(offerLockKey(driverId), accepting);
    }
  }

  async function release(driverId: string, orderId: string, reason: string): Promise<void> {
    const job = await store.getJob(orderId);
    if (!job || (job.driver_id !== driverId && !(await wasDriverOf(orderId, driverId)))) throw new NotFoundError("order not found");
    if (job.state === "picked_up" || job.state === "delivered") throw new PreconditionError(`order is ${job.state.replace("_", " ")}; it can no longer be released`);
    if (job.state === "cancelled") throw new PreconditionError("order is cancelled");
    if (job.driver_id !== driverId) return; // already released: a repeated call
    try {
      await opts.order().unassignDriver({ orderId, driverId, reason: reason ? `released: ${reason}` : "released" });
    } catch (err) {
      if (err instanceof ConnectError && err.code === Code.FailedPrecondition) throw new PreconditionError(err.rawMessage);
      throw err;
    }
  }

  async function wasDriverOf(orderId: string, driverId: string): Promise<boolean> {
    const offers = await store.offersOfOrder(orderId);
    return offers.some((o) => o.driver_id === driverId && o.outcome === "accepted");
  }

  async function pendingOffers(driverId: string): Promise<Offer[]> {
    const offers = await store.openOffersOfDriver(driverId, new Date());
    const out: Offer[] = [];
    for (const o of offers) {
      const job = await store.getJob(o.order_id);
      if (job) out.push(offerMessage(job, o));
    }
    return out;
  }

  return {
    runJobs,
    onOrderEvents,
    goOnline,
    goOffline,
    accept,
    decline,
    claim,
    release,
    pendingOffers,
    requireOnline,
    offerMessage,
  };
}

class CasRetry extends Error {}
