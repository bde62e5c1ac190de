import pg from "pg";
import { postgresUrl, uniqueId } from "./backends.js";

/**
 * A Postgres database of one test run: its tables, migration state and rows are invisible to
 * other suites sharing the server. Returns its URL and a drop function.
 */
export async function createRunDatabase(prefix: string): Promise<{ url: string; drop(): Promise<void> }> {
  const name = `${prefix}_${uniqueId()}`;
  await withAdmin((c) => c.query(`create database ${name}`));
  const u = new URL(postgresUrl());
  u.pathname = `/${name}`;
  return { url: u.toString(), drop: () => withAdmin((c) => c.query(`drop database if exists ${name} with (force)`)).then(() => {}) };
}

async function withAdmin<T>(f: (c: pg.Client) => Promise<T>): Promise<T> {
  const c = new pg.Client({ connectionString: postgresUrl() });
  await c.connect();
  try {
    return await f(c);
  } finally {
    await c.end();
  }
}
