import { sql, type Kysely, type Transaction, type Updateable } from "kysely";
import type { Db } from "../platform/db.js";
import type { DispatchDatabase, DispatchJobsTable, JobRow, NewJobRow, NewOfferRow, OfferOutcomeName, OfferRow } from "./db/tables.js";

export type Trx = Transaction<DispatchDatabase>;

/**
 * dispatch_jobs and dispatch_offers. Rows stay in this module and the engine; job changes are
 * compare-and-set on version.
 */
export interface DispatchStore {
  kysely: Kysely<DispatchDatabase>;
  /** Runs f in one transaction. */
  tx<T>(f: (trx: Trx) => Promise<T>): Promise<T>;
  /** Inserts jobs that do not exist yet; returns the order ids inserted. */
  insertJobs(trx: Trx, rows: NewJobRow[]): Promise<string[]>;
  getJob(orderId: string): Promise<JobRow | undefined>;
  /** Compare-and-set: applies `set` (and version + 1) only at `version`; true when it did. */
  updateJob(trx: Trx | undefined, orderId: string, version: number, set: Updateable<DispatchJobsTable>): Promise<boolean>;
  insertOffers(trx: Trx, rows: NewOfferRow[]): Promise<void>;
  getOffer(offerId: string): Promise<OfferRow | undefined>;
  /** Decides an open offer; false when it was already decided. */
  decideOffer(trx: Trx | undefined, offerId: string, outcome: OfferOutcomeName, at: Date): Promise<boolean>;
  /** Marks the offer with this token accepted (whatever it was) and withdraws the order's other open offers; returns those. */
  acceptAndWithdraw(trx: Trx, orderId: string, token: number, at: Date): Promise<OfferRow[]>;
  /** Withdraws every open offer of the order; returns them. */
  withdrawOpen(trx: Trx, orderId: string, at: Date): Promise<OfferRow[]>;
  /** A driver's open, unexpired offers, oldest first. */
  openOffersOfDriver(driverId: string, now: Date): Promise<OfferRow[]>;
  offersOfOrder(orderId: string): Promise<OfferRow[]>;
  /** Unassigned orders (searching) in a lat/lng box, oldest first, at most limit. */
  searchingInBox(box: { south: number; west: number; north: number; east: number }, limit: number): Promise<JobRow[]>;
}

export function createDispatchStore(db: Db): DispatchStore {
  const k = db.kysely as Kysely<DispatchDatabase>;

  return {
    kysely: k,
    tx: (f) => k.transaction().execute(f),

    async insertJobs(trx, rows) {
      if (rows.length === 0) return [];
      const res = await trx
        .insertInto("dispatch_jobs")
        .values(rows)
        .onConflict((oc) => oc.column("order_id").doNothing())
        .returning("order_id")
        .execute();
      return res.map((r) => r.order_id);
    },

    getJob: (orderId) => k.selectFrom("dispatch_jobs").selectAll().where("order_id", "=", orderId).executeTakeFirst(),

    async updateJob(trx, orderId, version, set) {
      const res = await (trx ?? k)
        .updateTable("dispatch_jobs")
        .set({ ...set, version: sql`version + 1`, updated_at: new Date() })
        .where("order_id", "=", orderId)
        .where("version", "=", version)
        .executeTakeFirst();
      return Number(res.numUpdatedRows) === 1;
    },

    async insertOffers(trx, rows) {
      if (rows.length === 0) return;
      await trx
        .insertInto("dispatch_offers")
        .values(rows.map((r) => ({ ...r, candidates: JSON.stringify(r.candidates) })))
        .execute();
    },

    getOffer: (offerId) => k.selectFrom("dispatch_offers").selectAll().where("offer_id", "=", offerId).executeTakeFirst(),

    async decideOffer(trx, offerId, outcome, at) {
      const res = await (trx ?? k)
        .updateTable("dispatch_offers")
        .set({ outcome, decided_at: at })
        .where("offer_id", "=", offerId)
        .where("outcome", "is", null)
        .executeTakeFirst();
      return Number(res.numUpdatedRows) === 1;
    },

    async acceptAndWithdraw(trx, orderId, token, at) {
      await trx
        .updateTable("dispatch_offers")
        .set({ outcome: "accepted", decided_at: at })
        .where("order_id", "=", orderId)
        .where("token", "=", token)
        .execute();
      return trx
        .updateTable("dispatch_offers")
        .set({ outcome: "withdrawn", decided_at: at })
        .where("order_id", "=", orderId)
        .where("outcome", "is", null)
        .returningAll()
        .execute();
    },

    withdrawOpen: (trx, orderId, at) =>
      trx
        .updateTable("dispatch_offers")
        .set({ outcome: "withdrawn", decided_at: at })
        .where("order_id", "=", orderId)
        .where("outcome", "is", null)
        .returningAll()
        .execute(),


    openOffersOfDriver: (driverId, now) =>
      k
        .selectFrom("dispatch_offers")
        .selectAll()
        .where("driver_id", "=", driverId)
        .where("outcome", "is", null)
        .where("expires_at", ">", now)
        .orderBy("sent_at")
        .execute(),

    offersOfOrder: (orderId) =>
      k.selectFrom("dispatch_offers").selectAll().where("order_id", "=", orderId).orderBy("sent_at").orderBy("token").execute(),

    searchingInBox: (b, limit) =>
      k
        .selectFrom("dispatch_jobs")
        .selectAll()
        .where("state", "=", "searching")
        .where("pickup_lat", ">=", b.south)
        .where("pickup_lat", "<=", b.north)
        .where("pickup_lng", ">=", b.west)
        .where("pickup_lng", "<=", b.east)
        .orderBy("confirmed_at")
        .limit(limit)
        .execute(),
  };
}
