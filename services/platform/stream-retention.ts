import type { Logger } from "./logger.js";
import { compareStreamIds, type EventLog, type StreamGroupInfo } from "./redis.js";

/**
 * Event stream retention. The streams are the bus, not the record (Postgres keeps the orders,
 * their timelines and the outbox), so an entry may go once every consumer group has acked it
 * and it is older than the retention window (kept that long for operators reading the stream
 * with XRANGE). Entries a group has not been delivered, or has not acked, are never trimmed by
 * that rule; a group that falls far behind or was abandoned would then hold the stream forever,
 * so past maxLen entries the oldest go anyway and an error log names the groups that lost them.
 * The producer of each stream runs this (order service: events:orders; location service:
 * events:location), every everyMs in each of its processes (trims are idempotent).
 */
export interface StreamRetentionConfig {
  /** Acked entries younger than this are kept, ms. */
  retentionMs: number;
  /** Hard cap on a stream's length: past it the oldest entries go even if a group has not consumed them. */
  maxLen: number;
  /** How often each producing process trims, ms. */
  everyMs: number;
}

export const defaultStreamRetentionConfig: StreamRetentionConfig = Object.freeze({
  retentionMs: 3_600_000,
  maxLen: 1_000_000,
  everyMs: 60_000,
});

/** The oldest entry a group still needs: its oldest unacked one, else the last delivered (kept, harmless). */
export function groupFloor(g: StreamGroupInfo): string {
  return g.pending > 0 && g.oldestPendingId ? g.oldestPendingId : g.lastDeliveredId;
}

/** Entries below the returned id are acked by every group and older than the window. */
export function safeTrimId(groups: readonly StreamGroupInfo[], nowMs: number, retentionMs: number): string {
  let min = `${Math.max(0, Math.floor(nowMs - retentionMs))}-0`;
  for (const g of groups) {
    const floor = groupFloor(g);
    if (compareStreamIds(floor, min) < 0) min = floor;
  }
  return min;
}

export interface TrimReport {
  stream: string;
  /** Entries removed because every group was done with them and they had aged out. */
  trimmed: number;
  /** Entries removed by the length cap. */
  capped: number;
  /** Entries left. */
  length: number;
  /** Groups that had not consumed some of the capped entries. */
  behind: string[];
}

export interface StreamRetention {
  /** One pass over the streams (tests call it directly). */
  run(): Promise<TrimReport[]>;
  start(): void;
  /** Stops the timer and waits for a pass under way. */
  stop(): Promise<void>;
}

export function createStreamRetention(o: {
  eventLog: EventLog;
  streams: readonly string[];
  config: StreamRetentionConfig;
  logger: Logger;
  now?: () => number;
}): StreamRetention {
  const { eventLog, config: cfg } = o;
  const log = o.logger.child({ component: "stream-retention" });
  const now = o.now ?? Date.now;
  let timer: NodeJS.Timeout | undefined;
  let running: Promise<unknown> | undefined;

  async function trimStream(stream: string): Promise<TrimReport> {
    // Groups only move forward: trimming below positions read a moment ago is still safe.
    const groups = await eventLog.groups(stream);
    const trimmed = await eventLog.trimBefore(stream, safeTrimId(groups, now(), cfg.retentionMs));
    let length = await eventLog.length(stream);
    let capped = 0;
    let behind: string[] = [];
    if (length > cfg.maxLen) {
      await eventLog.trim(stream, cfg.maxLen);
      const left = await eventLog.length(stream);
      capped = length - left;
      length = left;
      const first = (await eventLog.range(stream, undefined, 1))[0]?.id;
      behind = groups.filter((g) => first !== undefined && compareStreamIds(groupFloor(g), first) < 0).map((g) => g.name);
      log.error(
        { stream, capped, maxLen: cfg.maxLen, behind, groups: groups.map((g) => ({ name: g.name, floor: groupFloor(g), pending: g.pending })) },
        "event stream over its length cap: oldest entries trimmed before every group had consumed them",
      );
    }
    if (trimmed > 0) log.debug({ stream, trimmed, length }, "event stream trimmed");
    return { stream, trimmed, capped, length, behind };
  }

  async function run(): Promise<TrimReport[]> {
    const out: TrimReport[] = [];
    for (const s of o.streams) out.push(await trimStream(s));
    return out;
  }

  return {
    run,
    start() {
      timer ??= setInterval(() => {
        if (running) return;
        running = run()
          .catch((err) => log.warn({ err }, "event stream retention failed; trying again next interval"))
          .finally(() => {
            running = undefined;
          });
      }, cfg.everyMs);
      timer.unref();
    },
    async stop() {
      clearInterval(timer);
      timer = undefined;
      await running;
    },
  };
}
