import type { Insertable, Selectable } from "kysely";

/**
 * location_history: one row per kept fix (downsampled, see history.ts). Partitioned by range of
 * recorded_at, one partition per UTC day named location_history_pYYYYMMDD; partitions are created
 * and dropped at run time by history.ts, never by migrations.
 */
export interface LocationHistoryTable {
  driver_id: string;
  /** Device time of the fix (the partition key). */
  recorded_at: Date;
  lat: number;
  lng: number;
  /** Metres (real). */
  accuracy_m: number;
  /** Metres per second (real). */
  speed_mps: number;
  /** Degrees clockwise from north (real). */
  heading_deg: number;
  /** Server receive time. */
  received_at: Date;
}

export type LocationHistoryRow = Selectable<LocationHistoryTable>;
export type NewLocationHistoryRow = Insertable<LocationHistoryTable>;

/** The location service's tables, for Kysely<LocationTables>. */
export interface LocationTables {
  location_history: LocationHistoryTable;
}
