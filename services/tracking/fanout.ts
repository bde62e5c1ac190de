import { hostname } from "node:os";
import { fromBinary } from "@bufbuild/protobuf";
import { EventSchema } from "../../gen/dabba/events/v1/events_pb.js";
import type { Logger } from "../platform/logger.js";
import { createConsumer, type Consumer } from "../platform/outbox.js";
import type { RedisPorts, StreamEntry } from "../platform/redis.js";
import { ORDER_EVENTS_STREAM } from "../order/store.js";
import { encodeEventBytes, trackingChannel } from "./channel.js";

/** Consumer group that republishes order events on the per-order tracking channels (once per event across processes). */
export const TRACKING_FANOUT_GROUP = "tracking-fanout";

export interface FanoutOptions {
  redis: RedisPorts;
  logger?: Logger;
  /** Consumer name, unique per process; defaults to tracking-<host>-<pid>. */
  consumer?: string;
  /** How long one read blocks (bounds stop() latency on the in-process twin). */
  blockMs?: number;
}

/**
 * The order-event side of tracking: every order event on the event log is published on its
 * order's tracking channel, where each tracking process's hub (one subscription per watched
 * order) picks it up. One consumer group for all tracking processes, so each event is
 * published once whatever the number of processes; the group starts at "$" (watchers load the
 * order's state themselves, only changes from now on matter). Delivery is at least once:
 * TrackOrder streams skip sequences they have already sent.
 */
export function createTrackingFanout(opts: FanoutOptions): Consumer {
  const { redis } = opts;
  return createConsumer({
    eventLog: redis.eventLog,
    stream: ORDER_EVENTS_STREAM,
    group: TRACKING_FANOUT_GROUP,
    consumer: opts.consumer ?? `tracking-${hostname()}-${process.pid}`,
    startId: "$",
    blockMs: opts.blockMs,
    logger: opts.logger,
    handle: (e) => publishEvent(redis, e),
  });
}

/** Publishes one event-log entry (an encoded events.v1.Event) on its order's tracking channel, as stored (no re-encoding). */
async function publishEvent(redis: RedisPorts, e: StreamEntry): Promise<void> {
  // The entry's key is the order id; the decode checks the entry really is an order event and
  // names the order when a producer left the key empty.
  const ev = fromBinary(EventSchema, e.data);
  const orderId = ev.orderId || e.key;
  if (!orderId) return;
  await redis.channels.publish(trackingChannel(orderId), encodeEventBytes(e.data));
}
