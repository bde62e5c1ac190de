import { createConnection } from "node:net";
import { randomBytes } from "node:crypto";
import type { Context } from "mocha";
import { Redis } from "ioredis";
import pg from "pg";

/** Which real backends the tests use, and what to do when one is unreachable. */

export function postgresUrl(): string {
  return process.env.DATABASE_URL ?? "postgres://postgres@127.0.0.1:5432/test";
}

export function redisUrl(): string {
  return process.env.REDIS_URL ?? "redis://127.0.0.1:6379";
}

/** Deletes a test's keys (everything under its key prefix) from the real Redis. */
export async function dropRedisPrefix(prefix: string): Promise<void> {
  const c = new Redis(redisUrl());
  try {
    const keys = await c.keys(`${prefix}*`);
    if (keys.length) await c.del(...keys);
  } finally {
    await c.quit();
  }
}

/** A unique, identifier-safe suffix for tables, schemas, key prefixes of one test run. */
export function uniqueId(): string {
  return `${Date.now().toString(36)}${randomBytes(4).toString("hex")}`;
}

const reachable = new Map<string, Promise<string | undefined>>();

async function probePostgres(): Promise<string | undefined> {
  const client = new pg.Client({ connectionString: postgresUrl(), connectionTimeoutMillis: 2000 });
  try {
    await client.connect();
    await client.query("select 1");
    return undefined;
  } catch (err) {
    return (err as Error).message;
  } finally {
    await client.end().catch(() => {});
  }
}

function probeRedis(): Promise<string | undefined> {
  const u = new URL(redisUrl());
  return new Promise((resolve) => {
    const sock = createConnection({ host: u.hostname, port: Number(u.port || 6379) });
    const done = (msg?: string) => {
      clearTimeout(timer);
      sock.destroy();
      resolve(msg);
    };
    const timer = setTimeout(() => done("timeout"), 2000);
    sock.once("error", (err) => done(err.message));
    sock.once("connect", () => sock.write("PING\r\n"));
    sock.once("data", (d) => done(d.toString().startsWith("+PONG") || d.toString().startsWith("-NOAUTH") ? undefined : `unexpected reply ${d}`));
  });
}

/**
 * Call in a `before` hook of a suite that needs a real backend. Unreachable: fails when
 * CI=true, otherwise skips the suite with a message saying why.
 */
export async function requireReal(kind: "postgres" | "redis", ctx?: Context): Promise<void> {
  let p = reachable.get(kind);
  if (!p) {
    p = kind === "postgres" ? probePostgres() : probeRedis();
    reachable.set(kind, p);
  }
  const problem = await p;
  if (problem === undefined) return;
  const where = kind === "postgres" ? postgresUrl() : redisUrl();
  const msg = `${kind} at ${where} is unreachable (${problem})`;
  if (process.env.CI === "true") throw new Error(`${msg}; CI requires every real backend`);
  console.warn(`  skipping ${kind} tests: ${msg}`);
  if (ctx) ctx.skip();
  else throw new Error(msg);
}
