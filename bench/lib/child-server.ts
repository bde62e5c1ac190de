/**
 * Shared by the ingest and tracking benchmarks: dabba as a child process (`node --import tsx
 * services/main.ts`, as `npm start` runs it), its resident memory and CPU from /proc, a free
 * Redis database index, free ports. Not a benchmark itself (bench/run.ts only lists bench/*.ts).
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { Redis } from "ioredis";

/** The node flags of `npm start` (package.json), so the benchmarked server runs as deployed. */
const START_NODE_FLAGS = ["--max-semi-space-size=64"];

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, "127.0.0.1");
    s.once("connect", () => {
      s.destroy();
      resolve(true);
    });
    s.once("error", () => resolve(false));
  });
}

/** Resident set size of a process in MiB (VmRSS), or undefined when it is gone. */
export function rssMb(pid: number): number | undefined {
  try {
    const m = /VmRSS:\s+(\d+)\s+kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return m ? Number(m[1]) / 1024 : undefined;
  } catch {
    return undefined;
  }
}

/** CPU time (user + system) of a process in ms, from /proc/<pid>/stat (clock ticks of 10 ms). */
export function cpuMs(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return (Number(f[11]) + Number(f[12])) * 10;
  } catch {
    return undefined;
  }
}

/** The server's memory in MiB: process.memoryUsage() and V8's heap statistics. */
export interface HeapStats {
  rss: number;
  /** V8 heap: reserved, used (live plus garbage not collected yet, unless collected first), the old space's share. */
  heapTotal: number;
  heapUsed: number;
  oldSpaceUsed: number;
  /** C++ memory bound to JS objects (Buffers, HTTP/2), ArrayBuffers (Buffers included), malloc'd by V8. */
  external: number;
  arrayBuffers: number;
  malloced: number;
  /** Whether garbage was collected first (BENCH_SERVER_HEAP_GC=1). */
  collected: boolean;
}

export function formatHeap(h: HeapStats | undefined): string {
  if (!h) return "heap: no answer";
  return `rss ${h.rss}, V8 heap ${h.heapUsed} used${h.collected ? " (live)" : ""} of ${h.heapTotal} (old space ${h.oldSpaceUsed}), external ${h.external} (array buffers ${h.arrayBuffers}), V8 malloc ${h.malloced} MiB`;
}

const HEAP_LINE = "DABBA_BENCH_HEAP ";
/**
 * Preloaded into the server (measurement only): on SIGWINCH it writes one line with its memory
 * figures to stderr, after a full collection when started with --expose-gc.
 */
const HEAP_PROBE =
  "data:text/javascript," +
  encodeURIComponent(`import v8 from "node:v8";
process.on("SIGWINCH", () => {
  const collected = typeof globalThis.gc === "function";
  if (collected) globalThis.gc();
  const m = process.memoryUsage(), h = v8.getHeapStatistics(), mb = (x) => Math.round((x / 1048576) * 10) / 10;
  const old = v8.getHeapSpaceStatistics().find((s) => s.space_name === "old_space");
  const out = { rss: mb(m.rss), heapTotal: mb(m.heapTotal), heapUsed: mb(m.heapUsed), oldSpaceUsed: mb(old ? old.space_used_size : 0), external: mb(m.external), arrayBuffers: mb(m.arrayBuffers), malloced: mb(h.malloced_memory), collected };
  process.stderr.write(${JSON.stringify(HEAP_LINE)} + JSON.stringify(out) + "\\n");
});`);

export interface ChildServer {
  pid: number;
  /** Native gRPC port (grpc-js). */
  port: number;
  webPort: number;
  /** The JWT secret the server verifies tokens with (for minting). */
  jwtSecret: string;
  /** Largest VmRSS seen so far, MiB (sampled every 200 ms). */
  maxRssMb(): number;
  /** Server CPU time so far, ms. */
  cpuMs(): number;
  /** Warnings and errors the server logged (the first few are shown on stderr). */
  warnings(): number;
  /** The server's memory as it sees it now (undefined when it did not answer within 10 s). */
  heapStats(): Promise<HeapStats | undefined>;
  /** SIGTERM (drain), SIGKILL after 20 s; removes the data folder. */
  stop(): Promise<void>;
}

/**
 * Starts dabba with the given environment (plus PORT, WEB_PORT, JWT_SECRET, a temporary
 * DABBA_DATA_DIR) and resolves when both its ports accept connections.
 */
