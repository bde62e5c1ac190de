import { randomUUID } from "node:crypto";
import { Redis } from "ioredis";
import type { Logger } from "./logger.js";
import type {
  BatchOp,
  Channels,
  EventLog,
  EventLogEntry,
  GeoHit,
  GeoIndex,
  GeoItem,
  Kv,
  RateLimiter,
  RateLimitResult,
  RedisPorts,
  StreamEntry,
  StreamGroupInfo,
} from "./redis.js";

/**
 * The Redis ports over ioredis.
 *
 * Connections: one for commands, one subscriber (created on first subscribe, shared by every
 * channel of the process), and one per blocking stream reader (stream, group, consumer) so a
 * blocked XREADGROUP never delays other commands.
 *
 * Stream entries are hashes with fields type, key, eventId (UTF-8) and data (raw bytes): we
 * send Buffers and read with the *Buffer command variants, so binary data round-trips
 * without base64.
 *
 * Prefixing is done here, not with ioredis' keyPrefix, because that option does not apply to
 * pub/sub channels and stream keys inside XREADGROUP are easy to get wrong.
 */
export async function openRealRedis(opts: { redisUrl: string; logger?: Logger; keyPrefix: string }): Promise<RedisPorts> {
  const logger = opts.logger?.child({ component: "redis" });
  // Outages (a Redis restart): commands wait in the offline queue while ioredis reconnects with
  // a backoff of 50 ms growing to 2 s, and fail after maxRetriesPerRequest reconnect attempts
  // (about 10 s), so nothing waits, or sits queued, longer than that; callers with their own
  // backpressure (the location tick writer keeps one batch in flight) keep the queue small.
  // Commands sent but unanswered when the connection dropped are resent after the reconnect.
  // The duplicated connections (subscriber, stream readers) inherit these options.
  const main = new Redis(opts.redisUrl, {
    lazyConnect: true,
    connectionName: connName(opts.keyPrefix, "cmd"),
    enableOfflineQueue: true,
    maxRetriesPerRequest: 20,
    retryStrategy: (times) => Math.min(times * 50, 2000),
    autoResendUnfulfilledCommands: true,
  });
  main.on("error", (err) => logger?.warn({ err }, "redis connection error"));
  try {
    await main.connect();
  } catch (err) {
    main.disconnect();
    throw new Error(`cannot connect to Redis at ${redactUrl(opts.redisUrl)}: ${(err as Error).message}`, { cause: err });
  }
  main.defineCommand("dabbaRateHit", { numberOfKeys: 1, lua: RATE_HIT_LUA });
  main.defineCommand("dabbaCompareAndDelete", { numberOfKeys: 1, lua: COMPARE_AND_DELETE_LUA });
  main.defineCommand("dabbaCompareAndSwap", { numberOfKeys: 1, lua: COMPARE_AND_SWAP_LUA });
  main.defineCommand("dabbaBatch", { lua: BATCH_LUA });

  const p = opts.keyPrefix;
  const eventLog = new RealEventLog(main, p, logger);
  const channels = new RealChannels(main, p, logger);
  return {
    kind: "redis",
    eventLog,
    channels,
    rateLimiter: new RealRateLimiter(main, p),
    geo: new RealGeo(main, p),
    kv: new RealKv(main, p),
    async batch(ops) {
      const calls = batchCalls(ops, p);
      // One array argument per call (ioredis flattens it): spreading ~10^5 arguments overflows the stack.
      const argv = (c: BatchCall) => (c.keys as (string | Buffer)[]).concat(c.args);
      if (calls.length === 0) return;
      if (calls.length === 1) {
        await (main as Scripted).dabbaBatch(calls[0]!.keys.length, argv(calls[0]!));
        return;
      }
      const pl = main.pipeline() as unknown as Scripted & { exec(): Promise<[Error | null, unknown][] | null> };
      for (const c of calls) void pl.dabbaBatch(c.keys.length, argv(c));
      const failed = ((await pl.exec()) ?? []).find(([err]) => err);
      if (failed) throw failed[0];
    },
    async hgetallMany(keys) {
      if (keys.length === 0) return [];
      const pl = main.pipeline();
      for (const k of keys) pl.hgetall(p + k);
      const results = (await pl.exec()) ?? [];
      return results.map(([err, v]) => {
        if (err) throw err;
        return (v ?? {}) as Record<string, string>;
      });
    },
    async close() {
      await eventLog.close();
      await channels.close();
      await main.quit().catch(() => main.disconnect());
    },
  };
}

