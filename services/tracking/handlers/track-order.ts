import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { raceSignal } from "../../platform/abort.js";
import { timestampMs, type Timestamp } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type Client, type HandlerContext } from "@connectrpc/connect";
import type { Event } from "../../../gen/dabba/events/v1/events_pb.js";
import { EtaRangeSchema, type EtaRange } from "../../../gen/dabba/common/v1/common_pb.js";
import type { DriverPosition } from "../../../gen/dabba/location/v1/location_pb.js";
import { OrderStatus, TimelineEntrySchema, TimelineKind, type Order, type TimelineEntry } from "../../../gen/dabba/order/v1/order_pb.js";
import type { OrderService } from "../../../gen/dabba/order/v1/order_service_pb.js";
import { TrackOrderResponseSchema, type TrackOrderRequest, type TrackOrderResponse } from "../../../gen/dabba/tracking/v1/tracking_service_pb.js";
import { driverFixKey, driverProfileKey, readFixHash } from "../../location/keys.js";
import { principalOf, type Principal } from "../../platform/auth.js";
import type { TrackingConfig } from "../../platform/config.js";
import { NotFoundError, PermissionError, UnavailableError, invalid, requireId, ID_MAX_CHARS } from "../../platform/errors.js";
import type { Logger } from "../../platform/logger.js";
import type { RedisPorts } from "../../platform/redis.js";
import type { PositionSignal, TrackingSignal } from "../channel.js";
import type { SignalTarget, TrackingHub } from "../hub.js";

type Msg = MessageInitShape<typeof TrackOrderResponseSchema>;

/** What TrackOrder needs. */
export interface TrackOrderDeps {
  tracking: TrackingConfig;
  redis: RedisPorts;
  logger: Logger;
  hub: TrackingHub;
  /** The order service (a peer transport carrying the service token). */
  orders: () => Client<typeof OrderService>;
}

/** Streams of one process that load their order and build their snapshot at the same time. */
export const OPENING_CONCURRENCY = 64;
/** Status events a slow watcher may have queued before its stream is ended (it resumes with last_event_id). */
export const MAX_QUEUED_EVENTS = 256;
const NOT_FOUND = "order not found";

/** Event payloads that are status timeline entries (driver assignments and dispatch flags are mapped in timelineEntryOf). */
const STATUS_OF: Partial<Record<NonNullable<Event["payload"]["case"]>, OrderStatus>> = {
  placed: OrderStatus.PLACED,
  confirmed: OrderStatus.CONFIRMED,
  rejected: OrderStatus.CANCELLED,
  preparing: OrderStatus.PREPARING,
  ready: OrderStatus.READY_FOR_PICKUP,
  pickedUp: OrderStatus.PICKED_UP,
  enRoute: OrderStatus.EN_ROUTE,
  delivered: OrderStatus.DELIVERED,
  cancelled: OrderStatus.CANCELLED,
};

function isTerminal(s: OrderStatus): boolean {
  return s === OrderStatus.DELIVERED || s === OrderStatus.CANCELLED;
}

/** Parses last_event_id ("<orderId>-<sequence>"); undefined when empty, INVALID_ARGUMENT when malformed or of another order. */
export function parseLastEventId(orderId: string, lastEventId: string): bigint | undefined {
  if (lastEventId === "") return undefined;
  const dash = lastEventId.lastIndexOf("-");
  const digits = dash > 0 ? lastEventId.slice(dash + 1) : "";
  if (lastEventId.length > ID_MAX_CHARS + 21 || !/^[0-9]{1,18}$/.test(digits)) {
    throw invalid("last_event_id", 'must be an event id "<order_id>-<sequence>" from this stream');
  }
  if (lastEventId.slice(0, dash) !== orderId) throw invalid("last_event_id", "belongs to another order");
  return BigInt(digits);
}

