import type { DescService } from "@bufbuild/protobuf";
import { spawn, type ChildProcess } from "node:child_process";
import { createInterface } from "node:readline";
import { createClient, type Client, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { createCatalogStore, type NewRestaurant } from "../../services/catalog/store.js";
import { mintToken, type Role } from "../../services/platform/auth.js";
import { testConfig } from "../../services/platform/config.js";
import { openDb, type Db } from "../../services/platform/db.js";
import { requireReal } from "./backends.js";
import { freePort, killRedis, startRedis } from "./private-redis.js";
import { createRunDatabase } from "./run-database.js";

/**
 * dabba processes (`services/main.ts`, each its own Node process) for dispatch's multi-process
 * tests, on storage of their own: a run database on the shared Postgres and a private
 * redis-server, since main.ts uses Redis keys without a test prefix.
 */

const SECRET = "dispatch-procs-test-secret-dispatch-procs";
export const procAuth = { ...testConfig().auth, hsSecret: SECRET };

export interface Proc {
  child: ChildProcess;
  port: number;
  /** stdout (JSON log lines) and stderr, for a failure's message. */
  logs: string[];
  /** Resolves with how the process ended. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export interface ProcStorage {
  databaseUrl: string;
  redisUrl: string;
  /** The env every process gets: the storage, a test JWT secret, ephemeral ports. */
  env: Record<string, string>;
  /** A handle on the run database for reading the shared tables (open after the first process migrated it). */
  openDb(): Promise<Db>;
  close(): Promise<void>;
}

export async function startProcStorage(prefix: string): Promise<ProcStorage> {
  await requireReal("postgres");
  const run = await createRunDatabase(prefix);
  const port = await freePort();
  const redis = await startRedis(port).catch(async (err) => {
    await run.drop();
    throw err;
  });
  const redisUrl = `redis://127.0.0.1:${port}`;
  const dbs: Db[] = [];
  return {
    databaseUrl: run.url,
    redisUrl,
    env: { DATABASE_URL: run.url, REDIS_URL: redisUrl, JWT_SECRET: SECRET, PORT: "0", WEB_PORT: "0", HOST: "127.0.0.1", DEMO_SEED: "false" },
    async openDb() {
      const db = await openDb({ databaseUrl: run.url, dataDir: "memory://" });
      dbs.push(db);
      return db;
    },
    async close() {
      for (const db of dbs) await db.close().catch(() => {});
      await killRedis(redis);
      await run.drop();
    },
  };
}

/** Starts `services/main.ts` with env and waits for its "listening" log line. */
export async function startProcess(env: Record<string, string>): Promise<Proc> {
  const child = spawn(process.execPath, ["--import", "tsx", "services/main.ts"], {
    env: { ...process.env, LOG_LEVEL: "info", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const logs: string[] = [];
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once("exit", (code, signal) => resolve({ code, signal })),
  );
  child.stderr!.on("data", (d) => logs.push(`stderr: ${String(d)}`));
  const lines = createInterface({ input: child.stdout! });
  lines.on("line", (line) => logs.push(line));
  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`process did not start:\n${logs.join("\n")}`));
    }, 30_000);
    lines.on("line", (line) => {
      try {
        const rec = JSON.parse(line) as { grpc?: number };
        if (rec.grpc) {
          clearTimeout(timer);
          resolve(rec.grpc);
        }
      } catch {
        /* not JSON */
      }
    });
    void exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`process exited (${code ?? signal}) before listening:\n${logs.join("\n")}`));
    });
  });
  return { child, port, logs, exited };
}

/** SIGTERM (drain; SIGKILL if it has not exited after 10 s) or SIGKILL (crash), then waits for the exit. */
export async function stopProcess(p: Proc | undefined, signal: "SIGTERM" | "SIGKILL" = "SIGTERM"): Promise<void> {
  if (!p || p.child.exitCode !== null || p.child.signalCode !== null) return;
  p.child.kill(signal);
  const timer = setTimeout(() => p.child.kill("SIGKILL"), 10_000);
  await p.exited;
  clearTimeout(timer);
}

/** The log records at warn or above (pino levels 40+), as "msg: error", and stderr, for a failure's message. */
export function problems(p: Proc, max = 20): string[] {
  const out: string[] = [];
  for (const l of p.logs) {
    if (l.startsWith("stderr: ")) {
      out.push(l.slice(0, 400));
      continue;
    }
    try {
      const rec = JSON.parse(l) as { level?: number; msg?: string; err?: { message?: string } };
      if ((rec.level ?? 0) >= 40) out.push(`${rec.msg ?? ""}${rec.err?.message ? `: ${rec.err.message}` : ""}`);
    } catch {
      // not a log record
    }
  }
  return out.slice(-max);
}

/**
 * Clients of the processes: one HTTP/2 transport per process, the token of (role, sub) per client.
 * Unary calls time out after 10 s unless told otherwise, so a process that stops answering fails
 * the test rather than hanging it.
 */
export function procClients(ports: () => number[]) {
  const transports = new Map<number, Transport>();
  const transportOf = (port: number) => {
    let t = transports.get(port);
    if (!t) transports.set(port, (t = createGrpcTransport({ baseUrl: `http://127.0.0.1:${port}` })));
    return t;
  };
  return async function client<T extends DescService>(desc: T, at: number, role: Role, sub: string, restaurantId?: string): Promise<Client<T>> {
    const ps = ports();
    const t = transportOf(ps[at % ps.length]!);
    const header = `Bearer ${await mintToken(procAuth, { role, sub, restaurantId })}`;
    const withToken: Transport = {
      unary: (m, s, to, h, i, cv) => {
        const hh = new Headers(h);
        hh.set("authorization", header);
        return t.unary(m, s, to ?? 10_000, hh, i, cv);
      },
      stream: (m, s, to, h, i, cv) => {
        const hh = new Headers(h);
        hh.set("authorization", header);
        return t.stream(m, s, to, hh, i, cv);
      },
    };
    return createClient(desc, withToken);
  };
}

/** Inserts restaurants into the run database (the catalog's tables exist once a process started). */
export async function seedRestaurants(storage: ProcStorage, restaurants: NewRestaurant[]): Promise<void> {
  const db = await openDb({ databaseUrl: storage.databaseUrl, dataDir: "memory://" });
  try {
    await createCatalogStore(db).insertRestaurants(restaurants);
  } finally {
    await db.close();
  }
}