export async function startChildServer(opts: {
  env: Record<string, string>;
  log: (msg: string) => void;
  startTimeoutMs?: number;
  /** The JWT secret to use (another server's, when services are split over processes); random when unset. */
  jwtSecret?: string;
}): Promise<ChildServer> {
  const [port, webPort] = [await freePort(), await freePort()];
  const jwtSecret = opts.jwtSecret ?? randomBytes(32).toString("base64url");
  const dataDir = await mkdtemp(path.join(tmpdir(), "dabba-bench-"));
  const env: Record<string, string> = {
    ...(process.env as Record<string, string>),
    // warn: a production-like log level without a line per call (readiness is a TCP connect).
    LOG_LEVEL: "warn",
    ...opts.env,
    PORT: String(port),
    WEB_PORT: String(webPort),
    HOST: "127.0.0.1",
    JWT_SECRET: jwtSecret,
    DABBA_DATA_DIR: dataDir,
  };
  // BENCH_SERVER_CPU_PROF=<dir>: a V8 CPU profile of the server, written when it exits.
  const prof = process.env.BENCH_SERVER_CPU_PROF ? ["--cpu-prof", `--cpu-prof-dir=${process.env.BENCH_SERVER_CPU_PROF}`] : [];
  // BENCH_SERVER_HEAP_GC=1: heapStats() collects garbage first (--expose-gc), so heapUsed is the live heap.
  const gcFlag = process.env.BENCH_SERVER_HEAP_GC === "1" ? ["--expose-gc"] : [];
  const child: ChildProcess = spawn(process.execPath, [...prof, ...START_NODE_FLAGS, ...gcFlag, "--import", HEAP_PROBE, "--import", "tsx", "services/main.ts"], {
    cwd: repoRoot,
    env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  const pid = child.pid!;
  let maxRss = 0;
  const sampler = setInterval(() => {
    const r = rssMb(pid);
    if (r !== undefined && r > maxRss) maxRss = r;
  }, 200);
  let warnings = 0;
  let exited = false;
  const heapWaiters: ((h: HeapStats | undefined) => void)[] = [];
  const exit = new Promise<number | null>((resolve) =>
    child.once("exit", (code) => {
      exited = true;
      clearInterval(sampler);
      resolve(code);
    }),
  );
  const ready = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("dabba did not start within the timeout")), opts.startTimeoutMs ?? 120_000);
    void exit.then((code) => {
      clearTimeout(timer);
      reject(new Error(`dabba exited with code ${code} before listening`));
    });
    createInterface({ input: child.stdout! }).on("line", (line) => {
      let rec: { level?: number; msg?: string } = {};
      try {
        rec = JSON.parse(line);
      } catch {
        opts.log(`server: ${line}`);
        return;
      }
      if ((rec.level ?? 0) >= 40) {
        warnings++;
        if (warnings <= 5) opts.log(`server: ${line.length > 400 ? `${line.slice(0, 400)}...` : line}`);
        else if (warnings === 6) opts.log("server: more warnings are counted, not shown");
      }
    });
    createInterface({ input: child.stderr! }).on("line", (line) => {
      if (line.startsWith(HEAP_LINE)) {
        heapWaiters.shift()?.(JSON.parse(line.slice(HEAP_LINE.length)) as HeapStats);
        return;
      }
      opts.log(`server stderr: ${line}`);
    });
    // Both listeners accept connections once every service has started.
    const poll = async () => {
      while (!exited) {
        if ((await canConnect(port)) && (await canConnect(webPort))) {
          clearTimeout(timer);
          resolve();
          return;
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    };
    void poll();
  });
  try {
    await ready;
  } catch (err) {
    if (!exited) child.kill("SIGKILL");
    await rm(dataDir, { recursive: true, force: true });
    throw err;
  }
  return {
    pid,
    port,
    webPort,
    jwtSecret,
    maxRssMb: () => {
      const r = rssMb(pid);
      if (r !== undefined && r > maxRss) maxRss = r;
      return maxRss;
    },
    cpuMs: () => cpuMs(pid) ?? 0,
    warnings: () => warnings,
    heapStats() {
      if (exited) return Promise.resolve(undefined);
      return new Promise<HeapStats | undefined>((resolve) => {
        const done = (h: HeapStats | undefined) => {
          clearTimeout(timer);
          resolve(h);
        };
        const timer = setTimeout(() => {
          const i = heapWaiters.indexOf(done);
          if (i >= 0) heapWaiters.splice(i, 1);
          resolve(undefined);
        }, 10_000);
        heapWaiters.push(done);
        child.kill("SIGWINCH");
      });
    },
    async stop() {
      if (!exited) {
        child.kill("SIGTERM");
        const killer = setTimeout(() => child.kill("SIGKILL"), 20_000);
        await exit;
        clearTimeout(killer);
      }
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}

/**
 * A Redis database index (from `from` up) that holds no keys, so the run can empty it afterwards
 * without touching anyone else's data. Pub/sub channels are server-wide in Redis; the benchmark's
 * channel names carry its own order and driver ids.
 */
export async function emptyRedisDb(baseUrl: string, from = 5): Promise<{ url: string; db: number; flush(): Promise<void> }> {
  for (let db = from; db < 16; db++) {
    const u = new URL(baseUrl);
    u.pathname = `/${db}`;
    const r = new Redis(u.toString(), { lazyConnect: true, maxRetriesPerRequest: 1 });
    await r.connect();
    try {
      if ((await r.dbsize()) === 0) {
        return {
          url: u.toString(),
          db,
          async flush() {
            const c = new Redis(u.toString(), { lazyConnect: true, maxRetriesPerRequest: 1 });
            await c.connect();
            try {
              await c.flushdb();
            } finally {
              c.disconnect();
            }
          },
        };
      }
    } finally {
      r.disconnect();
    }
  }
  throw new Error(`no empty Redis database from index ${from} to 15 at ${baseUrl}`);
}

export function percentile(sorted: ArrayLike<number>, p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}
