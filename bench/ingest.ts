/**
 * GPS ingestion under load: 2,000 concurrent ReportLocations client streams against dabba
 * running as a child process (all services, real Postgres and Redis), one realistic fix per
 * message, each stream sending as fast as the server takes them. Prints one JSON line last.
 *
 *   [DATABASE_URL=postgres://...] [REDIS_URL=redis://...] npm run bench -- ingest
 *
 * Server: `node --import tsx services/main.ts` with SERVICES=all, a fresh database
 * (bench_ingest_<id>, dropped after) and an empty Redis database index (5 or the next empty
 * one, emptied after); the per-driver rate limit is raised (printed) so it does not cap a
 * stream sending as fast as it can; every ping still goes through it.
 * Load (this process): 16 connect-node gRPC transports (16 HTTP/2 connections; grpc-js as a
 * client stalls under this load, grpc-node issues 1539 and 2669), 2,000 streams spread over
 * them, each with its own driver token. A stream's request body is an async generator that
 * makes the next fix only when the transport pulls it, so HTTP/2 flow control paces it: device
 * time = now, position from the simulator (services/location/sim) advanced by real time.
 * BENCH_WARM_SECONDS (default 5) of warm-up, then BENCH_SECONDS (default 20) measured.
 *
 * pings_per_s: fixes handed to the transports in the measured window / its length (the
 * streams' own summaries must then account for every fix sent: accepted == sent, rejected == 0).
 * p99_visible_ms: for 64 sampled drivers, the send time of each measured sequence number;
 * their last-fix hashes (driverFixKey, field seq) are read in one pipeline every ~2 ms (by a worker
 * thread, so the busy load generator does not delay the polls); a fix
 * is visible when the hash shows seq >= its sequence. Includes the time a fix waits in the
 * HTTP/2 flow-control window behind the stream's earlier fixes, and up to one poll interval.
 * rss_mb: the server's largest VmRSS over the run. Baseline in the same run, before the
 * server starts: raw ioredis GEOADD, one member per command, pipelines of 1,000, for 3 s;
 * ratio = pings_per_s / that.
 */
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Redis } from "ioredis";
import { loadavg } from "node:os";
import { Worker } from "node:worker_threads";
import { LocationService, type ReportLocationsResponse } from "../gen/dabba/location/v1/location_service_pb.js";
import { driverFixKey } from "../services/location/keys.js";
import { createFleet } from "../services/location/sim/drivers.js";
import { mintToken } from "../services/platform/auth.js";
import { BENGALURU } from "../services/platform/config.js";
import { uniqueId } from "../test/helpers/backends.js";
import { createRunDatabase } from "../test/helpers/run-database.js";
import { emptyRedisDb, percentile, startChildServer } from "./lib/child-server.js";

const STREAMS = Number(process.env.BENCH_STREAMS ?? 2000);
const CONNECTIONS = Number(process.env.BENCH_CONNECTIONS ?? 16);
const WARM_MS = Number(process.env.BENCH_WARM_SECONDS ?? 5) * 1000;
const MEASURE_MS = Number(process.env.BENCH_SECONDS ?? 20) * 1000;
const SAMPLED = Math.min(64, STREAMS);
const POLL_MS = 2;
const GEOADD_MS = 3000;
const GEOADD_PIPELINE = 1000;
/** Server environment for the run: the rate limit raised far above what one stream reaches. */
const SERVER_LIMITS = {
  LOCATION_MAX_PINGS_PER_SECOND: "100000",
  LOCATION_PING_BURST: "100000",
};

