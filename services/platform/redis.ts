import type { Logger } from "./logger.js";

/**
 * The few Redis capabilities dabba uses, as ports. Two implementations share one contract
 * suite (test/contract/redis.test.ts): real Redis over ioredis (redis-real.ts) and an
 * in-process twin for single-process deployments (redis-memory.ts).
 *
 * Keys, streams and channels are plain names; the implementation adds keyPrefix.
 */

/** One event as stored in a stream. */
export interface EventLogEntry {
  type: string;
  /** Partition / ordering key, e.g. the order id. */
  key: string;
  /** Unique event id; consumers dedupe on it. */
  eventId: string;
  /** Encoded event (Protobuf); binary-safe. */
  data: Uint8Array;
}

/** An entry read back from a stream. */
export interface StreamEntry extends EventLogEntry {
  /** Stream entry id ("<ms>-<seq>"), ordered. */
  id: string;
  /** Times this entry has been delivered to the group (1 on first delivery); set by readGroup and claimStale. */
  deliveries?: number;
}

/** A consumer group's position in a stream (XINFO GROUPS, XPENDING). */
export interface StreamGroupInfo {
  name: string;
  /** Every entry up to this id has been delivered to the group ("0-0" when none). */
  lastDeliveredId: string;
  /** Entries delivered and not yet acked. */
  pending: number;
  /** The oldest of them, when pending > 0. */
  oldestPendingId?: string;
}

/** Append-only event log with consumer groups (Redis Streams). */
export interface EventLog {
  append(stream: string, entry: EventLogEntry): Promise<string>;
  /** Appends in order, in one round trip (MULTI); returns the ids in the same order. */
  appendMany(stream: string, entries: EventLogEntry[]): Promise<string[]>;
  /** Creates the group (and the stream) if missing. startId "0" reads from the beginning, "$" only new entries. */
  ensureGroup(stream: string, group: string, startId?: string): Promise<void>;
  /**
   * New entries for this consumer (never delivered to the group before). They stay pending
   * until acked. blockMs 0/undefined returns at once; otherwise waits up to blockMs for one.
   */
  readGroup(stream: string, group: string, consumer: string, opts?: { count?: number; blockMs?: number }): Promise<StreamEntry[]>;
  /** Moves entries pending longer than minIdleMs (a crashed consumer's) to this consumer and returns them. */
  claimStale(stream: string, group: string, consumer: string, minIdleMs: number, count: number): Promise<StreamEntry[]>;
  ack(stream: string, group: string, ids: string[]): Promise<number>;
  /** Entries strictly after afterId (from the start when undefined), in order, for replay. */
  range(stream: string, afterId: string | undefined, count: number): Promise<StreamEntry[]>;
  /** Trims to about maxLen newest entries (approximate in Redis: may keep a few more). */
  trim(stream: string, maxLen: number): Promise<void>;
  /** Deletes every entry with an id below minId (XTRIM MINID, exact); returns how many. */
  trimBefore(stream: string, minId: string): Promise<number>;
  /** Number of entries in the stream (0 when it does not exist). */
  length(stream: string): Promise<number>;
  /** The stream's consumer groups and their positions (none when the stream does not exist). */
  groups(stream: string): Promise<StreamGroupInfo[]>;
  /** Number of entries pending (delivered, not acked) in the group. */
  pendingCount(stream: string, group: string): Promise<number>;
}

/** Fire-and-forget pub/sub. */
export interface Channels {
  publish(channel: string, data: Uint8Array): Promise<void>;
  /** Resolves once the subscription is active; returns the unsubscribe function. */
  subscribe(channel: string, handler: (data: Uint8Array) => void): Promise<() => Promise<void>>;
  /** Channels this process is subscribed to (one per channel, however many local handlers). */
  subscribedCount(): number;
}

export interface RateLimitResult {
  allowed: boolean;
  /** Hits still allowed in the current window after this one. */
  remaining: number;
  /** When not allowed: ms until a hit would be allowed again; 0 when allowed. */
  retryAfterMs: number;
}

/** Sliding-window rate limiter (a log of hits per key); atomic per hit. */
export interface RateLimiter {
  hit(key: string, limit: number, windowMs: number): Promise<RateLimitResult>;
}

export interface GeoItem {
  member: string;
  lng: number;
  lat: number;
}

export interface GeoHit extends GeoItem {
  distanceKm: number;
}

/** Geo index (Redis GEO): members with positions, searched by radius nearest first. */
export interface GeoIndex {
  add(key: string, items: GeoItem[]): Promise<void>;
  remove(key: string, member: string): Promise<void>;
  search(key: string, q: { lng: number; lat: number; radiusKm: number; count?: number }): Promise<GeoHit[]>;
}

