/**
 * The seams inside the location service. Ingestion (ingest.ts, writer.ts) validates pings and
 * writes them to Redis; it hands accepted fixes to the history sink (history.ts) and to the
 * active-order tracker (active-orders.ts), which owns geofences.
 */

/** A fix that passed validation, in the units the rest of the service uses. */
export interface AcceptedFix {
  driverId: string;
  /** Configured city whose bounds contain the fix. */
  city: string;
  lat: number;
  lng: number;
  accuracyM: number;
  speedMps: number;
  headingDeg: number;
  /** Device time of the fix, epoch ms. */
  deviceTimeMs: number;
  /** Server receive time, epoch ms. */
  receivedAtMs: number;
  /** Per-stream sequence number as sent. */
  sequence: bigint;
}

/** Buffered append of fixes to Postgres history. */
export interface HistorySink {
  /**
   * Buffers the fixes (keeping at most one per driver per historyMinIntervalMs). Resolves at
   * once while the buffer is below historyMaxBuffered; above it, waits for a flush, which is
   * how a slow Postgres slows ingestion instead of growing memory.
   */
  append(fixes: readonly AcceptedFix[]): Promise<void>;
  /** Writes everything buffered now. */
  flush(): Promise<void>;
  start(): void;
  /** Flushes what is buffered and stops the timer and the retention job. */
  stop(): Promise<void>;
}

/** One order a driver is carrying, as the location service knows it (a driver may carry several: dispatch.stackSize). */
export interface ActiveAssignment {
  driverId: string;
  orderId: string;
  customerId: string;
  restaurantId: string;
  /** Order status name as in OrderStatus without the prefix, e.g. "PICKED_UP". */
  status: string;
  pickup: { lat: number; lng: number };
  dropoff: { lat: number; lng: number };
}

/** Which drivers carry which orders; geofences per carried order. */
export interface ActiveOrders {
  /** Cached orders a driver hosted by this process carries, oldest assignment first (empty when none or not loaded). */
  get(driverId: string): readonly ActiveAssignment[];
  /** Reads the orders a driver carries from shared state (Redis), for drivers streaming elsewhere; oldest assignment first. */
  lookup(driverId: string): Promise<readonly ActiveAssignment[]>;
  /** A driver started streaming to this process: load and keep its orders current. */
  attach(driverId: string): Promise<void>;
  /** The driver's last stream to this process ended. */
  detach(driverId: string): void;
  /** Feeds accepted fixes (in device-time order per driver) to the geofences of every carried order; never throws, effects run in the background. */
  observe(fixes: readonly AcceptedFix[]): void;
  start(): Promise<void>;
  stop(): Promise<void>;
}