const log = (msg: string) => console.error(`[bench ingest] ${msg}`);
const r1 = (x: number) => Math.round(x * 10) / 10;
const r2 = (x: number) => Math.round(x * 100) / 100;
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export async function run(): Promise<void> {
  const runId = uniqueId();
  const runDb = await createRunDatabase("bench_ingest");
  const redisDb = await emptyRedisDb(process.env.REDIS_URL ?? "redis://127.0.0.1:6379");
  log(`database ${new URL(runDb.url).pathname.slice(1)}, Redis database ${redisDb.db} (${redisDb.url})`);
  let server: Awaited<ReturnType<typeof startChildServer>> | undefined;
  try {
    const geoaddPerS = await geoaddBaseline(redisDb.url);
    log(`baseline: raw pipelined GEOADD (one member per command, pipelines of ${GEOADD_PIPELINE}) for ${GEOADD_MS / 1000} s: ${geoaddPerS}/s`);

    const env = { SERVICES: "all", DATABASE_URL: runDb.url, REDIS_URL: redisDb.url, DEMO_SEED: "false", ...SERVER_LIMITS };
    log(`starting dabba: ${Object.entries(SERVER_LIMITS).map(([k, v]) => `${k}=${v}`).join(" ")} (defaults 5 and 120), SERVICES=all, real Postgres and Redis`);
    server = await startChildServer({ env, log });
    log(`dabba pid ${server.pid}: gRPC port ${server.port}, rss ${r1(server.maxRssMb())} MiB`);

    const auth = { hsSecret: server.jwtSecret, issuer: "dabba", audience: "dabba", devSecret: false };
    const fleet = createFleet({ city: BENGALURU, drivers: STREAMS, seed: 42, startMs: Date.now(), idPrefix: `bench-${runId}-` });
    const tokens = await Promise.all(fleet.drivers.map((d) => mintToken(auth, { role: "driver", sub: d.id }, 3600)));
    const clients: Client<typeof LocationService>[] = Array.from({ length: CONNECTIONS }, () =>
      createClient(LocationService, createGrpcTransport({ baseUrl: `http://127.0.0.1:${server!.port}` })),
    );
    log(`${STREAMS} driver streams over ${CONNECTIONS} HTTP/2 connections; warm-up ${WARM_MS / 1000} s, measured ${MEASURE_MS / 1000} s`);

    // Sampled drivers: sequence numbers and send times of their measured fixes, in send order.
    const every = Math.floor(STREAMS / SAMPLED);
    const samples = Array.from({ length: SAMPLED }, (_, i) => ({ k: i * every, key: driverFixKey(fleet.drivers[i * every]!.id), seqs: [] as number[], sentAt: [] as number[] }));
    const sampleOf = new Map(samples.map((s) => [s.k, s]));

    let sent = 0;
    let measuring = false;
    let stopping = false;
    let windowSent = 0;
    async function* body(k: number) {
      const driver = fleet.drivers[k]!;
      const sample = sampleOf.get(k);
      while (!stopping) {
        const ping = driver.next(Date.now());
        sent++;
        if (measuring) {
          windowSent++;
          if (sample) {
            sample.seqs.push(Number(ping.sequence));
            sample.sentAt.push(performance.timeOrigin + performance.now());
          }
        }
        yield { pings: [ping] };
      }
    }
    const failures: string[] = [];
    const calls = fleet.drivers.map((d, k) =>
      clients[k % CONNECTIONS]!.reportLocations(body(k), { headers: { authorization: `Bearer ${tokens[k]}` } }).catch((err: unknown) => {
        failures.push(`${d.id}: ${err instanceof Error ? err.message : String(err)}`);
        return undefined;
      }),
    );

    // Progress every second.
    let lastSent = 0;
    const t0 = performance.now();
    const progress = setInterval(() => {
      const s = sent;
      log(
        `${((performance.now() - t0) / 1000).toFixed(0)}s ${measuring ? "measuring" : stopping ? "draining" : "warm-up"}: ${s - lastSent} pings/s, ` +
          `server rss ${r1(server!.maxRssMb())} MiB (max), failed streams ${failures.length}, load ${loadavg()[0]!.toFixed(1)}`,
      );
      lastSent = s;
    }, 1000);

    await sleep(WARM_MS);
    // Measured window: the visibility poller (a worker thread with its own event loop) on, counters from here.
    const poller = new Worker(new URL("./lib/visibility-poller.mjs", import.meta.url), {
      workerData: { url: redisDb.url, keys: samples.map((s) => s.key), intervalMs: POLL_MS },
    });
    const observed = new Promise<{ seen: number[][]; polls: number }>((resolve, reject) => {
      poller.once("message", resolve);
      poller.once("error", reject);
    });
    const cpuServer0 = server.cpuMs();
    const cpuLoad0 = process.cpuUsage();
    measuring = true;
    const w0 = performance.now();
    await sleep(MEASURE_MS);
    measuring = false;
    const windowMs = performance.now() - w0;
    const inWindow = windowSent;
    const cpuServer = server.cpuMs() - cpuServer0;
    const cpuLoadU = process.cpuUsage(cpuLoad0);
    const cpuLoad = (cpuLoadU.user + cpuLoadU.system) / 1000;

    // End the streams: each generator returns at its next pull, the client half-closes, the summary comes back.
    stopping = true;
    const d0 = performance.now();
    const results = await Promise.all(calls);
    const drainMs = performance.now() - d0;
    // Every summary is back, so every fix is written: one more poll sees the last ones.
    await sleep(100);
    poller.postMessage("stop");
    const { seen, polls } = await observed;
    clearInterval(progress);

    let accepted = 0n;
    let rejected = 0n;
    const byReason: Record<string, bigint> = {};
    for (const r of results as (ReportLocationsResponse | undefined)[]) {
      if (!r) continue;
      accepted += r.accepted;
      rejected += r.rejected;
      for (const [reason, n] of Object.entries(r.rejectedByReason)) byReason[reason] = (byReason[reason] ?? 0n) + n;
    }
    for (const f of failures.slice(0, 5)) log(`stream failed: ${f}`);
    const verified = failures.length === 0 && accepted === BigInt(sent) && rejected === 0n;
    log(
      `verify: ${sent} pings sent on ${STREAMS} streams, summaries: accepted ${accepted}, rejected ${rejected}` +
        `${rejected > 0n ? ` ${JSON.stringify(Object.fromEntries(Object.entries(byReason).map(([k, v]) => [k, Number(v)])))}` : ""}, ` +
        `failed streams ${failures.length}: ${verified ? "OK" : "MISMATCH"}`,
    );
    // Visible latency: the first observation of seq >= a fix's sequence, minus its send time.
    const latencies: number[] = [];
    let unresolved = 0;
    samples.forEach((sample, i) => {
      const obs = seen[i]!;
      let o = 0;
      for (let j = 0; j < sample.seqs.length; j++) {
        while (o < obs.length && obs[o]! < sample.seqs[j]!) o += 2;
        if (o >= obs.length) {
          unresolved += sample.seqs.length - j;
          break;
        }
        latencies.push(obs[o + 1]! - sample.sentAt[j]!);
      }
    });
    latencies.sort((a, b) => a - b);
    const pingsPerS = Math.round(inWindow / (windowMs / 1000));
    log(
      `measured ${r1(windowMs / 1000)} s: ${inWindow} pings, ${pingsPerS}/s; visible latency of ${latencies.length} sampled fixes (${unresolved} never seen): ` +
        `p50 ${r2(percentile(latencies, 50))} ms, p99 ${r2(percentile(latencies, 99))} ms, max ${r2(latencies[latencies.length - 1] ?? 0)} ms; ${polls} polls`,
    );
    log(
      `CPU per 1,000 pings: server ${r2((cpuServer / inWindow) * 1000)} ms, load generator ${r2((cpuLoad / inWindow) * 1000)} ms; ` +
        `drain after the window ${Math.round(drainMs)} ms; server warnings ${server.warnings()}; load average ${loadavg().map((x) => x.toFixed(1)).join(" ")}`,
    );
    const rss = server.maxRssMb();
    await server.stop();
    server = undefined;
    if (!verified) process.exitCode = 1;
    console.log(
      JSON.stringify({
        bench: "ingest",
        streams: STREAMS,
        pings_per_s: pingsPerS,
        p99_visible_ms: r2(percentile(latencies, 99)),
        rss_mb: Math.round(rss),
        redis_geoadd_pipelined_per_s: geoaddPerS,
        ratio: geoaddPerS > 0 ? Math.round((pingsPerS / geoaddPerS) * 1000) / 1000 : null,
        p50_visible_ms: r2(percentile(latencies, 50)),
        visible_samples: latencies.length,
        connections: CONNECTIONS,
        measured_s: r1(windowMs / 1000),
        sent,
        accepted: Number(accepted),
        rejected: Number(rejected),
        failed_streams: failures.length,
        verified,
        server_cpu_ms_per_1k: r2((cpuServer / inWindow) * 1000),
        loadgen_cpu_ms_per_1k: r2((cpuLoad / inWindow) * 1000),
      }),
    );
  } finally {
    if (server) await server.stop().catch(() => {});
    await redisDb.flush().catch((err: unknown) => log(`could not empty Redis database ${redisDb.db}: ${String(err)}`));
    await runDb.drop().catch((err: unknown) => log(`could not drop the run database: ${String(err)}`));
  }
}

