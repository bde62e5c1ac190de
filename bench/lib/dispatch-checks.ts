/**
 * Offline checks of the dispatch benchmark: the optimal pickup distance on the drivers' snapshot
 * (min-cost assignment of the same orders to distinct drivers) and double assignments as
 * Postgres recorded them.
 */
import type pg from "pg";
import { solveSparseAssignment } from "../../services/dispatch/assignment.js";
import { haversineKm } from "../../services/platform/redis.js";

export interface Point {
  lat: number;
  lng: number;
}

/** Driver positions by fleet index (column-wise, as the snapshot arrives). */
export interface Positions {
  lat: ArrayLike<number>;
  lng: ArrayLike<number>;
}

/** The k nearest drivers of a point, nearest first, with their distances in km. */
export interface Nearest {
  cols: Int32Array;
  costs: Float64Array;
}

export function nearestDrivers(p: Point, drivers: Positions, k: number): Nearest {
  const n = drivers.lat.length;
  // Rank by an equirectangular squared distance (same order as haversine at city scale), then take the exact distance.
  const cosLat = Math.cos((p.lat * Math.PI) / 180);
  const d2 = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const dy = drivers.lat[i]! - p.lat;
    const dx = (drivers.lng[i]! - p.lng) * cosLat;
    d2[i] = dx * dx + dy * dy;
  }
  const idx = Array.from({ length: n }, (_, i) => i).sort((a, b) => d2[a]! - d2[b]!);
  const m = Math.min(k, n);
  const cols = new Int32Array(m);
  const costs = new Float64Array(m);
  for (let j = 0; j < m; j++) {
    const c = idx[j]!;
    cols[j] = c;
    costs[j] = haversineKm(p.lng, p.lat, drivers.lng[c]!, drivers.lat[c]!);
  }
  return { cols, costs };
}

/**
 * The optimal assignment of orders (each at its restaurant) to distinct drivers on the snapshot,
 * minimising the total pickup distance, each order restricted to the k drivers nearest its
 * restaurant (orders of one restaurant share one candidate list). When that leaves some order
 * without a driver (busy neighbourhoods share their nearest drivers), k doubles, up to maxK, so
 * the mean is over the same orders as the achieved one rather than over the easy ones.
 */
export function optimalPickup(
  orderRestaurant: readonly number[],
  restaurants: readonly Point[],
  drivers: Positions,
  k: number,
  maxK = 1024,
): { meanKm: number; totalKm: number; matched: number; k: number; ms: number } {
  const started = performance.now();
  for (;;) {
    const byRestaurant = new Map<number, Nearest>();
    const rows = orderRestaurant.map((r) => {
      let near = byRestaurant.get(r);
      if (!near) {
        near = nearestDrivers(restaurants[r]!, drivers, k);
        byRestaurant.set(r, near);
      }
      return { cols: near.cols.slice(), costs: near.costs.slice() };
    });
    const sol = solveSparseAssignment(rows, drivers.lat.length);
    if (sol.matched === rows.length || k >= maxK || k >= drivers.lat.length) {
      return { meanKm: sol.matched > 0 ? sol.total / sol.matched : 0, totalKm: sol.total, matched: sol.matched, k, ms: performance.now() - started };
    }
    k *= 2;
  }
}

export interface DbDoubleAssignments {
  /** Drivers holding more active (not delivered or cancelled) orders than the stack limit. */
  driversOverLimit: number;
  /** Orders with a driver_assigned history row following another without a driver_unassigned between. */
  ordersAssignedTwice: number;
  /** Orders with a driver, by id. */
  assigned: Map<string, string>;
}

export async function dbDoubleAssignments(pool: pg.Pool, stackLimit: number): Promise<DbDoubleAssignments> {
  const over = await pool.query<{ n: number }>(
    `select count(*)::int as n from (
       select driver_id from orders
        where driver_id is not null and status not in ('DELIVERED', 'CANCELLED')
        group by driver_id having count(*) > $1) x`,
    [stackLimit],
  );
  const twice = await pool.query<{ n: number }>(
    `select count(distinct order_id)::int as n from (
       select order_id, kind, lag(kind) over (partition by order_id order by seq) as prev
         from order_status_history where kind in ('driver_assigned', 'driver_unassigned')) h
      where kind = 'driver_assigned' and prev = 'driver_assigned'`,
  );
  const rows = await pool.query<{ id: string; driver_id: string }>(`select id, driver_id from orders where driver_id is not null`);
  return {
    driversOverLimit: over.rows[0]!.n,
    ordersAssignedTwice: twice.rows[0]!.n,
    assigned: new Map(rows.rows.map((r) => [r.id, r.driver_id])),
  };
}
