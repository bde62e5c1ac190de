import type { Generated, Insertable, Selectable } from "kysely";

/** Where an order's dispatch is. */
export type JobState =
  /** Waiting for its start time (lead time) or for the next round after an empty search. */
  | "searching"
  /** One or more offers are open. */
  | "offered"
  | "assigned"
  | "picked_up"
  | "delivered"
  | "cancelled";

/**
 * dispatch_jobs: one row per confirmed order, dispatch's own state beside the job queue
 * (pg-boss carries the jobs and timers that act on it). Every change is a compare-and-set on
 * `version`, so two workers (or a worker and an RPC) acting on one order cannot both win.
 */
export interface DispatchJobsTable {
  order_id: string;
  /** Configured city of the restaurant ('' when it lies in none: never matched, flagged). */
  city: string;
  restaurant_id: string;
  restaurant_name: string;
  pickup_lat: number;
  pickup_lng: number;
  dropoff_lat: number;
  dropoff_lng: number;
  /** Restaurant to customer, straight line, km. */
  delivery_km: number;
  /** Delivery fee plus tip, minor units: the base of the driver's estimated earnings. */
  pay_minor: number;
  currency: string;
  state: JobState;
  /** Rounds done (offers made or empty searches). */
  attempt: number;
  radius_km: number;
  /** Drivers already offered this order (not offered again until the order is flagged). */
  tried: string[];
  driver_id: string | null;
  /** Fencing token of the current assignment. */
  driver_token: number | null;
  confirmed_at: Date;
  /** When the food is expected ready (confirmation + prep estimate; set to now on READY). */
  ready_at: Date;
  /** The order sequence of the newest order event applied (older redeliveries are ignored). */
  event_seq: number;
  flagged_at: Date | null;
  assigned_at: Date | null;
  pickup_deadline: Date | null;
  version: Generated<number>;
  updated_at: Date;
}

export type OfferOutcomeName = "accepted" | "declined" | "expired" | "withdrawn";

/** dispatch_offers: every offer made, with why that driver was chosen. */
export interface DispatchOffersTable {
  offer_id: string;
  order_id: string;
  driver_id: string;
  /** The fencing token (monotonic across all offers). */
  token: number;
  /** The round it was made in. */
  attempt: number;
  /** How the driver was chosen: scored, nearest (overload), parallel, claim (pull model). */
  mode: "scored" | "nearest" | "parallel" | "claim";
  pickup_km: number;
  earnings_minor: number;
  /** Scored top candidates at the time (CandidateScore fields), best first. */
  candidates: unknown;
  sent_at: Date;
  expires_at: Date;
  outcome: OfferOutcomeName | null;
  decided_at: Date | null;
}

export interface DispatchDatabase {
  dispatch_jobs: DispatchJobsTable;
  dispatch_offers: DispatchOffersTable;
}

export type JobRow = Selectable<DispatchJobsTable>;
export type NewJobRow = Insertable<DispatchJobsTable>;
export type OfferRow = Selectable<DispatchOffersTable>;
export type NewOfferRow = Insertable<DispatchOffersTable>;
