import { mkdir } from "node:fs/promises";
import path from "node:path";
import { PGlite } from "@electric-sql/pglite";
import { cube } from "@electric-sql/pglite/contrib/cube";
import { earthdistance } from "@electric-sql/pglite/contrib/earthdistance";
import { pg_trgm } from "@electric-sql/pglite/contrib/pg_trgm";
import { btree_gist } from "@electric-sql/pglite/contrib/btree_gist";
import { CompiledQuery, Kysely, Migrator, PostgresDialect, type Migration } from "kysely";
import pg from "pg";
import type { Logger } from "./logger.js";
import { PGliteDialect } from "./pglite-dialect.js";

/**
 * A service's database handle. One Db per process; every service uses it with its own tables
 * and its own migration table.
 *
 * Value mapping (same on Postgres and PGlite):
 * - int8/bigint/bigserial: a JS number when within Number.MAX_SAFE_INTEGER, a bigint beyond
 *   (PGlite's own rule; pg is configured to match). Counts and ids fit in a number in practice.
 * - numeric: string (exact). timestamptz: Date. bytea: Uint8Array (a Buffer on Postgres).
 *
 * PGlite caveat (0.5.16): pg_trgm's operators (`%`, `<->`) intermittently returned an empty
 * result and then hung the instance in our tests; the functions (similarity, word_similarity)
 * and earthdistance's functions were reliable. Prefer the functions in shared SQL.
 */
export type Db = {
  kysely: Kysely<any>;
  kind: "postgres" | "pglite";
  /** Runs the service's pending migrations (own migration and lock tables); throws naming the failing one. */
  migrate(service: string, migrations: Record<string, Migration>): Promise<void>;
  /**
   * Runs one hot, fixed-text statement outside any transaction. On Postgres it is a named
   * prepared statement, so each pooled connection parses and plans it once rather than per call
   * (for the placement CTE that is most of its server time); on PGlite a plain query. `name`
   * must be unique per SQL text in the process: pg refuses a name reused for another text.
   */
  prepared<R>(name: string, query: Pick<CompiledQuery, "sql" | "parameters">): Promise<R[]>;
  /**
   * Runs SQL text for a library that brings its own statements (pg-boss's `db.executeSql`).
   * Without values the text may hold several statements (pg-boss's migrations); on PGlite that
   * runs as a script under the connection mutex.
   */
  executeSql<R = any>(text: string, values?: unknown[]): Promise<{ rows: R[] }>;
  close(): Promise<void>;
};

export interface OpenDbOptions {
  /** Postgres URL; undefined opens embedded PGlite. */
  databaseUrl?: string;
  /** Data folder; PGlite keeps its files in `<dataDir>/pgdata`. `memory://` keeps everything in memory. */
  dataDir: string;
  /** Postgres pool size (default 10). */
  poolSize?: number;
  logger?: Logger;
}

const INT8_OID = 20;

/** int8 as number when safe, bigint otherwise: the same rule PGlite applies. */
function parseInt8(value: string): number | bigint {
  const n = Number(value);
  return Number.isSafeInteger(n) ? n : BigInt(value);
}

const pgTypes = {
  getTypeParser(oid: number, format?: "text" | "binary") {
    if (oid === INT8_OID && format !== "binary") return parseInt8;
    return (pg.types.getTypeParser as (oid: number, format?: string) => unknown)(oid, format);
  },
};

/** Opens Postgres (databaseUrl) or embedded PGlite with pg_trgm, cube, earthdistance and btree_gist available. */
export async function openDb(opts: OpenDbOptions): Promise<Db> {
  const logger = opts.logger?.child({ component: "db" });
  let kysely: Kysely<any>;
  let kind: Db["kind"];
  let prepared: Db["prepared"];
  let executeSql: Db["executeSql"];

  if (opts.databaseUrl) {
    const pool = new pg.Pool({
      connectionString: opts.databaseUrl,
      max: opts.poolSize ?? 10,
      // Per-pool parsers rather than pg.types.setTypeParser, which is process global.
      types: pgTypes as any,
    });
    // An idle client losing its connection emits on the pool; without a listener it crashes the process.
    pool.on("error", (err) => logger?.error({ err }, "postgres idle client error"));
    try {
      const client = await pool.connect();
      client.release();
    } catch (err) {
      await pool.end().catch(() => {});
      throw new Error(`cannot connect to Postgres at ${redactUrl(opts.databaseUrl)}: ${(err as Error).message}`, { cause: err });
    }
    kysely = new Kysely<any>({ dialect: new PostgresDialect({ pool }) });
    kind = "postgres";
    prepared = async <R>(name: string, q: Pick<CompiledQuery, "sql" | "parameters">) =>
      (await pool.query({ name, text: q.sql, values: q.parameters as unknown[] })).rows as R[];
    executeSql = async (text, values) => ({ rows: (await pool.query(text, values)).rows });
  } else {
    let dataDir = opts.dataDir;
    if (!dataDir.startsWith("memory://")) {
      dataDir = path.join(dataDir, "pgdata");
      await mkdir(dataDir, { recursive: true });
    }
    const pglite = await PGlite.create({ dataDir, extensions: { pg_trgm, cube, earthdistance, btree_gist } });
    kysely = new Kysely<any>({ dialect: new PGliteDialect(pglite) });
    kind = "pglite";
    // Through Kysely, so the dialect's mutex keeps it out of a running transaction.
    prepared = async <R>(_name: string, q: Pick<CompiledQuery, "sql" | "parameters">) =>
      (await kysely.executeQuery<R>(CompiledQuery.raw(q.sql, [...q.parameters]))).rows;
    const k = kysely;
    executeSql = async (text, values) => {
      if (values && values.length > 0) return { rows: (await k.executeQuery<any>(CompiledQuery.raw(text, values))).rows };
      // A script (several statements) needs the simple protocol: exec, holding the connection.
      const results = await k.connection().execute(() => pglite.exec(text));
      return { rows: (results[results.length - 1]?.rows ?? []) as any[] };
    };
    logger?.info({ dataDir }, "embedded PGlite opened");
  }

  let closed = false;
  return {
    kysely,
    kind,
    prepared,
    executeSql,
    async migrate(service, migrations) {
      const migrator = new Migrator({
        db: kysely,
        provider: { getMigrations: async () => migrations },
        migrationTableName: `kysely_migration_${service}`,
        migrationLockTableName: `kysely_migration_lock_${service}`,
      });
      const { error, results } = await migrator.migrateToLatest();
      for (const r of results ?? []) {
        if (r.status === "Success") logger?.info({ service, migration: r.migrationName }, "migration applied");
      }
      if (error) {
        const failed = results?.find((r) => r.status === "Error")?.migrationName;
        const msg = error instanceof Error ? error.message : String(error);
        throw new Error(
          failed ? `migration ${service}/${failed} failed: ${msg}` : `migrations of ${service} failed: ${msg}`,
          { cause: error },
        );
      }
    },
    async close() {
      if (closed) return;
      closed = true;
      await kysely.destroy();
    },
  };
}

function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = "***";
    return u.toString();
  } catch {
    return "<invalid url>";
  }
}