/** Raw ioredis: GEOADD of one member per command, pipelines of GEOADD_PIPELINE, for GEOADD_MS. */
async function geoaddBaseline(url: string): Promise<number> {
  const r = new Redis(url, { maxRetriesPerRequest: 1 });
  const key = "bench:geoadd-baseline";
  try {
    const fleet = createFleet({ city: BENGALURU, drivers: 2000, seed: 1, startMs: 0 });
    const points = fleet.step(1000).map((p) => p.location);
    let n = 0;
    // Short warm-up, then the measured loop.
    const run = async (ms: number) => {
      let count = 0;
      const end = performance.now() + ms;
      while (performance.now() < end) {
        const pipe = r.pipeline();
        for (let i = 0; i < GEOADD_PIPELINE; i++) {
          const m = (n + i) % points.length;
          const p = points[m]!;
          pipe.geoadd(key, p.lng, p.lat, `d${m}`);
        }
        await pipe.exec();
        n += GEOADD_PIPELINE;
        count += GEOADD_PIPELINE;
      }
      return count;
    };
    await run(300);
    const started = performance.now();
    const count = await run(GEOADD_MS);
    return Math.round(count / ((performance.now() - started) / 1000));
  } finally {
    await r.del(key).catch(() => {});
    r.disconnect();
  }
}
