// Worker thread of the ingest benchmark (plain JS: worker threads do not get tsx's loader).
// Reads the `seq` field of the sampled drivers' last-fix hashes in one Redis pipeline every
// intervalMs, on its own event loop so a busy load generator does not delay the polls, and
// records for each driver every change: [seq, absolute time in ms]. The main thread matches
// its send times against these observations.
import { parentPort, workerData } from "node:worker_threads";
import { Redis } from "ioredis";

const { url, keys, intervalMs } = workerData;
const redis = new Redis(url, { maxRetriesPerRequest: 1 });
redis.defineCommand("readSeqs", {
  lua: "local out = {} for i, k in ipairs(KEYS) do out[i] = redis.call('HGET', k, 'seq') or '' end return out",
});
const seen = keys.map(() => []);
const last = keys.map(() => -1);
let running = true;
let polls = 0;
parentPort.on("message", (m) => {
  if (m === "stop") running = false;
});
const now = () => performance.timeOrigin + performance.now();
while (running) {
  const started = performance.now();
  // One command per poll (a script reading every sampled hash), not one per key: the poller
  // shares the machine with the load generator and the server, so it must stay cheap.
  const res = await redis.readSeqs(keys.length, ...keys);
  const t = now();
  polls++;
  for (let i = 0; i < keys.length; i++) {
    const v = res[i];
    if (typeof v !== "string" || v === "") continue;
    const seq = Number(v);
    if (seq > last[i]) {
      last[i] = seq;
      seen[i].push(seq, t);
    }
  }
  const wait = intervalMs - (performance.now() - started);
  await new Promise((r) => setTimeout(r, wait > 0 ? wait : 0));
}
redis.disconnect();
parentPort.postMessage({ seen, polls });
