/**
 * Streams simulated drivers to a running dabba over ReportLocations (connect-node's gRPC transport).
 *
 *   npm run simulate -- --addr 127.0.0.1:8080 --drivers 50 --seconds 60 --interval-ms 1000 [--bad-ratio 0.05] [--city bengaluru] [--seed 1]
 *
 * Each driver gets its own token (role driver, subject sim-<seed>-<n>) minted with the configured
 * secret (JWT_SECRET, or the development secret in DABBA_DATA_DIR, as `npm run token` finds it),
 * and one client stream that sends one fix every --interval-ms. With --bad-ratio, that share of
 * the fixes is replaced by bad ones (teleports, stale, future, out of order, NaN, ...); the summary
 * compares the server's rejections by reason with what was sent.
 */
import { parseArgs } from "node:util";
import { createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import cliProgress from "cli-progress";
import { LocationService, type ReportLocationsResponse } from "../../gen/dabba/location/v1/location_service_pb.js";
import { mixBadPings, type BadPingInit } from "../location/sim/bad-pings.js";
import { createFleet } from "../location/sim/drivers.js";
import { mintToken } from "../platform/auth.js";
import { loadConfig } from "../platform/config.js";

const USAGE =
  "usage: npm run simulate -- [--addr 127.0.0.1:8080] [--drivers 50] [--seconds 60] [--interval-ms 1000] [--bad-ratio 0] [--city bengaluru] [--seed 1] [--drivers-per-connection 100]";

function num(name: string, raw: string | undefined, min: number, max: number, integer = true): number {
  const v = Number(raw);
  if (raw === undefined || !Number.isFinite(v) || v < min || v > max || (integer && !Number.isInteger(v))) {
    throw new UsageError(`--${name} must be ${integer ? "an integer" : "a number"} from ${min} to ${max}, got "${raw}"`);
  }
  return v;
}
class UsageError extends Error {}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, Math.max(0, ms)));

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      addr: { type: "string", default: "127.0.0.1:8080" },
      drivers: { type: "string", default: "50" },
      seconds: { type: "string", default: "60" },
      "interval-ms": { type: "string", default: "1000" },
      "bad-ratio": { type: "string", default: "0" },
      city: { type: "string" },
      seed: { type: "string", default: "1" },
      "drivers-per-connection": { type: "string", default: "100" },
      help: { type: "boolean", short: "h", default: false },
    },
  });
  if (values.help) {
    console.log(USAGE);
    return;
  }
  const drivers = num("drivers", values.drivers, 1, 100_000);
  const seconds = num("seconds", values.seconds, 1, 86_400, false);
  const intervalMs = num("interval-ms", values["interval-ms"], 10, 600_000);
  const badRatio = num("bad-ratio", values["bad-ratio"], 0, 1, false);
  const seed = num("seed", values.seed, 0, 2 ** 31 - 1);
  const perConnection = num("drivers-per-connection", values["drivers-per-connection"], 1, 10_000);
  if (!/^[^/\s]+:\d+$/.test(values.addr!)) throw new UsageError(`--addr must be host:port, got "${values.addr}"`);

  const config = loadConfig({ ...process.env, SERVICES: "all" });
  if (!config.auth.hsSecret) throw new UsageError("minting driver tokens needs JWT_SECRET (HS256) or the development secret");
  const cityName = values.city ?? config.location.cities[0]!.name;
  const city = config.location.cities.find((c) => c.name === cityName);
  if (!city) throw new UsageError(`--city "${cityName}" is not configured (configured: ${config.location.cities.map((c) => c.name).join(", ")})`);

  const fleet = createFleet({ city, drivers, seed, startMs: Date.now() });
  const tokens = await Promise.all(fleet.drivers.map((d) => mintToken(config.auth, { role: "driver", sub: d.id }, Math.ceil(seconds) + 3600)));
  const connections = Math.ceil(drivers / perConnection);
  const clients: Client<typeof LocationService>[] = Array.from({ length: connections }, () =>
    createClient(LocationService, createGrpcTransport({ baseUrl: `http://${values.addr}` })),
  );
  console.log(
    `simulating ${drivers} drivers in ${city.name} for ${seconds}s, one fix every ${intervalMs} ms each` +
      `${badRatio > 0 ? `, ${Math.round(badRatio * 100)}% bad` : ""}, to ${values.addr} over ${connections} HTTP/2 connection(s)` +
      `${config.auth.devSecret ? " (tokens signed with the development secret)" : ""}`,
  );

  const expected = new Map<string, number>();
  let sent = 0;
  let good = 0;
  const started = Date.now();
  const endAt = started + seconds * 1000;
  const total = drivers * Math.floor((seconds * 1000) / intervalMs);
  const bar = new cliProgress.SingleBar(
    { format: "streaming [{bar}] {percentage}% | {value}/{total} fixes | {duration}s | failed streams: {failed}", hideCursor: true },
    cliProgress.Presets.shades_classic,
  );
  bar.start(total, 0, { failed: 0 });
  const failures: string[] = [];
  const ticker = setInterval(() => bar.update(sent, { failed: failures.length }), 250);

  const results = await Promise.all(
    fleet.drivers.map(async (driver, k): Promise<ReportLocationsResponse | undefined> => {
      const mixer = mixBadPings(driver, { ratio: badRatio, seed: seed * 7919 + k, cfg: config.location });
      // Drivers' phones are not in lock-step: each starts at its own phase within the interval.
      const phase = (k / drivers) * intervalMs;
      async function* body() {
        for (let i = 0; ; i++) {
          const at = started + phase + i * intervalMs;
          if (at >= endAt) return;
          await sleep(at - Date.now());
          const m = mixer.next(Date.now());
          sent++;
          if (m.good) good++;
          else expected.set(m.reason, (expected.get(m.reason) ?? 0) + 1);
          yield { pings: [m.ping as BadPingInit] };
        }
      }
      try {
        return await clients[k % connections]!.reportLocations(body(), { headers: { authorization: `Bearer ${tokens[k]}` } });
      } catch (err) {
        failures.push(`${driver.id}: ${err instanceof Error ? err.message : String(err)}`);
        return undefined;
      }
    }),
  );
  clearInterval(ticker);
  bar.update(sent, { failed: failures.length });
  bar.stop();

  let accepted = 0n;
  let rejected = 0n;
  const byReason = new Map<string, bigint>();
  for (const r of results) {
    if (!r) continue;
    accepted += r.accepted;
    rejected += r.rejected;
    for (const [reason, n] of Object.entries(r.rejectedByReason)) byReason.set(reason, (byReason.get(reason) ?? 0n) + n);
  }
  const elapsed = (Date.now() - started) / 1000;
  console.log(`\nsent ${sent} fixes in ${elapsed.toFixed(1)}s (${Math.round(sent / elapsed)}/s): ${good} good, ${sent - good} bad`);
  console.log(`server: accepted ${accepted}, rejected ${rejected}`);
  const reasons = [...new Set([...byReason.keys(), ...expected.keys()])].sort();
  let mismatch = false;
  if (reasons.length > 0) {
    console.log("  reason                  rejected  sent as bad");
    for (const reason of reasons) {
      const got = byReason.get(reason) ?? 0n;
      const want = BigInt(expected.get(reason) ?? 0);
      if (got !== want) mismatch = true;
      console.log(`  ${reason.padEnd(22)} ${String(got).padStart(9)}  ${String(want).padStart(11)}${got === want ? "" : "  <- differs"}`);
    }
  }
  if (failures.length > 0) {
    console.log(`${failures.length} stream(s) failed:`);
    for (const f of failures.slice(0, 10)) console.log(`  ${f}`);
  }
  const counted = failures.length === 0 && accepted === BigInt(good);
  if (!counted) console.log(`the server accepted ${accepted} of ${good} good fixes${failures.length ? " (failed streams are not counted)" : ""}`);
  if (failures.length > 0 || mismatch || !counted) process.exitCode = 1;
}

main().catch((err) => {
  if (err instanceof UsageError) {
    console.error(`${err.message}\n${USAGE}`);
    process.exit(2);
  }
  console.error(`simulate failed: ${err instanceof Error ? err.message : String(err)}`);
  process.exit(1);
});
