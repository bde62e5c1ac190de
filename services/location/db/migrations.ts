import { sql, type Kysely, type Migration } from "kysely";

// Frozen: never edit a migration once committed; add a new one. Run with db.migrate("location", migrations).

/**
 * The partitioned parent only. Day partitions are created ahead of time and dropped after the
 * retention period by history.ts (ensurePartitions / enforceRetention), because which days exist
 * depends on the clock, not on the schema version. There is deliberately no default partition:
 * rows in it would make creating the matching day partition fail later.
 */
const m20261221T1000_location_history: Migration = {
  async up(db: Kysely<any>) {
    await sql`
      create table location_history (
        driver_id text not null,
        recorded_at timestamptz not null,
        lat double precision not null,
        lng double precision not null,
        accuracy_m real not null,
        speed_mps real not null,
        heading_deg real not null,
        received_at timestamptz not null
      ) partition by range (recorded_at)`.execute(db);
    // Partitioned index: every day partition gets its own copy when it is created or attached.
    await sql`create index location_history_driver_time_idx on location_history (driver_id, recorded_at)`.execute(db);
  },
  async down(db: Kysely<any>) {
    await sql`drop table if exists location_history`.execute(db);
  },
};

/** The location service's migrations, by frozen timestamped name. */
export const migrations: Record<string, Migration> = {
  "20261221T1000_location_history": m20261221T1000_location_history,
};