/** The timeline entry an order event records, as GetOrder's timeline shows it. */
export function timelineEntryOf(ev: Event): TimelineEntry | undefined {
  const p = ev.payload;
  let kind = TimelineKind.STATUS;
  let status: OrderStatus | undefined;
  let driverId = "";
  let reason = "";
  switch (p.case) {
    case "driverAssigned":
      kind = TimelineKind.DRIVER_ASSIGNED;
      driverId = p.value.driverId;
      status = ev.order?.status;
      break;
    case "driverUnassigned":
      kind = TimelineKind.DRIVER_UNASSIGNED;
      driverId = p.value.driverId;
      reason = p.value.reason;
      status = ev.order?.status;
      break;
    case "dispatchFlagged":
      kind = TimelineKind.DISPATCH_FLAGGED;
      status = ev.order?.status;
      break;
    case "rejected":
      reason = p.value.reason;
      status = STATUS_OF[p.case];
      break;
    case "cancelled":
      reason = p.value.reason;
      driverId = p.value.releasedDriverId;
      status = STATUS_OF[p.case];
      break;
    default:
      status = p.case ? STATUS_OF[p.case] : undefined;
  }
  if (status === undefined) return undefined;
  return create(TimelineEntrySchema, { kind, status, actor: ev.actor, reason, driverId, at: ev.occurredAt, sequence: ev.sequence });
}

/**
 * A range with absolute bounds as minutes from `nowMs` (low rounded down, high up); a range
 * without them (a quote) as it is. An estimate sent late (a queued event, a snapshot) still
 * counts down from the bounds it was computed with.
 */
export function etaFromNow(eta: EtaRange | undefined, nowMs: number): EtaRange | undefined {
  if (!eta || !eta.earliestAt || !eta.latestAt) return eta;
  const low = Math.max(0, Math.floor((timestampMs(eta.earliestAt) - nowMs) / 60_000));
  const high = Math.max(low, Math.ceil((timestampMs(eta.latestAt) - nowMs) / 60_000));
  return create(EtaRangeSchema, { minMinutes: low, maxMinutes: high, earliestAt: eta.earliestAt, latestAt: eta.latestAt });
}

function etaMsg(eventId: string, eta: EtaRange): Resp {
  return create(TrackOrderResponseSchema, { eventId, update: { case: "eta", value: eta } });
}

function atMs(t: Timestamp | undefined): number {
  return t ? timestampMs(t) : 0;
}

function statusMsg(orderId: string, entry: TimelineEntry, final: boolean): TrackOrderResponse {
  return create(TrackOrderResponseSchema, { eventId: `${orderId}-${entry.sequence}`, update: { case: "status", value: { status: entry.status, entry } }, final });
}

/** A complete response message (create() on it is a no-op further down the stack). */
type Resp = TrackOrderResponse;

/** The idle keep-alive, the same message for every stream. */
const HEARTBEAT: Resp = create(TrackOrderResponseSchema, { eventId: "", update: { case: "heartbeat", value: {} } });

/**
 * What one stream keeps between messages, written by the hub callback (synchronously, cheaply)
 * and read by the stream's generator. One plain object with its methods on the prototype: no
 * closures per stream, and nothing of the order beyond what the live phase needs (its status,
 * driver and last sequence; the snapshot's Order is dropped once sent).
 */
class StreamState implements SignalTarget, EventListenerObject {
  /** Status events not applied yet (bounded by MAX_QUEUED_EVENTS). */
  events: Event[] = [];
  overflow = false;
  /** The newest position not sent yet (the hub's signal, shared by the order's streams) and its device time. */
  pending: PositionSignal | undefined = undefined;
  pendingAt = 0;
  /** Device time of the newest position sent (snapshot included): older ones are never sent. */
  sentPosAt = 0;
  /** The order's currently assigned driver ("" for none), as of the last applied event. */
  driver = "";
  terminal = false;
  /** Set once the opening messages are built: from then on driver and terminal are known. */
  loaded = false;
  /** Newest event sequence applied or sent. */
  lastSeq = 0n;
  /** Wall time (performance.now()) the generator wants to be woken at, while it waits. */
  wakeAt = 0;
  /** The request signal's state, kept here by its abort listener (its getter checks its receiver on every read). */
  aborted = false;
  notify: (() => void) | undefined = undefined;

  onSignal(s: TrackingSignal): void {
    if (s.kind === "event") {
      if (this.events.length >= MAX_QUEUED_EVENTS) this.overflow = true;
      else this.events.push(s.event);
      this.wake();
      return;
    }
    const pos = s.position;
    const at = atMs(pos.at);
    if (at <= this.sentPosAt || (this.pending && at <= this.pendingAt)) return;
    // With no event waiting to be applied the assignment is known: drop other drivers' positions here.
    if (this.loaded && this.events.length === 0 && (this.terminal || pos.driverId !== this.driver)) return;
    this.pending = s;
    this.pendingAt = at;
    this.wake();
  }