/** CLIENT SETNAME value for this process's connections (no spaces allowed). */
export function connName(keyPrefix: string, role: string): string {
  return `dabba-${role}-${keyPrefix.replace(/[^A-Za-z0-9_.:-]/g, "_")}`;
}

// ---------------------------------------------------------------- event log

type RawEntry = [Buffer, Buffer[] | null];

function toBuffer(data: Uint8Array): Buffer {
  return Buffer.from(data.buffer, data.byteOffset, data.byteLength);
}

function entryFields(e: EventLogEntry): (string | Buffer)[] {
  return ["type", e.type, "key", e.key, "eventId", e.eventId, "data", toBuffer(e.data)];
}

function parseEntry(raw: RawEntry, deliveries?: number): StreamEntry | undefined {
  const [id, fields] = raw;
  if (!fields) return undefined; // deleted (trimmed) while pending
  const out: StreamEntry = { id: id.toString(), type: "", key: "", eventId: "", data: new Uint8Array() };
  for (let i = 0; i + 1 < fields.length; i += 2) {
    const name = fields[i]!.toString();
    const v = fields[i + 1]!;
    if (name === "data") out.data = new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
    else if (name === "type" || name === "key" || name === "eventId") out[name] = v.toString();
  }
  if (deliveries !== undefined) out.deliveries = deliveries;
  return out;
}

class RealEventLog implements EventLog {
  readonly #readers = new Map<string, Redis>();
  #closed = false;

  constructor(
    private readonly main: Redis,
    private readonly prefix: string,
    private readonly logger?: Logger,
  ) {}

  async append(stream: string, entry: EventLogEntry): Promise<string> {
    return (await this.main.xadd(this.prefix + stream, "*", ...entryFields(entry)))!;
  }

  async appendMany(stream: string, entries: EventLogEntry[]): Promise<string[]> {
    if (entries.length === 0) return [];
    const multi = this.main.multi();
    for (const e of entries) multi.xadd(this.prefix + stream, "*", ...entryFields(e));
    const res = await multi.exec();
    if (!res) throw new Error("appendMany: transaction aborted");
    return res.map(([err, id]) => {
      if (err) throw err;
      return id as string;
    });
  }

  async ensureGroup(stream: string, group: string, startId = "0"): Promise<void> {
    try {
      await this.main.xgroup("CREATE", this.prefix + stream, group, startId, "MKSTREAM");
    } catch (err) {
      if (!String((err as Error).message).startsWith("BUSYGROUP")) throw err;
    }
  }

