import { sql } from "kysely";
import type { Db } from "./db.js";
import type { Logger } from "./logger.js";
import type { EventLog, EventLogEntry, StreamEntry } from "./redis.js";

/**
 * Transactional outbox relay and event consumer helper.
 *
 * Table (created by the order service's migration; see createOutboxTableSql for the shape):
 *   outbox(id bigserial primary key, stream text, event_type text, event_key text,
 *          event_id text unique, payload bytea, created_at timestamptz, published_at timestamptz null)
 *
 * Ordering: one relay at a time holds `pg_try_advisory_xact_lock` for the table, reads the
 * oldest unpublished rows by id, appends them to the streams with one MULTI per stream (sent
 * together, one round trip), marks them published and commits. Other relays skip the round and retry, so the stream order is
 * the id order of the rows committed when each batch was read. A row whose id is smaller but
 * whose transaction commits later than a relayed row lands after it: per-key order therefore
 * relies on writers of one key serializing (the order row's compare-and-set does), and the
 * per-order sequence in the event envelope lets consumers check it.
 *
 * Delivery is at least once: a crash between the append and the commit republishes the batch;
 * consumers dedupe by event id.
 */

/** Columns of the outbox table, for stores that insert rows. */
export interface OutboxTable {
  id: number;
  stream: string;
  event_type: string;
  event_key: string;
  event_id: string;
  payload: Uint8Array;
  created_at: Date;
  published_at: Date | null;
}

/** DDL of an outbox table (for migrations and tests). */
export function createOutboxTableSql(table = "outbox"): string {
  const t = quoteIdent(table);
  return `create table if not exists ${t} (
  id bigserial primary key,
  stream text not null,
  event_type text not null,
  event_key text not null,
  event_id text not null unique,
  payload bytea not null,
  created_at timestamptz not null default now(),
  published_at timestamptz null
);
create index if not exists ${quoteIdent(`${table}_unpublished_idx`)} on ${t} (id) where published_at is null;`;
}

export interface OutboxRelayOptions {
  db: Db;
  eventLog: EventLog;
  logger?: Logger;
  table?: string;
  batchSize?: number;
  /** Poll interval when idle, in ms; wake() relays sooner. */
  idleMs?: number;
}

export interface OutboxRelay {
  start(): void;
  /** Stops the loop after the batch in flight. */
  stop(): Promise<void>;
  /** Relays everything pending now (waiting for another relay holding the lock); returns rows this relay published. */
  drain(): Promise<number>;
  /** Pokes the loop, e.g. right after committing a transaction that wrote outbox rows. */
  wake(): void;
  /** Deletes published rows older than olderThanHours (default 24); returns how many. */
  prune(olderThanHours?: number): Promise<number>;
}

type BatchResult = { locked: false } | { locked: true; published: number };

export function createOutboxRelay(opts: OutboxRelayOptions): OutboxRelay {
  const { db, eventLog } = opts;
  const table = opts.table ?? "outbox";
  const batchSize = opts.batchSize ?? 200;
  const idleMs = opts.idleMs ?? 50;
  const logger = opts.logger?.child({ component: "outbox-relay", table });
  const lockKey = `dabba.outbox-relay.${table}`;

  let running = false;
  let loop: Promise<void> | undefined;
  let wakeUp: (() => void) | undefined;
  let woken = false;

  async function relayBatch(): Promise<BatchResult> {
    return db.kysely.transaction().execute(async (trx) => {
      const lock = await sql<{ locked: boolean }>`select pg_try_advisory_xact_lock(hashtext(${lockKey})) as locked`.execute(trx);
      if (!lock.rows[0]?.locked) return { locked: false } as const;
      const rows = (await trx
        .selectFrom(table)
        .select(["id", "stream", "event_type", "event_key", "event_id", "payload"])
        .where("published_at", "is", null)
        .orderBy("id")
        .limit(batchSize)
        .execute()) as Pick<OutboxTable, "id" | "stream" | "event_type" | "event_key" | "event_id" | "payload">[];
      if (rows.length === 0) return { locked: true, published: 0 } as const;

      // One MULTI per stream for the whole batch (rows in id order within each stream), all sent
      // together: one Redis round trip per batch however many rows and streams it holds.
      const byStream = new Map<string, EventLogEntry[]>();
      for (const r of rows) {
        let entries = byStream.get(r.stream);
        if (!entries) byStream.set(r.stream, (entries = []));
        entries.push({ type: r.event_type, key: r.event_key, eventId: r.event_id, data: r.payload });
      }
      await Promise.all([...byStream].map(([stream, entries]) => eventLog.appendMany(stream, entries)));
      await trx
        .updateTable(table)
        .set({ published_at: sql`now()` })
        .where(
          "id",
          "in",
          rows.map((r) => r.id),
        )
        .execute();
      return { locked: true, published: rows.length } as const;
    });
  }

  async function pendingExists(): Promise<boolean> {
    const row = await db.kysely.selectFrom(table).select("id").where("published_at", "is", null).limit(1).executeTakeFirst();
    return row !== undefined;
  }

  function sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      if (woken || !running) {
        woken = false;
        resolve();
        return;
      }
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        wakeUp = undefined;
        woken = false;
        resolve();
      }
      wakeUp = done;
    });
  }

  async function run(): Promise<void> {
    let failures = 0;
    while (running) {
      try {
        const r = await relayBatch();
        failures = 0;
        if (r.locked && r.published === batchSize) continue;
        await sleep(idleMs);
      } catch (err) {
        failures++;
        logger?.error({ err, failures }, "outbox relay batch failed");
        await sleep(Math.min(idleMs * 2 ** failures, 5000));
      }
    }
  }

  return {
    start() {
      if (running) return;
      running = true;
      loop = run();
    },
    async stop() {
      running = false;
      // Interrupts the idle wait, whether the loop is in it now or about to enter it.
      if (wakeUp) wakeUp();
      else woken = true;
      await loop;
      loop = undefined;
    },
    async drain() {
      let total = 0;
      for (;;) {
        const r = await relayBatch();
        if (r.locked) {
          total += r.published;
          if (r.published < batchSize && !(await pendingExists())) return total;
          continue;
        }
        // Another relay holds the lock: wait for it unless nothing is left.
        if (!(await pendingExists())) return total;
        await new Promise((resolve) => setTimeout(resolve, 5));
      }
    },
    wake() {
      if (wakeUp) wakeUp();
      else woken = true;
    },
    async prune(olderThanHours = 24) {
      const res = await db.kysely
        .deleteFrom(table)
        .where("published_at", "is not", null)
        .where("published_at", "<", new Date(Date.now() - olderThanHours * 3_600_000))
        .executeTakeFirst();
      return Number(res.numDeletedRows);
    },
  };
}