  wake(): void {
    const n = this.notify;
    this.notify = undefined;
    n?.();
  }

  /** The request signal's abort listener. */
  handleEvent(): void {
    this.aborted = true;
    this.wake();
  }
}

/**
 * One timer for the idle waits of every stream of this handler (heartbeats are due after
 * seconds; a timer per stream re-armed after every message costs more than a scan per tick).
 * A position held by the interval, and any wait shorter than a tick, use their own timer.
 */
class WakeWheel {
  readonly #waiting = new Set<StreamState>();
  #timer: NodeJS.Timeout | undefined;
  constructor(readonly tickMs: number) {}

  add(st: StreamState): void {
    this.#waiting.add(st);
    if (!this.#timer) {
      this.#timer = setInterval(() => this.#tick(), this.tickMs);
      this.#timer.unref();
    }
  }

  delete(st: StreamState): void {
    if (!this.#waiting.delete(st) || this.#waiting.size > 0 || !this.#timer) return;
    clearInterval(this.#timer);
    this.#timer = undefined;
  }

  #tick(): void {
    const now = performance.now();
    for (const st of this.#waiting) if (now >= st.wakeAt) st.wake();
  }
}

/**
 * TrackOrder: the order's customer, its restaurant, ops and services watch one order.
 *
 * Joins the hub before loading the order, so nothing published meanwhile is missed: signals
 * queue up while the snapshot (or the resume replay) is built and are then applied in order,
 * skipping event sequences the stream already covered. Status events are queued (bounded: a
 * watcher that falls further behind is ended with UNAVAILABLE and resumes with last_event_id);
 * positions are never queued, only the newest is kept and sent when the interval allows.
 */
export function trackOrder(deps: TrackOrderDeps) {
  // Positions are spaced by the interval less a jitter allowance (a tenth, at most 100 ms).
  // With exactly "one per interval", drivers pinging once per interval would have every later
  // fix wait for the worst delay any earlier fix had (each send moves the next slot later and
  // nothing moves it back); the allowance lets a late fix be made up within a few sends.
  const minGapMs = deps.tracking.positionIntervalMs - Math.min(100, Math.floor(deps.tracking.positionIntervalMs / 10));
  const heartbeatMs = deps.tracking.heartbeatMs;
  // A heartbeat goes out at most a twentieth of its interval late (750 ms of 15 s).
  const wheel = new WakeWheel(Math.min(1000, Math.max(5, Math.floor(heartbeatMs / 20))));
  const gate = new OpeningGate(OPENING_CONCURRENCY);

  return async function* (req: TrackOrderRequest, ctx: HandlerContext): AsyncGenerator<Resp> {
    const principal = principalOf(ctx);
    if (principal.role === "driver") throw new PermissionError("role driver may not track orders");
    const orderId = requireId("order_id", req.orderId);
    const resumeAfter = parseLastEventId(orderId, req.lastEventId);
    const signal = ctx.signal;

    const st = new StreamState();
    const watch = deps.hub.join(orderId, st);
    signal.addEventListener("abort", st, { once: true });
    st.aborted = signal.aborted;
    let timer: NodeJS.Timeout | undefined;
    try {
      try {
        await raceSignal(signal, watch.ready);
      } catch (err) {
        if (signal.aborted) throw new ConnectError("stream cancelled", Code.Canceled);
        deps.logger.warn({ err, orderId }, "tracking channel subscribe failed");
        throw new UnavailableError("tracking is unavailable; retry");
      }
      // The snapshot or the replay, from the order as loaded now; the Order itself lives only
      // in that sub-generator, which is finished once the stream goes live.
      if (yield* opening(deps, gate, principal, orderId, resumeAfter, st, signal)) return;
      let lastSentWall = performance.now();
      let lastPosWall = -Infinity;

      while (!st.aborted) {
        if (st.overflow) {
          deps.logger.warn({ orderId }, "tracking watcher too slow; ending stream");
          throw new ConnectError("tracking stream fell behind; reconnect with last_event_id", Code.Unavailable);
        }

        const ev = st.events.shift();
        if (ev) {
          const out = await applyEvent(deps, orderId, st, ev, signal);
          for (const m of out) {
            yield m;
            lastSentWall = performance.now();
            if (m.final) return;
          }
          continue;
        }

        const now = performance.now();
        let due = lastSentWall + heartbeatMs;
        /** Whether a held position is what is due next (woken by its own timer, on time). */
        let positionDue = false;
        const pending = st.pending;
        if (pending) {
          if (st.terminal || pending.position.driverId !== st.driver || st.driver === "" || st.pendingAt <= st.sentPosAt) {
            st.pending = undefined;
            continue;
          }
          const posDue = lastPosWall + minGapMs;
          if (now >= posDue) {
            st.pending = undefined;
            st.sentPosAt = st.pendingAt;
            lastPosWall = now;
            yield locationMsg(pending);
            lastSentWall = performance.now();
            continue;
          }
          if (posDue < due) {
            due = posDue;
            positionDue = true;
          }
        }
        if (now >= lastSentWall + heartbeatMs) {
          yield HEARTBEAT;
          lastSentWall = performance.now();
          continue;
        }
        // Wait for a signal, the abort, or the time something is due.
        const wait = due - now;
        await new Promise<void>((resolve) => {
          st.notify = resolve;
          if (positionDue || wait < wheel.tickMs) {
            timer = setTimeout(resolve, Math.max(1, Math.ceil(wait)));
          } else {
            st.wakeAt = due;
            wheel.add(st);
          }
          if (st.aborted || st.events.length > 0 || st.overflow) st.wake();
        });
        st.notify = undefined;
        if (timer) {
          clearTimeout(timer);
          timer = undefined;
        } else wheel.delete(st);
      }
      // The host is draining (its reason is UNAVAILABLE): tell the client to come back rather
      // than ending as if the order were done. A cancelled client is gone and sees nothing.
      const reason: unknown = signal.reason;
      if (reason instanceof ConnectError && reason.code === Code.Unavailable) {
        throw new ConnectError(`${reason.rawMessage}; reconnect with last_event_id`, Code.Unavailable);
      }
    } finally {
      clearTimeout(timer);
      wheel.delete(st);
      signal.removeEventListener("abort", st);
      watch.leave();
    }
  };
}

/**
 * The opening messages: the snapshot, or on resume the status events missed since
 * resumeAfter. Sets the stream's state (status, driver, last sequence) from the order and
 * returns whether the stream is complete (the order had already ended). They are built under
 * the opening gate; the Order lives only in this finished sub-generator's callee.
 */
async function* opening(
  deps: TrackOrderDeps,
  gate: OpeningGate,
  principal: Principal,
  orderId: string,
  resumeAfter: bigint | undefined,
  st: StreamState,
  signal: AbortSignal,
): AsyncGenerator<Resp, boolean> {
  await gate.enter(signal);
  let first: { messages: Resp[]; terminal: boolean };
  try {
    first = await buildOpening(deps, principal, orderId, resumeAfter, st, signal);
  } finally {
    gate.leave();
  }
  for (const m of first.messages) yield m;
  return first.terminal;
}

async function buildOpening(
  deps: TrackOrderDeps,
  principal: Principal,
  orderId: string,
  resumeAfter: bigint | undefined,
  st: StreamState,
  signal: AbortSignal,
): Promise<{ messages: Resp[]; terminal: boolean }> {
  const order = await loadOrder(deps, orderId, signal);
  if (!maySee(principal, order)) throw new NotFoundError(NOT_FOUND);
  let lastSeq = 0n;
  for (const e of order.timeline) if (e.sequence > lastSeq) lastSeq = e.sequence;
  st.lastSeq = lastSeq;
  st.driver = order.driverId;
  const terminal = (st.terminal = isTerminal(order.status));

  if (resumeAfter === undefined) {
    let snapshot: Awaited<ReturnType<typeof buildSnapshot>>;
    try {
      snapshot = await buildSnapshot(deps, order, terminal);
    } catch (err) {
      deps.logger.warn({ err, orderId }, "reading the driver's profile and last fix failed");
      throw new UnavailableError("tracking is unavailable; retry");
    }
    if (snapshot.positionAt > st.sentPosAt) st.sentPosAt = snapshot.positionAt;
    st.loaded = true;
    const msg = create(TrackOrderResponseSchema, { eventId: `${orderId}-${lastSeq}`, update: { case: "snapshot", value: snapshot.value }, final: terminal });
    return { messages: [msg], terminal };
  }
  st.loaded = true;
  // ETA and payment events take sequences without a timeline entry: the id the watcher resumes after may be one of them.
  if (resumeAfter > st.lastSeq) st.lastSeq = resumeAfter;
  const missed = order.timeline.filter((e) => e.sequence > resumeAfter);
  // A watcher that missed the final message gets it again; one that saw everything of a finished order gets the last entry once more.
  if (missed.length === 0 && terminal && order.timeline.length > 0) missed.push(order.timeline[order.timeline.length - 1]!);
  const messages = missed.map((e, i) => statusMsg(orderId, e, terminal && i === missed.length - 1));
  // ETA changes are not in the timeline: a resumed open order gets the current estimate once.
  const eta = terminal ? undefined : etaFromNow(order.eta, Date.now());
  if (eta?.earliestAt) messages.push(etaMsg("", eta));
  return { messages, terminal };
}

/**
 * Bounds how many streams build their opening messages at once (GetOrder, the driver's profile
 * and last fix): when thousands of watchers connect together (a reconnect storm, a process
 * restart), the rest wait their turn in order instead of all holding half-built snapshots at
 * once, which V8 promoted to the old generation as they outlived young collections (the heap,
 * and so RSS, grew with the burst rather than with the streams). A waiting stream that is
 * cancelled leaves the queue at once.
 */
class OpeningGate {
  #active = 0;
  readonly #queue: (() => void)[] = [];
  constructor(readonly limit: number) {}

  enter(signal: AbortSignal): Promise<void> {
    if (signal.aborted) return Promise.reject(new ConnectError("stream cancelled", Code.Canceled));
    if (this.#active < this.limit) {
      this.#active++;
      return Promise.resolve();
    }
    return new Promise<void>((resolve, reject) => {
      const admit = () => {
        signal.removeEventListener("abort", onAbort);
        resolve();
      };
      const onAbort = () => {
        const i = this.#queue.indexOf(admit);
        if (i >= 0) this.#queue.splice(i, 1);
        reject(new ConnectError("stream cancelled", Code.Canceled));
      };
      signal.addEventListener("abort", onAbort, { once: true });
      this.#queue.push(admit);
    });
  }

  /** Hands the slot to the next waiter, if any. */
  leave(): void {
    const next = this.#queue.shift();
    if (next) next();
    else this.#active--;
  }
}

/**
 * The messages one order event from the channel turns into (none for a duplicate or an event
 * of no interest), filling a gap in the sequence from the order's timeline first. Updates the
 * stream's driver, status and last sequence.
 */
async function applyEvent(deps: TrackOrderDeps, orderId: string, st: StreamState, ev: Event, signal: AbortSignal): Promise<Resp[]> {
  if (ev.orderId !== orderId) return [];
  const seq = ev.sequence;
  if (seq > 0n && seq <= st.lastSeq) return []; // covered by the snapshot or sent already (at least once delivery)
  const out: Resp[] = [];
  if (seq > st.lastSeq + 1n && st.lastSeq > 0n) {
    // A gap: events published while this process was not subscribed (a Redis reconnect)
    // are lost on the channel; the order's timeline has them.
    // Sequences without a timeline entry (ETA and payment events) are skipped; if the gap may
    // have held an ETA change, the order's stored estimate (what it changed to) is sent once,
    // unless this event is itself an ETA change.
    const order = await loadOrder(deps, orderId, signal);
    const gap = seq - 1n - st.lastSeq;
    let covered = 0n;
    for (const e of order.timeline) {
      if (e.sequence <= st.lastSeq || e.sequence >= seq || st.terminal) continue;
      covered++;
      st.lastSeq = e.sequence;
      if (e.kind === TimelineKind.DRIVER_ASSIGNED) st.driver = e.driverId;
      else if (e.kind === TimelineKind.DRIVER_UNASSIGNED) st.driver = "";
      st.terminal = isTerminal(e.status);
      out.push(statusMsg(orderId, e, st.terminal));
    }
    if (covered < gap && !st.terminal && ev.payload.case !== "etaChanged") {
      const eta = etaFromNow(order.eta, Date.now());
      if (eta?.earliestAt) out.push(etaMsg("", eta));
    }
  }
  if (seq > st.lastSeq) st.lastSeq = seq;
  const p = ev.payload;
  if (st.terminal) {
    // The gap held the end of the order: out already ends with the final status.
  } else if (p.case === "etaChanged") {
    const eta = etaFromNow(p.value.eta, Date.now());
    if (eta) out.push(etaMsg(ev.eventId, eta));
  } else {
    const entry = timelineEntryOf(ev);
    if (entry) {
      if (p.case === "driverAssigned") st.driver = p.value.driverId;
      else if (p.case === "driverUnassigned" || p.case === "cancelled" || p.case === "rejected") st.driver = "";
      else if (ev.order) st.driver = ev.order.driverId;
      st.terminal = isTerminal(entry.status);
      out.push(statusMsg(orderId, entry, st.terminal));
    }
  }
  return out;
}

/**
 * The location message of a position signal, built once per signal: the order's streams in
 * this process all get the same signal object from the hub.
 */
function locationMsg(s: PositionSignal): Resp {
  const pos = s.position;
  return (s.response ??= create(TrackOrderResponseSchema, {
    // Positions are not resumable (the proto leaves their event_id empty): a reconnect gets the newest one anyway.
    eventId: "",
    update: { case: "location", value: { location: pos.location, headingDeg: pos.headingDeg, at: pos.at } },
  }));
}


/** Whether the caller may watch the order: its customer, its restaurant, ops, services. */
function maySee(p: Principal, order: Order): boolean {
  switch (p.role) {
    case "customer":
      return order.customerId === p.sub;
    case "restaurant":
      return p.restaurantId !== undefined && order.restaurantId === p.restaurantId;
    case "ops":
    case "service":
      return true;
    default:
      return false;
  }
}

/** The order with its timeline, through the order service. */
async function loadOrder(deps: TrackOrderDeps, orderId: string, signal: AbortSignal): Promise<Order> {
  try {
    const res = await deps.orders().getOrder({ orderId }, { signal });
    if (!res.order) throw new NotFoundError(NOT_FOUND);
    return res.order;
  } catch (err) {
    if (err instanceof NotFoundError) throw err;
    const ce = ConnectError.from(err);
    if (ce.code === Code.NotFound) throw new NotFoundError(NOT_FOUND);
    if (ce.code === Code.Canceled || signal.aborted) throw new ConnectError("stream cancelled", Code.Canceled);
    if (ce.code === Code.Unavailable || ce.code === Code.DeadlineExceeded || ce.code === Code.ResourceExhausted) {
      throw new UnavailableError("order service is unavailable; retry");
    }
    deps.logger.error({ err, orderId }, "GetOrder failed");
    throw new ConnectError("internal error", Code.Internal);
  }
}

/** The first message: the order with its timeline, the driver and its last position when assigned, the ETA. */
async function buildSnapshot(
  deps: TrackOrderDeps,
  order: Order,
  terminal: boolean,
): Promise<{ value: NonNullable<Extract<Msg["update"], { case: "snapshot" }>["value"]>; positionAt: number }> {
  // The order's eta holds the quote's minutes and the current absolute bounds: shown as minutes from now.
  const value: NonNullable<Extract<Msg["update"], { case: "snapshot" }>["value"]> = { order, eta: terminal ? order.eta : etaFromNow(order.eta, Date.now()) };
  let positionAt = 0;
  if (order.driverId !== "") {
    const [profile, fix] = await deps.redis.hgetallMany([driverProfileKey(order.driverId), driverFixKey(order.driverId)]);
    value.driver = { driverId: order.driverId, name: profile?.name ?? "", vehicle: profile?.vehicle ?? "" };
    const last = !terminal && fix ? readFixHash(fix) : undefined;
    if (last) {
      value.driverLocation = { lat: last.lat, lng: last.lng };
      positionAt = last.atMs;
    }
  }
  return { value, positionAt };
}
