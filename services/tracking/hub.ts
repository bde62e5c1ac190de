import type { Logger } from "../platform/logger.js";
import type { Channels } from "../platform/redis.js";
import { decodeSignal, trackingChannel, type TrackingSignal } from "./channel.js";

/** Receives the decoded signals of one order; called synchronously, must not throw or block. */
export type SignalHandler = (signal: TrackingSignal) => void;

/**
 * The fan-out point of one tracking process: one channel subscription per watched order however
 * many TrackOrder streams watch it, each message decoded once and handed to every watcher.
 */
export interface TrackingHub {
  /**
   * Adds a watcher of the order at once. `ready` resolves once the order's channel subscription
   * is active, so everything published from then on reaches the watcher (it rejects when the
   * subscribe failed; the watcher has then left). `leave` may be called at any time, also while
   * the subscribe is in flight, and more than once; the last watcher to leave drops the
   * subscription.
   */
  join(orderId: string, handler: SignalHandler): Watch;
  /** Orders with at least one watcher or a subscription still being set up or torn down. */
  orderCount(): number;
  /** Watchers over all orders. */
  watcherCount(): number;
  /** Resolves when no subscribe or unsubscribe is in flight (tests). */
  settled(): Promise<void>;
  /** Drops every watcher and subscription; later joins fail. */
  close(): Promise<void>;
}

export interface Watch {
  ready: Promise<void>;
  leave(): void;
}

interface OrderEntry {
  orderId: string;
  handlers: Set<SignalHandler>;
  /** Set while this process is subscribed to the order's channel. */
  unsubscribe: (() => Promise<void>) | undefined;
  /** Tail of this order's serialized subscribe/unsubscribe operations. */
  op: Promise<void>;
  /** Operations queued or running on op. */
  pending: number;
}

/**
 * Creates the hub over the channels port.
 *
 * Join and leave never race: every change of an order's subscription runs on that order's own
 * promise chain and each step reconciles the subscription with the watchers present when it
 * runs. A watcher leaving while the subscribe is in flight is followed by an unsubscribe once
 * the subscribe lands; a watcher joining while the unsubscribe is in flight waits for it, then
 * subscribes again. An order's entry is removed only when its chain is idle, it has no
 * watchers and it holds no subscription.
 */
export function createTrackingHub(opts: { channels: Channels; logger?: Logger }): TrackingHub {
  const { channels } = opts;
  const logger = opts.logger?.child({ component: "tracking-hub" });
  const entries = new Map<string, OrderEntry>();
  let watchers = 0;
  let closed = false;

  function dispatch(e: OrderEntry, data: Uint8Array): void {
    if (e.handlers.size === 0) return;
    let signal: TrackingSignal;
    try {
      signal = decodeSignal(data);
    } catch (err) {
      logger?.warn({ err, orderId: e.orderId }, "dropping undecodable tracking message");
      return;
    }
    for (const h of e.handlers) {
      try {
        h(signal);
      } catch (err) {
        logger?.error({ err, orderId: e.orderId }, "tracking watcher failed");
      }
    }
  }

  async function reconcile(e: OrderEntry): Promise<void> {
    if (e.handlers.size > 0 && !e.unsubscribe) {
      e.unsubscribe = await channels.subscribe(trackingChannel(e.orderId), (data) => dispatch(e, data));
    } else if (e.handlers.size === 0 && e.unsubscribe) {
      const unsubscribe = e.unsubscribe;
      e.unsubscribe = undefined;
      try {
        await unsubscribe();
      } catch (err) {
        logger?.warn({ err, orderId: e.orderId }, "tracking channel unsubscribe failed");
      }
    }
  }

  /** Queues a reconcile step on the order's chain; the returned promise rejects when its subscribe failed. */
  function enqueue(e: OrderEntry): Promise<void> {
    e.pending++;
    const step = e.op.then(() => reconcile(e));
    const done = step.finally(() => {
      e.pending--;
      if (e.pending === 0 && e.handlers.size === 0 && !e.unsubscribe && entries.get(e.orderId) === e) entries.delete(e.orderId);
    });
    e.op = done.catch(() => {});
    return done;
  }

  return {
    join(orderId, handler) {
      if (closed) return { ready: Promise.reject(new Error("tracking hub is closed")), leave() {} };
      let e = entries.get(orderId);
      if (!e) {
        e = { orderId, handlers: new Set(), unsubscribe: undefined, op: Promise.resolve(), pending: 0 };
        entries.set(orderId, e);
      }
      const entry = e;
      // A distinct function per join: the same handler joining twice is two watchers.
      const h: SignalHandler = (s) => handler(s);
      entry.handlers.add(h);
      watchers++;
      const leave = () => {
        // close() may have dropped the handler already; count it once either way.
        if (!entry.handlers.delete(h)) return;
        watchers--;
        if (entry.handlers.size === 0) void enqueue(entry);
      };
      const ready = enqueue(entry).then(
        () => {
          if (closed) {
            leave();
            throw new Error("tracking hub is closed");
          }
        },
        (err: unknown) => {
          leave();
          throw err;
        },
      );
      return { ready, leave };
    },
    orderCount: () => entries.size,
    watcherCount: () => watchers,
    async settled() {
      for (;;) {
        const busy = [...entries.values()].filter((e) => e.pending > 0);
        if (busy.length === 0) return;
        await Promise.all(busy.map((e) => e.op));
      }
    },
    async close() {
      closed = true;
      const all = [...entries.values()];
      for (const e of all) {
        watchers -= e.handlers.size;
        e.handlers.clear();
      }
      await Promise.all(all.map((e) => enqueue(e).catch(() => {})));
    },
  };
}
