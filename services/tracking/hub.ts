import type { Logger } from "../platform/logger.js";
import type { Channels } from "../platform/redis.js";
import { decodeSignal, trackingChannel, type TrackingSignal } from "./channel.js";

/** Receives the decoded signals of one order; called synchronously, must not throw or block. */
export type SignalHandler = (signal: TrackingSignal) => void;

/** The same as an object (no closure per watcher). */
export interface SignalTarget {
  onSignal(signal: TrackingSignal): void;
}

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
   * subscription. Each join is its own watcher, also when the same handler joins twice.
   */
  join(orderId: string, handler: SignalHandler | SignalTarget): Watch;
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
  members: Set<Member>;
  /** Set while this process is subscribed to the order's channel. */
  unsubscribe: (() => Promise<void>) | undefined;
  /** Tail of this order's serialized subscribe/unsubscribe operations. */
  op: Promise<void>;
  /** Operations queued or running on op. */
  pending: number;
}

/** One watcher of one order: its handler and its Watch (an object per watcher, no closures). */
class Member implements Watch {
  ready: Promise<void> = Promise.resolve();

  constructor(
    readonly hub: Hub,
    readonly entry: OrderEntry,
    readonly target: SignalHandler | SignalTarget,
  ) {}

  /** A function that works detached too (`const { leave } = watch`), made when asked for rather than stored per watcher. */
  get leave(): () => void {
    return () => this.hub.leave(this);
  }
}

/**
 * The hub over the channels port.
 *
 * Join and leave never race: every change of an order's subscription runs on that order's own
 * promise chain and each step reconciles the subscription with the watchers present when it
 * runs. A watcher leaving while the subscribe is in flight is followed by an unsubscribe once
 * the subscribe lands; a watcher joining while the unsubscribe is in flight waits for it, then
 * subscribes again. An order's entry is removed only when its chain is idle, it has no
 * watchers and it holds no subscription.
 */
class Hub implements TrackingHub {
  readonly #channels: Channels;
  readonly #logger: Logger | undefined;
  readonly #entries = new Map<string, OrderEntry>();
  #watchers = 0;
  #closed = false;

  constructor(opts: { channels: Channels; logger?: Logger }) {
    this.#channels = opts.channels;
    this.#logger = opts.logger?.child({ component: "tracking-hub" });
  }

  #dispatch(e: OrderEntry, data: Uint8Array): void {
    if (e.members.size === 0) return;
    let signal: TrackingSignal;
    try {
      signal = decodeSignal(data);
    } catch (err) {
      this.#logger?.warn({ err, orderId: e.orderId }, "dropping undecodable tracking message");
      return;
    }
    for (const m of e.members) {
      try {
        const t = m.target;
        if (typeof t === "function") t(signal);
        else t.onSignal(signal);
      } catch (err) {
        this.#logger?.error({ err, orderId: e.orderId }, "tracking watcher failed");
      }
    }
  }

  async #reconcile(e: OrderEntry): Promise<void> {
    if (e.members.size > 0 && !e.unsubscribe) {
      e.unsubscribe = await this.#channels.subscribe(trackingChannel(e.orderId), (data) => this.#dispatch(e, data));
    } else if (e.members.size === 0 && e.unsubscribe) {
      const unsubscribe = e.unsubscribe;
      e.unsubscribe = undefined;
      try {
        await unsubscribe();
      } catch (err) {
        this.#logger?.warn({ err, orderId: e.orderId }, "tracking channel unsubscribe failed");
      }
    }
  }

  /** Queues a reconcile step on the order's chain; the returned promise rejects when its subscribe failed. */
  #enqueue(e: OrderEntry): Promise<void> {
    e.pending++;
    const step = e.op.then(() => this.#reconcile(e));
    const done = step.finally(() => {
      e.pending--;
      if (e.pending === 0 && e.members.size === 0 && !e.unsubscribe && this.#entries.get(e.orderId) === e) this.#entries.delete(e.orderId);
    });
    e.op = done.catch(() => {});
    return done;
  }

  join(orderId: string, handler: SignalHandler | SignalTarget): Watch {
    if (this.#closed) return { ready: Promise.reject(new Error("tracking hub is closed")), leave() {} };
    let e = this.#entries.get(orderId);
    if (!e) {
      e = { orderId, members: new Set(), unsubscribe: undefined, op: Promise.resolve(), pending: 0 };
      this.#entries.set(orderId, e);
    }
    const m = new Member(this, e, handler);
    e.members.add(m);
    this.#watchers++;
    m.ready = this.#enqueue(e).then(
      () => {
        if (this.#closed) {
          m.leave();
          throw new Error("tracking hub is closed");
        }
      },
      (err: unknown) => {
        m.leave();
        throw err;
      },
    );
    return m;
  }

  /** Member.leave(): removes the watcher once (close() may have dropped it already). */
  leave(m: Member): void {
    const e = m.entry;
    if (!e.members.delete(m)) return;
    this.#watchers--;
    if (e.members.size === 0) void this.#enqueue(e);
  }

  orderCount(): number {
    return this.#entries.size;
  }

  watcherCount(): number {
    return this.#watchers;
  }

  async settled(): Promise<void> {
    for (;;) {
      const busy = [...this.#entries.values()].filter((e) => e.pending > 0);
      if (busy.length === 0) return;
      await Promise.all(busy.map((e) => e.op));
    }
  }

  async close(): Promise<void> {
    this.#closed = true;
    const all = [...this.#entries.values()];
    for (const e of all) {
      this.#watchers -= e.members.size;
      e.members.clear();
    }
    await Promise.all(all.map((e) => this.#enqueue(e).catch(() => {})));
  }
}

/** Creates the hub over the channels port. */
export function createTrackingHub(opts: { channels: Channels; logger?: Logger }): TrackingHub {
  return new Hub(opts);
}