// ---------------------------------------------------------------- consumer

/** Remembers handled event ids. The default is an in-memory LRU: duplicates are caught within one process lifetime only. */
export interface SeenSet {
  has(eventId: string): boolean | Promise<boolean>;
  add(eventId: string): void | Promise<void>;
}

/** A bounded LRU of event ids (insertion-ordered Map). */
export function createLruSeenSet(capacity = 10_000): SeenSet {
  const ids = new Map<string, true>();
  return {
    has(id) {
      if (!ids.has(id)) return false;
      ids.delete(id);
      ids.set(id, true);
      return true;
    },
    add(id) {
      ids.delete(id);
      ids.set(id, true);
      if (ids.size > capacity) ids.delete(ids.keys().next().value!);
    },
  };
}

export interface ConsumerOptions {
  eventLog: EventLog;
  stream: string;
  group: string;
  /** Unique per process (e.g. hostname + pid); a restarted process with the same name resumes its pending entries via claimStale. */
  consumer: string;
  /** Handles one entry at a time. Exactly one of handle and handleBatch is given. */
  handle?: (e: StreamEntry) => Promise<void>;
  /**
   * Handles each read's not-yet-seen entries, in order, in one call (a handler that writes them
   * together, say one multi-row insert). All or nothing: on success all are acked; on failure
   * none are, and the whole batch is retried after claimIdleMs.
   */
  handleBatch?: (entries: StreamEntry[]) => Promise<void>;
  seen?: SeenSet;
  logger?: Logger;
  /** Where a new group starts: "0" (default, the whole stream) or "$" (only new entries). */
  startId?: string;
  count?: number;
  /** How long one read blocks waiting for entries (default 1000 ms); bounds stop() latency on the in-process twin. */
  blockMs?: number;
  /** Entries pending longer than this (a crashed or failing consumer's) are claimed (default 30 s). */
  claimIdleMs?: number;
}

export interface Consumer {
  start(): Promise<void>;
  stop(): Promise<void>;
  /** One claim + read + handle round without blocking; returns entries handled or skipped. For tests. */
  pollOnce(): Promise<number>;
}

/**
 * Reads a stream as a consumer group member: handles entries in order, acks after success,
 * skips (and acks) event ids already handled, and periodically claims entries left pending
 * longer than claimIdleMs. A failed handle leaves its entry pending (logged) and processing
 * moves on; the entry is retried after claimIdleMs, by this or another consumer. With
 * handleBatch a failure leaves the whole batch pending instead.
 */
