import type {
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
import { haversineKm, parseStreamId } from "./redis.js";

/**
 * In-process twin of the Redis ports for a single-process deployment and fast tests. It
 * follows Redis semantics where callers can observe them (consumer groups, pending entries,
 * delivery counts, TTLs, NX, sliding windows, geo ordering). Differences: each port has its
 * own key space (no WRONGTYPE across ports), trim is exact, and geo coordinates are not
 * quantized to 52-bit geohashes.
 */
export function createMemoryRedis(opts: { keyPrefix?: string } = {}): RedisPorts {
  const p = opts.keyPrefix ?? "";
  const eventLog = new MemoryEventLog(p);
  const channels = new MemoryChannels(p);
  const geo = new MemoryGeo(p);
  const kv = new MemoryKv(p);
  return {
    kind: "memory",
    eventLog,
    channels,
    rateLimiter: new MemoryRateLimiter(p),
    geo,
    kv,
    async batch(ops) {
      // Validate everything first so a bad op fails the batch before any write, like a
      // pipeline whose commands all reached Redis; then apply in order.
      for (const o of ops) {
        if (o.op === "geoadd") for (const it of o.items) checkLngLat(it.lng, it.lat);
        else if (o.op === "fix") {
          checkLngLat(o.lng, o.lat);
          if (!Number.isFinite(Number(o.fields[o.orderField] ?? NaN))) throw new Error(`batch fix op: fields.${o.orderField} must be a number`);
        }
      }
      for (const o of ops) {
        if (o.op === "geoadd") await geo.add(o.key, o.items);
        else if (o.op === "georemove") for (const m of o.members) await geo.remove(o.key, m);
        else if (o.op === "hset") await kv.hset(o.key, o.fields, { ttlMs: o.ttlMs });
        else if (o.op === "fix") {
          const current = (await kv.hgetall(o.key))[o.orderField];
          if (current !== undefined && Number(current) >= Number(o.fields[o.orderField])) continue;
          await kv.hset(o.key, o.fields, { ttlMs: o.ttlMs });
          await geo.add(o.geoKey, [{ member: o.member, lng: o.lng, lat: o.lat }]);
        }
        else await channels.publish(o.channel, o.data);
      }
    },
    async hgetallMany(keys) {
      return Promise.all(keys.map((k) => kv.hgetall(k)));
    },
    async close() {
      eventLog.close();
      channels.close();
    },
  };
}

// ---------------------------------------------------------------- stream ids

type Id = [number, number];

const parseId: (id: string) => Id = parseStreamId;

function cmpId(a: Id, b: Id): number {
  return a[0] !== b[0] ? a[0] - b[0] : a[1] - b[1];
}

function fmtId(id: Id): string {
  return `${id[0]}-${id[1]}`;
}

// ---------------------------------------------------------------- event log

interface StoredEntry extends EventLogEntry {
  id: string;
  pid: Id;
}

interface Pending {
  consumer: string;
  deliveredAt: number;
  deliveries: number;
}

interface Group {
  lastDelivered: Id;
  /** Entry id -> pending state, kept in ascending id order. */
  pending: Map<string, Pending>;
}

interface Stream {
  entries: StoredEntry[];
  last: Id;
  groups: Map<string, Group>;
  waiters: Set<() => void>;
}

class MemoryEventLog implements EventLog {
  readonly #streams = new Map<string, Stream>();
  #closed = false;

  constructor(private readonly prefix: string) {}

  #stream(name: string, create: boolean): Stream | undefined {
    const key = this.prefix + name;
    let s = this.#streams.get(key);
    if (!s && create) {
      s = { entries: [], last: [0, 0], groups: new Map(), waiters: new Set() };
      this.#streams.set(key, s);
    }
    return s;
  }

  #group(stream: string, group: string): { s: Stream; g: Group } {
    const s = this.#stream(stream, false);
    const g = s?.groups.get(group);
    if (!s || !g) {
      throw new Error(`NOGROUP No such key '${this.prefix + stream}' or consumer group '${group}'`);
    }
    return { s, g };
  }

  #add(s: Stream, entry: EventLogEntry): string {
    const now = Date.now();
    const pid: Id = now > s.last[0] ? [now, 0] : [s.last[0], s.last[1] + 1];
    s.last = pid;
    const id = fmtId(pid);
    s.entries.push({
      id,
      pid,
      type: entry.type,
      key: entry.key,
      eventId: entry.eventId,
      data: Uint8Array.from(entry.data),
    });
    return id;
  }

  #wake(s: Stream): void {
    const waiters = [...s.waiters];
    s.waiters.clear();
    for (const w of waiters) w();
  }

  async append(stream: string, entry: EventLogEntry): Promise<string> {
    const s = this.#stream(stream, true)!;
    const id = this.#add(s, entry);
    this.#wake(s);
    return id;
  }

  async appendMany(stream: string, entries: EventLogEntry[]): Promise<string[]> {
    if (entries.length === 0) return [];
    const s = this.#stream(stream, true)!;
    const ids = entries.map((e) => this.#add(s, e));
    this.#wake(s);
    return ids;
  }

  async ensureGroup(stream: string, group: string, startId = "0"): Promise<void> {
    const s = this.#stream(stream, true)!;
    if (s.groups.has(group)) return;
    s.groups.set(group, { lastDelivered: startId === "$" ? s.last : parseId(startId), pending: new Map() });
  }

  async readGroup(
    stream: string,
    group: string,
    consumer: string,
    opts: { count?: number; blockMs?: number } = {},
  ): Promise<StreamEntry[]> {
    const count = opts.count ?? 100;
    const blockMs = opts.blockMs ?? 0;
    const deadline = Date.now() + blockMs;
    for (;;) {
      const { s, g } = this.#group(stream, group);
      const from = indexAfter(s.entries, g.lastDelivered);
      const batch = s.entries.slice(from, from + count);
      if (batch.length > 0) {
        const now = Date.now();
        g.lastDelivered = batch[batch.length - 1]!.pid;
        return batch.map((e) => {
          g.pending.set(e.id, { consumer, deliveredAt: now, deliveries: 1 });
          return toEntry(e, 1);
        });
      }
      const wait = deadline - Date.now();
      if (blockMs <= 0 || wait <= 0 || this.#closed) return [];
      await new Promise<void>((resolve) => {
        const done = () => {
          clearTimeout(timer);
          s.waiters.delete(done);
          resolve();
        };
        const timer = setTimeout(done, wait);
        s.waiters.add(done);
      });
    }
  }

  async claimStale(stream: string, group: string, consumer: string, minIdleMs: number, count: number): Promise<StreamEntry[]> {
    const { s, g } = this.#group(stream, group);
    const now = Date.now();
    const out: StreamEntry[] = [];
    const ids = [...g.pending.keys()].sort((a, b) => cmpId(parseId(a), parseId(b)));
    for (const id of ids) {
      if (out.length >= count) break;
      const p = g.pending.get(id)!;
      if (now - p.deliveredAt < minIdleMs) continue;
      const entry = findEntry(s.entries, parseId(id));
      if (!entry) {
        // Trimmed away: Redis 7 drops such ids from the pending list.
        g.pending.delete(id);
        continue;
      }
      p.consumer = consumer;
      p.deliveredAt = now;
      p.deliveries += 1;
      out.push(toEntry(entry, p.deliveries));
    }
    return out;
  }

  async ack(stream: string, group: string, ids: string[]): Promise<number> {
    const g = this.#stream(stream, false)?.groups.get(group);
    if (!g) return 0;
    let n = 0;
    for (const id of ids) if (g.pending.delete(id)) n++;
    return n;
  }

  async range(stream: string, afterId: string | undefined, count: number): Promise<StreamEntry[]> {
    const s = this.#stream(stream, false);
    if (!s) return [];
    const from = afterId === undefined ? 0 : indexAfter(s.entries, parseId(afterId));
    return s.entries.slice(from, from + count).map((e) => toEntry(e));
  }

  async trim(stream: string, maxLen: number): Promise<void> {
    const s = this.#stream(stream, false);
    if (s && s.entries.length > maxLen) s.entries.splice(0, s.entries.length - maxLen);
  }

  async pendingCount(stream: string, group: string): Promise<number> {
    return this.#group(stream, group).g.pending.size;
  }

  async trimBefore(stream: string, minId: string): Promise<number> {
    const s = this.#stream(stream, false);
    if (!s) return 0;
    const min = parseId(minId);
    let n = 0;
    while (n < s.entries.length && cmpId(s.entries[n]!.pid, min) < 0) n++;
    s.entries.splice(0, n);
    return n;
  }

  async length(stream: string): Promise<number> {
    return this.#stream(stream, false)?.entries.length ?? 0;
  }

  async groups(stream: string): Promise<StreamGroupInfo[]> {
    const s = this.#stream(stream, false);
    if (!s) return [];
    return [...s.groups].map(([name, g]) => {
      const info: StreamGroupInfo = { name, lastDeliveredId: fmtId(g.lastDelivered), pending: g.pending.size };
      if (g.pending.size > 0) info.oldestPendingId = [...g.pending.keys()].map(parseId).sort(cmpId).map(fmtId)[0];
      return info;
    });
  }

  close(): void {
    this.#closed = true;
    for (const s of this.#streams.values()) this.#wake(s);
  }
}

/** Index of the first entry with id > after (entries are sorted). */
function indexAfter(entries: StoredEntry[], after: Id): number {
  let lo = 0;
  let hi = entries.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (cmpId(entries[mid]!.pid, after) <= 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

function findEntry(entries: StoredEntry[], id: Id): StoredEntry | undefined {
  const i = indexAfter(entries, id) - 1;
  const e = entries[i];
  return e && cmpId(e.pid, id) === 0 ? e : undefined;
}

function toEntry(e: StoredEntry, deliveries?: number): StreamEntry {
  const out: StreamEntry = { id: e.id, type: e.type, key: e.key, eventId: e.eventId, data: e.data };
  if (deliveries !== undefined) out.deliveries = deliveries;
  return out;
}

// ---------------------------------------------------------------- channels

class MemoryChannels implements Channels {
  readonly #subs = new Map<string, Set<(data: Uint8Array) => void>>();

  constructor(private readonly prefix: string) {}

  async publish(channel: string, data: Uint8Array): Promise<void> {
    const handlers = this.#subs.get(this.prefix + channel);
    if (!handlers || handlers.size === 0) return;
    const copy = Uint8Array.from(data);
    // Delivered asynchronously and in order, as from Redis.
    for (const h of [...handlers]) {
      queueMicrotask(() => {
        try {
          h(copy);
        } catch {
          // A failing handler must not break the publisher or other subscribers.
        }
      });
    }
  }

  async subscribe(channel: string, handler: (data: Uint8Array) => void): Promise<() => Promise<void>> {
    const key = this.prefix + channel;
    let set = this.#subs.get(key);
    if (!set) this.#subs.set(key, (set = new Set()));
    // Wrap so the same function subscribed twice is two subscriptions, like the real one.
    const h = (d: Uint8Array) => handler(d);
    set.add(h);
    let done = false;
    return async () => {
      if (done) return;
      done = true;
      const cur = this.#subs.get(key);
      cur?.delete(h);
      if (cur && cur.size === 0) this.#subs.delete(key);
    };
  }

  subscribedCount(): number {
    return this.#subs.size;
  }

  close(): void {
    this.#subs.clear();
  }
}

// ---------------------------------------------------------------- rate limiter

class MemoryRateLimiter implements RateLimiter {
  readonly #hits = new Map<string, number[]>();

  constructor(private readonly prefix: string) {}

  async hit(key: string, limit: number, windowMs: number): Promise<RateLimitResult> {
    const k = this.prefix + key;
    const now = Date.now();
    const log = (this.#hits.get(k) ?? []).filter((t) => t > now - windowMs);
    if (log.length < limit) {
      log.push(now);
      this.#hits.set(k, log);
      return { allowed: true, remaining: limit - log.length, retryAfterMs: 0 };
    }
    if (log.length === 0) this.#hits.delete(k);
    else this.#hits.set(k, log);
    const retryAfterMs = log.length > 0 ? Math.max(1, log[0]! + windowMs - now) : windowMs;
    return { allowed: false, remaining: 0, retryAfterMs };
  }
}

// ---------------------------------------------------------------- geo

const MAX_LAT = 85.05112878;

function checkLngLat(lng: number, lat: number): void {
  if (!(lng >= -180 && lng <= 180 && lat >= -MAX_LAT && lat <= MAX_LAT)) {
    throw new Error(`ERR invalid longitude,latitude pair ${lng},${lat}`);
  }
}

class MemoryGeo implements GeoIndex {
  readonly #sets = new Map<string, Map<string, { lng: number; lat: number }>>();

  constructor(private readonly prefix: string) {}

  async add(key: string, items: GeoItem[]): Promise<void> {
    for (const it of items) checkLngLat(it.lng, it.lat);
    const k = this.prefix + key;
    let set = this.#sets.get(k);
    if (!set) this.#sets.set(k, (set = new Map()));
    for (const it of items) set.set(it.member, { lng: it.lng, lat: it.lat });
  }

  async remove(key: string, member: string): Promise<void> {
    const k = this.prefix + key;
    const set = this.#sets.get(k);
    set?.delete(member);
    if (set && set.size === 0) this.#sets.delete(k);
  }

  async search(key: string, q: { lng: number; lat: number; radiusKm: number; count?: number }): Promise<GeoHit[]> {
    checkLngLat(q.lng, q.lat);
    const set = this.#sets.get(this.prefix + key);
    if (!set) return [];
    const hits: GeoHit[] = [];
    for (const [member, pos] of set) {
      const distanceKm = haversineKm(q.lng, q.lat, pos.lng, pos.lat);
      if (distanceKm <= q.radiusKm) hits.push({ member, distanceKm, lng: pos.lng, lat: pos.lat });
    }
    hits.sort((a, b) => a.distanceKm - b.distanceKm);
    return q.count !== undefined ? hits.slice(0, q.count) : hits;
  }
}

// ---------------------------------------------------------------- kv

interface KvValue {
  value: string | Map<string, string>;
  expiresAt?: number;
}

class MemoryKv implements Kv {
  readonly #data = new Map<string, KvValue>();

  constructor(private readonly prefix: string) {}

  #live(key: string): KvValue | undefined {
    const k = this.prefix + key;
    const v = this.#data.get(k);
    if (v && v.expiresAt !== undefined && v.expiresAt <= Date.now()) {
      this.#data.delete(k);
      return undefined;
    }
    return v;
  }

  #string(key: string): KvValue | undefined {
    const v = this.#live(key);
    if (v && typeof v.value !== "string") throw wrongType();
    return v;
  }

  #hash(key: string): KvValue | undefined {
    const v = this.#live(key);
    if (v && typeof v.value === "string") throw wrongType();
    return v;
  }

  async get(key: string): Promise<string | null> {
    return (this.#string(key)?.value as string | undefined) ?? null;
  }

  async set(key: string, value: string, opts: { ttlMs?: number; nx?: boolean } = {}): Promise<boolean> {
    if (opts.nx && this.#live(key)) return false;
    checkTtl(opts.ttlMs);
    this.#data.set(this.prefix + key, {
      value,
      expiresAt: opts.ttlMs !== undefined ? Date.now() + opts.ttlMs : undefined,
    });
    return true;
  }

  async del(key: string): Promise<boolean> {
    const existed = this.#live(key) !== undefined;
    this.#data.delete(this.prefix + key);
    return existed;
  }

  async compareAndDelete(key: string, expected: string): Promise<boolean> {
    const v = this.#live(key);
    if (!v || v.value !== expected) return false;
    this.#data.delete(this.prefix + key);
    return true;
  }

  async compareAndSwap(key: string, expected: string, value: string, ttlMs: number): Promise<boolean> {
    if (!Number.isInteger(ttlMs) || ttlMs <= 0) throw new Error(`ttlMs must be a positive integer, got ${ttlMs}`);
    const v = this.#live(key);
    if (!v || v.value !== expected) return false;
    this.#data.set(this.prefix + key, { value, expiresAt: Date.now() + ttlMs });
    return true;
  }

  async incr(key: string): Promise<number> {
    const v = this.#string(key);
    const cur = v ? Number(v.value) : 0;
    if (v && !/^-?\d+$/.test(v.value as string)) throw new Error("ERR value is not an integer or out of range");
    const next = cur + 1;
    if (!Number.isSafeInteger(next)) throw new Error("ERR increment or decrement would overflow");
    this.#data.set(this.prefix + key, { value: String(next), expiresAt: v?.expiresAt });
    return next;
  }

  async hset(key: string, fields: Record<string, string>, opts: { ttlMs?: number } = {}): Promise<void> {
    checkTtl(opts.ttlMs);
    let v = this.#hash(key);
    if (!v && Object.keys(fields).length === 0) return; // Redis never holds an empty hash
    if (!v) {
      v = { value: new Map() };
      this.#data.set(this.prefix + key, v);
    }
    const map = v.value as Map<string, string>;
    for (const [f, val] of Object.entries(fields)) map.set(f, val);
    if (opts.ttlMs !== undefined) v.expiresAt = Date.now() + opts.ttlMs;
  }

  async hgetall(key: string): Promise<Record<string, string>> {
    const v = this.#hash(key);
    return v ? Object.fromEntries(v.value as Map<string, string>) : {};
  }

  async hdel(key: string, fields: string[]): Promise<number> {
    const v = this.#hash(key);
    if (!v) return 0;
    const map = v.value as Map<string, string>;
    let n = 0;
    for (const f of fields) if (map.delete(f)) n++;
    if (map.size === 0) this.#data.delete(this.prefix + key);
    return n;
  }

  async hincrby(key: string, field: string, by: number): Promise<number> {
    if (!Number.isSafeInteger(by)) throw new Error("ERR value is not an integer or out of range");
    let v = this.#hash(key);
    const cur = (v?.value as Map<string, string> | undefined)?.get(field);
    if (cur !== undefined && !/^-?\d+$/.test(cur)) throw new Error("ERR hash value is not an integer");
    const next = Number(cur ?? 0) + by;
    if (!Number.isSafeInteger(next)) throw new Error("ERR increment or decrement would overflow");
    if (!v) {
      v = { value: new Map() };
      this.#data.set(this.prefix + key, v);
    }
    (v.value as Map<string, string>).set(field, String(next));
    return next;
  }

  async mget(keys: string[]): Promise<(string | null)[]> {
    // MGET answers nil for a key of another type rather than WRONGTYPE.
    return keys.map((k) => {
      const v = this.#live(k)?.value;
      return typeof v === "string" ? v : null;
    });
  }
}

function checkTtl(ttlMs: number | undefined): void {
  if (ttlMs !== undefined && !(Number.isInteger(ttlMs) && ttlMs > 0)) {
    throw new Error("ERR invalid expire time in 'set' command");
  }
}

function wrongType(): Error {
  return new Error("WRONGTYPE Operation against a key holding the wrong kind of value");
}