/** String and hash values with optional TTLs. */
export interface Kv {
  get(key: string): Promise<string | null>;
  /** SET; with nx only when absent. Returns whether the value was written. A set without ttlMs clears any TTL. */
  set(key: string, value: string, opts?: { ttlMs?: number; nx?: boolean }): Promise<boolean>;
  /** Returns whether the key existed. */
  del(key: string): Promise<boolean>;
  /** Deletes the key only if it holds expected (lease / offer token release). */
  compareAndDelete(key: string, expected: string): Promise<boolean>;
  /** Replaces the value (with a new TTL) only if the key holds expected; atomic (a fenced lock changing hands). */
  compareAndSwap(key: string, expected: string, value: string, ttlMs: number): Promise<boolean>;
  /** Atomic increment (creates at 0); keeps an existing TTL. */
  incr(key: string): Promise<number>;
  /** Sets hash fields; with ttlMs (re)sets the key's TTL, otherwise keeps it. */
  hset(key: string, fields: Record<string, string>, opts?: { ttlMs?: number }): Promise<void>;
  /** All fields; {} when the key is missing. */
  hgetall(key: string): Promise<Record<string, string>>;
  /** Removes hash fields; returns how many existed. A hash left without fields is deleted (as Redis does). */
  hdel(key: string, fields: string[]): Promise<number>;
  /** Adds by (an integer) to a hash field (missing counts as 0); returns the new value. Keeps the key's TTL. */
  hincrby(key: string, field: string, by: number): Promise<number>;
  /** String values of many keys in one round trip, in the order given; null for a missing (or non-string) key. */
  mget(keys: string[]): Promise<(string | null)[]>;
}

/** One write in a batch (see RedisPorts.batch). */
export type BatchOp =
  | { op: "geoadd"; key: string; items: GeoItem[] }
  | { op: "georemove"; key: string; members: string[] }
  /** HSET; with ttlMs the key's TTL is (re)set to it. */
  | { op: "hset"; key: string; fields: Record<string, string>; ttlMs?: number }
  | { op: "publish"; channel: string; data: Uint8Array }
  /**
   * A position report: HSET of the hash (TTL reset to ttlMs) and GEOADD of member, both skipped
   * when the hash already holds orderField >= the new value (numbers): a newer report written
   * meanwhile (say by another process) is never overwritten by an older one.
   */
  | { op: "fix"; key: string; fields: Record<string, string>; ttlMs: number; orderField: string; geoKey: string; member: string; lng: number; lat: number };

export interface RedisPorts {
  kind: "redis" | "memory";
  eventLog: EventLog;
  channels: Channels;
  rateLimiter: RateLimiter;
  geo: GeoIndex;
  kv: Kv;
  /**
   * Sends the writes in order in one round trip (on Redis as script calls of bounded size, sent
   * together). Resolves when all are applied; rejects when one failed (the ones before it stay
   * applied: there is no rollback).
   * While Redis is unreachable the returned promise waits (bounded by the caller's own
   * backpressure) or rejects; it never buffers without bound behind the caller's back.
   */
  batch(ops: BatchOp[]): Promise<void>;
  /** HGETALL for many keys in one round trip; {} for missing keys, in the order given. */
  hgetallMany(keys: string[]): Promise<Record<string, string>[]>;
  close(): Promise<void>;
}

export interface OpenRedisOptions {
  /** Redis URL; undefined opens the in-process twin (single process only). */
  redisUrl?: string;
  logger?: Logger;
  /** Prepended to every key, stream and channel (tests use `test:<random>:`). */
  keyPrefix?: string;
}

/** Opens real Redis when redisUrl is set, otherwise the in-process twin. */
export async function openRedis(opts: OpenRedisOptions): Promise<RedisPorts> {
  if (opts.redisUrl) {
    const { openRealRedis } = await import("./redis-real.js");
    return openRealRedis({ redisUrl: opts.redisUrl, logger: opts.logger, keyPrefix: opts.keyPrefix ?? "" });
  }
  const { createMemoryRedis } = await import("./redis-memory.js");
  return createMemoryRedis({ keyPrefix: opts.keyPrefix ?? "" });
}

/** Redis's earth radius (geohash_helper.c), so both implementations measure alike. */
export const EARTH_RADIUS_M = 6372797.560856;

/** Great-circle distance in km, the formula Redis uses. */
/** A stream entry id ("<ms>-<seq>") as numbers; throws Redis's error for a malformed one. */
export function parseStreamId(id: string): [number, number] {
  const [ms, seq] = id.split("-");
  const a = Number(ms);
  const b = seq === undefined ? 0 : Number(seq);
  if (!Number.isSafeInteger(a) || !Number.isSafeInteger(b) || a < 0 || b < 0) {
    throw new Error(`ERR Invalid stream ID specified as stream command argument: ${id}`);
  }
  return [a, b];
}

/** Orders two stream ids numerically (not as text: "9-0" < "10-0"). */
export function compareStreamIds(a: string, b: string): number {
  const x = parseStreamId(a);
  const y = parseStreamId(b);
  return x[0] !== y[0] ? x[0] - y[0] : x[1] - y[1];
}

export function haversineKm(lng1: number, lat1: number, lng2: number, lat2: number): number {
  const rad = Math.PI / 180;
  const u = Math.sin(((lat2 - lat1) * rad) / 2);
  const v = Math.sin(((lng2 - lng1) * rad) / 2);
  const a = u * u + Math.cos(lat1 * rad) * Math.cos(lat2 * rad) * v * v;
  return (2 * EARTH_RADIUS_M * Math.asin(Math.sqrt(a))) / 1000;
}