export function createConsumer(opts: ConsumerOptions): Consumer {
  const { eventLog, stream, group, consumer, handle, handleBatch } = opts;
  if ((handle === undefined) === (handleBatch === undefined)) {
    throw new Error("createConsumer: give exactly one of handle and handleBatch");
  }
  const seen = opts.seen ?? createLruSeenSet();
  const count = opts.count ?? 100;
  const blockMs = opts.blockMs ?? 1000;
  const claimIdleMs = opts.claimIdleMs ?? 30_000;
  const logger = opts.logger?.child({ component: "consumer", stream, group, consumer });

  let running = false;
  let loop: Promise<void> | undefined;
  let groupReady = false;
  let lastClaim = 0;

  // One XACK per read rather than per entry: an entry is acked only after its handler succeeded
  // (at least once still holds), just a few ms later. If the process dies or the ack fails
  // before it is sent, the batch's entries stay pending and are claimed again after
  // claimIdleMs; handled ones are then skipped by event id (in this process) or handled again
  // (idempotent handlers, as for any redelivery).
  async function process(entries: StreamEntry[]): Promise<number> {
    if (handleBatch) return processBatch(entries, handleBatch);
    const done: string[] = [];
    for (const e of entries) {
      try {
        if (!(await seen.has(e.eventId))) {
          await handle!(e);
          await seen.add(e.eventId);
        }
        done.push(e.id);
      } catch (err) {
        logger?.error({ err, entryId: e.id, eventId: e.eventId, type: e.type }, "event handler failed; left pending");
      }
    }
    return ackAll(done);
  }

  // Entries whose event id was handled before are acked whatever the batch's fate (they are
  // done). A repeat of an event id within the read is not passed again but shares the fate of
  // its first copy: acked with the batch, or left pending with it.
  async function processBatch(entries: StreamEntry[], handler: (entries: StreamEntry[]) => Promise<void>): Promise<number> {
    if (entries.length === 0) return 0;
    const skipped: string[] = [];
    const fresh: StreamEntry[] = [];
    const repeats: string[] = [];
    try {
      const inBatch = new Set<string>();
      for (const e of entries) {
        if (inBatch.has(e.eventId)) repeats.push(e.id);
        else if (await seen.has(e.eventId)) skipped.push(e.id);
        else {
          inBatch.add(e.eventId);
          fresh.push(e);
        }
      }
    } catch (err) {
      logger?.error({ err, entries: entries.length }, "seen-set lookup failed; batch left pending");
      return 0;
    }
    if (fresh.length === 0) return ackAll(skipped);
    try {
      await handler(fresh);
      for (const e of fresh) await seen.add(e.eventId);
    } catch (err) {
      logger?.error(
        { err, entries: fresh.length, firstEntryId: fresh[0]!.id, lastEntryId: fresh[fresh.length - 1]!.id },
        "batch handler failed; batch left pending",
      );
      return ackAll(skipped);
    }
    return ackAll(entries.map((e) => e.id));
  }

  // One XACK per read; returns how many were acked (0 when the ack failed: all stay pending).
  async function ackAll(ids: string[]): Promise<number> {
    if (ids.length === 0) return 0;
    try {
      await eventLog.ack(stream, group, ids);
    } catch (err) {
      logger?.error({ err, entries: ids.length }, "ack failed; entries left pending and will be claimed again");
      return 0;
    }
    return ids.length;
  }

  // Where the group starts: opts.startId when first created; "0" when re-created after Redis
  // lost it (a restart without persistence loses streams and groups together, so everything in
  // the stream now was appended after the loss and was never delivered to this group).
  let nextStartId = opts.startId ?? "0";

  async function ensureGroup(): Promise<void> {
    if (groupReady) return;
    await eventLog.ensureGroup(stream, group, nextStartId);
    groupReady = true;
  }

  async function round(block: number): Promise<number> {
    await ensureGroup();
    try {
      let n = 0;
      const now = Date.now();
      if (now - lastClaim >= Math.min(claimIdleMs, 5000)) {
        lastClaim = now;
        n += await process(await eventLog.claimStale(stream, group, consumer, claimIdleMs, count));
      }
      n += await process(await eventLog.readGroup(stream, group, consumer, { count, blockMs: block }));
      return n;
    } catch (err) {
      if (isNoGroup(err)) {
        // Redis no longer has the group (restarted without persistence, or the stream was
        // deleted): re-create it on the next round instead of failing forever.
        groupReady = false;
        nextStartId = "0";
        throw new GroupLostError(err);
      }
      throw err;
    }
  }

  async function run(): Promise<void> {
    let failures = 0;
    let lostAgain = false;
    while (running) {
      try {
        await round(blockMs);
        failures = 0;
        lostAgain = false;
      } catch (err) {
        if (!running) break;
        failures++;
        if (err instanceof GroupLostError) {
          logger?.warn({ err: err.cause, failures }, "consumer group lost (Redis restarted?); re-creating it");
          // Re-created at once (after a restart the connection errors have backed off enough
          // already); a group that vanishes again before a read succeeds backs off like any failure.
          if (!lostAgain) {
            lostAgain = true;
            continue;
          }
        } else {
          logger?.error({ err, failures }, "consumer read failed");
        }
        await new Promise((r) => setTimeout(r, Math.min(100 * 2 ** failures, 5000)));
      }
    }
  }

  return {
    async start() {
      if (running) return;
      await ensureGroup();
      running = true;
      loop = run();
    },
    async stop() {
      running = false;
      await loop;
      loop = undefined;
    },
    pollOnce() {
      return round(0);
    },
  };
}

/** Redis answers NOGROUP when the stream or the group does not exist (the in-process twin says the same). */
function isNoGroup(err: unknown): boolean {
  return err instanceof Error && /\bNOGROUP\b/.test(err.message);
}

/** A read failed because the group is gone; it is re-created on the next round. */
class GroupLostError extends Error {
  constructor(cause: unknown) {
    super(`consumer group lost: ${cause instanceof Error ? cause.message : String(cause)}`, { cause });
    this.name = "GroupLostError";
  }
}

function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}