  #reader(stream: string, group: string, consumer: string): Redis {
    const key = `${stream}\u0000${group}\u0000${consumer}`;
    let r = this.#readers.get(key);
    if (!r) {
      r = this.main.duplicate({ connectionName: connName(this.prefix, "reader") });
      r.on("error", (err) => this.logger?.warn({ err }, "redis reader connection error"));
      this.#readers.set(key, r);
    }
    return r;
  }

  async readGroup(
    stream: string,
    group: string,
    consumer: string,
    opts: { count?: number; blockMs?: number } = {},
  ): Promise<StreamEntry[]> {
    const count = opts.count ?? 100;
    const blockMs = opts.blockMs ?? 0;
    const args: (string | number)[] = ["GROUP", group, consumer, "COUNT", count];
    if (blockMs > 0) args.push("BLOCK", blockMs);
    args.push("STREAMS", this.prefix + stream, ">");
    const client = blockMs > 0 ? this.#reader(stream, group, consumer) : this.main;
    let reply: [Buffer, RawEntry[]][] | null;
    try {
      reply = (await client.callBuffer("XREADGROUP", args)) as [Buffer, RawEntry[]][] | null;
    } catch (err) {
      if (this.#closed) return [];
      throw err;
    }
    if (!reply) return [];
    const out: StreamEntry[] = [];
    for (const [, entries] of reply) {
      for (const raw of entries) {
        const e = parseEntry(raw, 1);
        if (e) out.push(e);
      }
    }
    return out;
  }

  async claimStale(stream: string, group: string, consumer: string, minIdleMs: number, count: number): Promise<StreamEntry[]> {
    const key = this.prefix + stream;
    const claimed: StreamEntry[] = [];
    let cursor = "0-0";
    // XAUTOCLAIM scans at most COUNT*10 pending entries per call; follow the cursor a little.
    for (let round = 0; round < 100 && claimed.length < count; round++) {
      const reply = (await this.main.callBuffer("XAUTOCLAIM", [
        key,
        group,
        consumer,
        minIdleMs,
        cursor,
        "COUNT",
        count - claimed.length,
      ])) as [Buffer, RawEntry[], Buffer[]?];
      for (const raw of reply[1]) {
        const e = parseEntry(raw);
        if (e) claimed.push(e);
      }
      cursor = reply[0].toString();
      if (cursor === "0-0") break;
    }
    if (claimed.length > 0) {
      const first = claimed[0]!.id;
      const last = claimed[claimed.length - 1]!.id;
      const pending = (await this.main.xpending(key, group, first, last, claimed.length * 2 + 10, consumer)) as [
        string,
        string,
        number,
        number,
      ][];
      const counts = new Map(pending.map(([id, , , n]) => [id, Number(n)]));
      for (const e of claimed) e.deliveries = counts.get(e.id);
    }
    return claimed;
  }

  async ack(stream: string, group: string, ids: string[]): Promise<number> {
    if (ids.length === 0) return 0;
    return this.main.xack(this.prefix + stream, group, ...ids);
  }

  async range(stream: string, afterId: string | undefined, count: number): Promise<StreamEntry[]> {
    const start = afterId === undefined ? "-" : `(${afterId}`;
    const raw = (await this.main.xrangeBuffer(this.prefix + stream, start, "+", "COUNT", count)) as RawEntry[];
    return raw.map((r) => parseEntry(r)).filter((e): e is StreamEntry => e !== undefined);
  }

  async trim(stream: string, maxLen: number): Promise<void> {
    await this.main.xtrim(this.prefix + stream, "MAXLEN", "~", maxLen);
  }

  async pendingCount(stream: string, group: string): Promise<number> {
    const summary = (await this.main.xpending(this.prefix + stream, group)) as [number, ...unknown[]];
    return Number(summary[0]);
  }

  async trimBefore(stream: string, minId: string): Promise<number> {
    return this.main.xtrim(this.prefix + stream, "MINID", minId);
  }

  async length(stream: string): Promise<number> {
    return this.main.xlen(this.prefix + stream);
  }

  async groups(stream: string): Promise<StreamGroupInfo[]> {
    const key = this.prefix + stream;
    let raw: unknown[][];
    try {
      raw = (await this.main.xinfo("GROUPS", key)) as unknown[][];
    } catch (err) {
      if (/no such key/i.test(String((err as Error).message))) return [];
      throw err;
    }
    return Promise.all(
      raw.map(async (fields) => {
        const f = new Map<string, unknown>();
        for (let i = 0; i + 1 < fields.length; i += 2) f.set(String(fields[i]), fields[i + 1]);
        const name = String(f.get("name"));
        const pending = Number(f.get("pending"));
        const info: StreamGroupInfo = { name, lastDeliveredId: String(f.get("last-delivered-id")), pending };
        if (pending > 0) {
          const summary = (await this.main.xpending(key, name)) as [number, string | null, ...unknown[]];
          if (summary[1]) info.oldestPendingId = summary[1];
        }
        return info;
      }),
    );
  }

  async close(): Promise<void> {
    this.#closed = true;
    // disconnect, not quit: a reader may be blocked for a while.
    for (const r of this.#readers.values()) r.disconnect();
    this.#readers.clear();
  }
}

// ---------------------------------------------------------------- channels

interface ChannelState {
  handlers: Set<(data: Uint8Array) => void>;
  subscribed: boolean;
  /** Serializes SUBSCRIBE/UNSUBSCRIBE of this channel. */
  op: Promise<void>;
}

/**
 * One subscriber connection per process, refcounted per channel: the first local handler
 * SUBSCRIBEs, the last one to leave UNSUBSCRIBEs. ioredis re-subscribes after a reconnect
 * (autoResubscribe), so subscriptions survive a Redis restart; messages published while
 * disconnected are lost (pub/sub is fire-and-forget).
 */
class RealChannels implements Channels {
  #sub: Redis | undefined;
  readonly #states = new Map<string, ChannelState>();

  constructor(
    private readonly main: Redis,
    private readonly prefix: string,
    private readonly logger?: Logger,
  ) {}

  #subscriber(): Redis {
    if (!this.#sub) {
      const sub = this.main.duplicate({ connectionName: connName(this.prefix, "sub"), autoResubscribe: true });
      sub.on("error", (err) => this.logger?.warn({ err }, "redis subscriber connection error"));
      sub.on("messageBuffer", (channel: Buffer, message: Buffer) => {
        const st = this.#states.get(channel.toString());
        if (!st || st.handlers.size === 0) return;
        // A view, not a copy, of the message.
        const data = new Uint8Array(message.buffer, message.byteOffset, message.byteLength);
        // Usually one handler (the tracking hub subscribes once per order): no copy of the set
        // per message then; with several, a copy, so a handler that unsubscribes another is safe.
        const handlers = st.handlers.size === 1 ? st.handlers : [...st.handlers];
        for (const h of handlers) {
          try {
            h(data);
          } catch (err) {
            this.logger?.error({ err, channel: channel.toString() }, "channel handler failed");
          }
        }
      });
      this.#sub = sub;
    }
    return this.#sub;
  }

  async publish(channel: string, data: Uint8Array): Promise<void> {
    await this.main.publish(this.prefix + channel, toBuffer(data));
  }

  async subscribe(channel: string, handler: (data: Uint8Array) => void): Promise<() => Promise<void>> {
    const name = this.prefix + channel;
    const sub = this.#subscriber();
    let st = this.#states.get(name);
    if (!st) {
      st = { handlers: new Set(), subscribed: false, op: Promise.resolve() };
      this.#states.set(name, st);
    }
    const state = st;
    const h = (d: Uint8Array) => handler(d);
    state.handlers.add(h);
    const op = state.op.then(async () => {
      if (state.handlers.size > 0 && !state.subscribed) {
        await sub.subscribe(name);
        state.subscribed = true;
      }
    });
    state.op = op.catch(() => {});
    try {
      await op;
    } catch (err) {
      state.handlers.delete(h);
      this.#dropIfIdle(name, state);
      throw err;
    }
    let done = false;
    return async () => {
      if (done) return;
      done = true;
      state.handlers.delete(h);
      const unsub = state.op.then(async () => {
        if (state.handlers.size === 0 && state.subscribed) {
          await sub.unsubscribe(name);
          state.subscribed = false;
        }
        this.#dropIfIdle(name, state);
      });
      state.op = unsub.catch(() => {});
      await unsub;
    };
  }

  #dropIfIdle(name: string, state: ChannelState): void {
    if (state.handlers.size === 0 && !state.subscribed && this.#states.get(name) === state) this.#states.delete(name);
  }

  subscribedCount(): number {
    let n = 0;
    for (const st of this.#states.values()) if (st.subscribed) n++;
    return n;
  }

  async close(): Promise<void> {
    this.#states.clear();
    const sub = this.#sub;
    this.#sub = undefined;
    if (sub) await sub.quit().catch(() => sub.disconnect());
  }
}

// ---------------------------------------------------------------- rate limiter

/**
 * Sliding-window log: a sorted set of hit times (Redis server clock, so every process agrees).
 * Denied hits are not recorded, so a client that keeps retrying is not locked out longer.
 */
const RATE_HIT_LUA = `
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local n = redis.call('ZCARD', KEYS[1])
if n < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], window)
  return {1, limit - n - 1, 0}
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local retry = window
if oldest[2] then retry = tonumber(oldest[2]) + window - now end
if retry < 1 then retry = 1 end
return {0, 0, retry}
`;

const COMPARE_AND_SWAP_LUA = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  return 1
end
return 0
`;

const COMPARE_AND_DELETE_LUA = `
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
`;

/**
 * RedisPorts.batch as script calls (one, or a few sent together for a huge batch). The same writes as a pipeline of GEOADD / ZREM / HSET +
 * PEXPIRE / PUBLISH commands, but one command on the wire: building thousands of ioredis
 * commands per tick cost ~18 us of client CPU per location fix, the script's arguments ~3 us
 * (measured with 2,000 fixes per call). The writes run in order; an error stops the script and
 * keeps the writes before it (no rollback), as a failed pipeline command would.
 *
 * KEYS: the key of every geoadd / georemove / hset op and the hash and geo keys of every fix op,
 * in op order. ARGV, per op:
 *   G <n> <lng> <lat> <member> ... | R <n> <member> ... | H <ttlMs or ""> <n> <field> <value> ... | P <channel> <data>
 *   | F <ttlMs> <orderField> <orderValue> <lng> <lat> <member> <n> <field> <value> ...
 */
const BATCH_LUA = `
local k, i, n = 0, 1, #ARGV
while i <= n do
  local op = ARGV[i]
  if op == 'G' then
    k = k + 1
    local c = tonumber(ARGV[i + 1])
    redis.call('GEOADD', KEYS[k], unpack(ARGV, i + 2, i + 1 + c * 3))
    i = i + 2 + c * 3
  elseif op == 'R' then
    k = k + 1
    local c = tonumber(ARGV[i + 1])
    redis.call('ZREM', KEYS[k], unpack(ARGV, i + 2, i + 1 + c))
    i = i + 2 + c
  elseif op == 'H' then
    k = k + 1
    local ttl = ARGV[i + 1]
    local c = tonumber(ARGV[i + 2])
    redis.call('HSET', KEYS[k], unpack(ARGV, i + 3, i + 2 + c * 2))
    if ttl ~= '' then redis.call('PEXPIRE', KEYS[k], ttl) end
    i = i + 3 + c * 2
  elseif op == 'F' then
    local hk, gk = KEYS[k + 1], KEYS[k + 2]
    k = k + 2
    local c = tonumber(ARGV[i + 7])
    local current = tonumber(redis.call('HGET', hk, ARGV[i + 2]))
    if current == nil or current < tonumber(ARGV[i + 3]) then
      redis.call('HSET', hk, unpack(ARGV, i + 8, i + 7 + c * 2))
      redis.call('PEXPIRE', hk, ARGV[i + 1])
      redis.call('GEOADD', gk, ARGV[i + 4], ARGV[i + 5], ARGV[i + 6])
    end
    i = i + 8 + c * 2
  elseif op == 'P' then
    redis.call('PUBLISH', ARGV[i + 1], ARGV[i + 2])
    i = i + 3
  else
    return redis.error_reply('ERR unknown batch op ' .. tostring(op))
  end
end
return k
`;

/** Lua's unpack() returns at most ~8,000 values: longer ops are split into chunks of this many items. */
const BATCH_CHUNK = 1000;

/** The KEYS and ARGV of one BATCH_LUA call. */
export interface BatchCall {
  keys: string[];
  args: (string | Buffer)[];
}

/**
 * Script arguments per call before the next op starts a new call: Redis runs a script without
 * serving anyone else, so a tick of many thousands of drivers is split into calls of bounded
 * size (sent together, still one round trip) to bound how long other clients wait.
 */
const BATCH_MAX_ARGS = 20_000;

/** The BATCH_LUA calls for ops, in order (empty ops are skipped). */
export function batchCalls(ops: readonly BatchOp[], prefix: string): BatchCall[] {
  const calls: BatchCall[] = [];
  let keys: string[] = [];
  let args: (string | Buffer)[] = [];
  for (const o of ops) {
    if (o.op === "geoadd") {
      for (let from = 0; from < o.items.length; from += BATCH_CHUNK) {
        const chunk = o.items.slice(from, from + BATCH_CHUNK);
        keys.push(prefix + o.key);
        args.push("G", String(chunk.length));
        for (const it of chunk) args.push(String(it.lng), String(it.lat), it.member);
      }
    } else if (o.op === "georemove") {
      for (let from = 0; from < o.members.length; from += BATCH_CHUNK) {
        const chunk = o.members.slice(from, from + BATCH_CHUNK);
        keys.push(prefix + o.key);
        args.push("R", String(chunk.length), ...chunk);
      }
    } else if (o.op === "hset") {
      const entries = Object.entries(o.fields);
      for (let from = 0; from < entries.length; from += BATCH_CHUNK) {
        const chunk = entries.slice(from, from + BATCH_CHUNK);
        const last = from + BATCH_CHUNK >= entries.length;
        keys.push(prefix + o.key);
        args.push("H", last && o.ttlMs !== undefined ? String(o.ttlMs) : "", String(chunk.length));
        for (const [f, v] of chunk) args.push(f, v);
      }
    } else if (o.op === "fix") {
      const entries = Object.entries(o.fields);
      const order = o.fields[o.orderField];
      if (order === undefined || !Number.isFinite(Number(order))) throw new Error(`batch fix op: fields.${o.orderField} must be a number`);
      keys.push(prefix + o.key, prefix + o.geoKey);
      args.push("F", String(o.ttlMs), o.orderField, order, String(o.lng), String(o.lat), o.member, String(entries.length));
      for (const [f, v] of entries) args.push(f, v);
    } else {
      args.push("P", prefix + o.channel, toBuffer(o.data));
    }
    if (args.length >= BATCH_MAX_ARGS) {
      calls.push({ keys, args });
      keys = [];
      args = [];
    }
  }
  if (args.length > 0) calls.push({ keys, args });
  return calls;
}

type Scripted = Redis & {
  dabbaBatch(numKeys: number, keysAndArgs: (string | Buffer)[]): Promise<number>;
  dabbaRateHit(key: string, limit: number, windowMs: number, member: string): Promise<[number, number, number]>;
  dabbaCompareAndDelete(key: string, expected: string): Promise<number>;
  dabbaCompareAndSwap(key: string, expected: string, value: string, ttlMs: number): Promise<number>;
};

class RealRateLimiter implements RateLimiter {
  constructor(
    private readonly main: Redis,
    private readonly prefix: string,
  ) {}

  async hit(key: string, limit: number, windowMs: number): Promise<RateLimitResult> {
    const [allowed, remaining, retryAfterMs] = await (this.main as Scripted).dabbaRateHit(
      this.prefix + key,
      limit,
      Math.ceil(windowMs),
      randomUUID(),
    );
    return { allowed: allowed === 1, remaining: Number(remaining), retryAfterMs: Number(retryAfterMs) };
  }
}

// ---------------------------------------------------------------- geo

class RealGeo implements GeoIndex {
  constructor(
    private readonly main: Redis,
    private readonly prefix: string,
  ) {}

  async add(key: string, items: GeoItem[]): Promise<void> {
    if (items.length === 0) return;
    const args: (string | number)[] = [];
    for (const it of items) args.push(it.lng, it.lat, it.member);
    await this.main.geoadd(this.prefix + key, ...args);
  }

  async remove(key: string, member: string): Promise<void> {
    await this.main.zrem(this.prefix + key, member);
  }

  async search(key: string, q: { lng: number; lat: number; radiusKm: number; count?: number }): Promise<GeoHit[]> {
    const args: (string | number)[] = [this.prefix + key, "FROMLONLAT", q.lng, q.lat, "BYRADIUS", q.radiusKm, "km", "ASC"];
    if (q.count !== undefined) args.push("COUNT", q.count);
    args.push("WITHCOORD", "WITHDIST");
    const reply = (await this.main.call("GEOSEARCH", args)) as [string, string, [string, string]][];
    return reply.map(([member, dist, [lng, lat]]) => ({
      member,
      distanceKm: Number(dist),
      lng: Number(lng),
      lat: Number(lat),
    }));
  }
}

// ---------------------------------------------------------------- kv

class RealKv implements Kv {
  constructor(
    private readonly main: Redis,
    private readonly prefix: string,
  ) {}

  async get(key: string): Promise<string | null> {
    return this.main.get(this.prefix + key);
  }

  async set(key: string, value: string, opts: { ttlMs?: number; nx?: boolean } = {}): Promise<boolean> {
    const args: (string | number)[] = [this.prefix + key, value];
    if (opts.ttlMs !== undefined) args.push("PX", opts.ttlMs);
    if (opts.nx) args.push("NX");
    return (await this.main.call("SET", args)) === "OK";
  }

  async del(key: string): Promise<boolean> {
    return (await this.main.del(this.prefix + key)) > 0;
  }

  async compareAndDelete(key: string, expected: string): Promise<boolean> {
    return (await (this.main as Scripted).dabbaCompareAndDelete(this.prefix + key, expected)) === 1;
  }

  async compareAndSwap(key: string, expected: string, value: string, ttlMs: number): Promise<boolean> {
    if (!Number.isInteger(ttlMs) || ttlMs <= 0) throw new Error(`ttlMs must be a positive integer, got ${ttlMs}`);
    return (await (this.main as Scripted).dabbaCompareAndSwap(this.prefix + key, expected, value, ttlMs)) === 1;
  }

  async incr(key: string): Promise<number> {
    return this.main.incr(this.prefix + key);
  }

  async hset(key: string, fields: Record<string, string>, opts: { ttlMs?: number } = {}): Promise<void> {
    if (Object.keys(fields).length === 0) {
      if (opts.ttlMs !== undefined) await this.main.pexpire(this.prefix + key, opts.ttlMs);
      return;
    }
    if (opts.ttlMs === undefined) {
      await this.main.hset(this.prefix + key, fields);
      return;
    }
    const res = await this.main.multi().hset(this.prefix + key, fields).pexpire(this.prefix + key, opts.ttlMs).exec();
    for (const [err] of res ?? []) if (err) throw err;
  }

  async hgetall(key: string): Promise<Record<string, string>> {
    return this.main.hgetall(this.prefix + key);
  }

  async hdel(key: string, fields: string[]): Promise<number> {
    // HDEL needs at least one field; nothing to remove is an answer, not an error.
    if (fields.length === 0) return 0;
    return this.main.hdel(this.prefix + key, ...fields);
  }

  async hincrby(key: string, field: string, by: number): Promise<number> {
    return this.main.hincrby(this.prefix + key, field, by);
  }

  async mget(keys: string[]): Promise<(string | null)[]> {
    if (keys.length === 0) return [];
    // One array argument (ioredis flattens it): spreading many keys can overflow the stack.
    return this.main.mget(keys.map((k) => this.prefix + k));
  }
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
