import { randomBytes } from "node:crypto";
import { create, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { sql, type Kysely, type Transaction } from "kysely";
import { ActorRole, ActorSchema, MoneySchema, type Actor } from "../../gen/dabba/common/v1/common_pb.js";
import { EventSchema, type Event } from "../../gen/dabba/events/v1/events_pb.js";
import { OrderSchema, OrderStatus, PaymentStatus, TimelineKind, type Order } from "../../gen/dabba/order/v1/order_pb.js";
import type { Db } from "../platform/db.js";
import { AbortedError, AlreadyExistsError, NotFoundError, PermissionError, PreconditionError } from "../platform/errors.js";
import {
  RESTAURANT_OPEN_STATUSES,
  actorRef,
  decide,
  type ActorRef,
  type Caller,
  type CommandRequest,
  type Decision,
  type OrderFacts,
  type Policy,
  type Role,
  type Status,
} from "./domain.js";
import type { HistoryRow, NewHistoryRow, OrderDatabase, OrderRow, OrdersTable, PaymentState, StoredLine } from "./db/tables.js";

/** The stream order events are relayed to. */
export const ORDER_EVENTS_STREAM = "events:orders";
const MAX_CAS_ATTEMPTS = 8;
/** Statuses in which an order no longer occupies its driver. */
const CLOSED_STATUSES = ["DELIVERED", "CANCELLED"] as const;
/** Namespace of the per-driver assignment lock among the database's advisory locks (pg-boss takes some too). */
const DRIVER_LOCK_NS = "dabba.order.driver:";

/** A new order as priced by the handler; the store adds id, status, version and timestamps. */
export interface NewOrder {
  customerId: string;
  restaurantId: string;
  restaurantName: string;
  lines: StoredLine[];
  delivery: { lat: number; lng: number; address: string; instructions: string };
  pickup: { lat: number; lng: number };
  currency: string;
  subtotalMinor: number;
  deliveryFeeMinor: number;
  taxMinor: number;
  tipMinor: number;
  totalMinor: number;
  eta: { minMinutes: number; maxMinutes: number };
  distanceKm: number;
  /** When the restaurant must have answered (its answer policy then confirms or rejects). */
  answerBy: Date;
  /** The placement's authorization (services/order/payments): approved -> PLACED; outcome unknown -> PAYMENT_PENDING. */
  payment: PlacementPayment;
}

/** The authorization made before the order is written, recorded as its first ledger row. */
export interface PlacementPayment {
  token: string;
  pending: boolean;
  ledger: { key: string; amountMinor: number; outcome: "approved" | "timeout" | "error"; reference: string; reason: string };
}

export interface IdempotencyInput {
  customerId: string;
  key: string;
  /** sha256 (hex) of the canonical request bytes. */
  requestHash: string;
  ttlHours: number;
}

/** Command arguments that are not part of the decision. */
export interface CommandExtras {
  reason?: string;
  prepMinutes?: number;
  /** flag_dispatch: dispatch rounds tried, carried on the event. */
  attempts?: number;
}

/** Keyset position in a newest-first list. */
export interface ListCursor {
  createdAtMs: number;
  id: string;
}

export type ListScope = { customerId: string } | { restaurantId: string; includeClosed: boolean };

export interface OrderStore {
  /** A live (unexpired) idempotency record with its order. */
  findIdempotent(customerId: string, key: string): Promise<{ requestHash: string; order: Order } | undefined>;
  /**
   * Creates the order in PLACED with its idempotency row, PLACED history row and outbox row in
   * one transaction. A concurrent or earlier use of the key returns the stored order when the
   * request hash matches and throws AlreadyExistsError otherwise.
   */
  place(
    order: NewOrder,
    idem: IdempotencyInput,
    /** A PAYMENT_PENDING order is written in a transaction that also runs this (the reconciler's job). */
    onPending?: (trx: Kysely<any>, orderId: string) => Promise<void>,
  ): Promise<{ order: Order; replayed: boolean }>;
  /** The order (with timeline when asked); undefined when it does not exist. */
  get(id: string, opts?: { timeline?: boolean }): Promise<Order | undefined>;
  list(scope: ListScope, page: { limit: number; after?: ListCursor }): Promise<{ orders: Order[]; next?: ListCursor }>;
  /** A restaurant's open orders, oldest first (the feed snapshot). */
  listOpenForRestaurant(restaurantId: string): Promise<Order[]>;
  /** Runs one command through decide() and a compare-and-set; returns the order as it is now. */
  execute(orderId: string, req: CommandRequest, caller: Caller, extras?: CommandExtras): Promise<Order>;
  /**
   * Stores a recomputed estimate (absolute bounds) when either bound moved by at least
   * minMoveMs from the stored one, and writes an eta_changed event in the order's sequence
   * (no timeline entry, no new version, as payment events). Compare-and-set on the version the
   * estimate was computed from: a transition since then wins (its event brings a recompute).
   * Open orders only. Returns the order as stored, or undefined when nothing was written.
   */
  updateEta(orderId: string, expectedVersion: bigint, eta: { lowAt: Date; highAt: Date }, minMoveMs: number): Promise<Order | undefined>;
  /** Open orders with an assigned driver (the ETA updater's recompute as drivers move), oldest first, at most `limit`. */
  listWithDriver(limit: number): Promise<Order[]>;
}

export interface OrderStoreOptions {
  db: Db;
  policy: Policy;
  /** Active orders one driver may carry at once (config.dispatch.stackSize); an assignment beyond it is refused. */
  driverStackSize: number;
  /** Called after every committed write (the outbox relay's wake). */
  onCommit?: () => void;
  /** Order id generator (tests). */
  newId?: () => string;
}


/**
 * Order ids that sort by creation time within a process (ms timestamp, a per-ms counter, then
 * randomness), so the (created_at, id) keyset lists orders placed in the same millisecond in
 * placement order.
 */
function timeOrderedId(): () => string {
  let lastMs = 0;
  let seq = 0;
  return () => {
    const now = Date.now();
    if (now === lastMs) seq++;
    else {
      lastMs = now;
      seq = 0;
    }
    return `ord_${now.toString(36).padStart(9, "0")}${seq.toString(36).padStart(3, "0")}${randomBytes(6).toString("hex")}`;
  };
}
class CasLost extends Error {}

/**
 * Every orders column, named: a prepared statement must not select `o.*`, whose result type
 * changes when a migration adds a column and then fails on connections that prepared it earlier
 * ("cached plan must not change result type").
 */
const ORDER_COLUMNS_O = [
  "o.id",
  "o.customer_id",
  "o.restaurant_id",
  "o.restaurant_name",
  "o.status",
  "o.version",
  "o.driver_id",
  "o.last_fencing_token",
  "o.lines",
  "o.delivery_lat",
  "o.delivery_lng",
  "o.delivery_address",
  "o.delivery_instructions",
  "o.pickup_lat",
  "o.pickup_lng",
  "o.currency",
  "o.subtotal_minor",
  "o.delivery_fee_minor",
  "o.tax_minor",
  "o.tip_minor",
  "o.total_minor",
  "o.eta_min_minutes",
  "o.eta_max_minutes",
  "o.distance_km",
  "o.cancelled_by_role",
  "o.cancelled_by_id",
  "o.cancellation_reason",
  "o.cancellation_fee_minor",
  "o.next_event_seq",
  "o.dispatch_flagged_at",
  "o.payment_status",
  "o.payment_token",
  "o.due_minor",
  "o.charged_minor",
  "o.refunded_minor",
  "o.delivered_at",
  "o.answer_by",
  "o.eta_low_at",
  "o.eta_high_at",
  "o.created_at",
  "o.updated_at",
] as const;
// Compile-time check that the list names every column.
type MissingOrderColumn = Exclude<keyof OrdersTable, (typeof ORDER_COLUMNS_O)[number] extends `o.${infer C}` ? C : never>;
const _allOrderColumns: [MissingOrderColumn] extends [never] ? true : MissingOrderColumn = true;
void _allOrderColumns;


export function createOrderStore(opts: OrderStoreOptions): OrderStore {
  const db = opts.db.kysely as Kysely<OrderDatabase>;
  const policy = opts.policy;
  const stackSize = opts.driverStackSize;
  if (!Number.isInteger(stackSize) || stackSize < 1) throw new Error(`driverStackSize must be a positive integer, got ${stackSize}`);
  const committed = () => opts.onCommit?.();
  const newId = opts.newId ?? timeOrderedId();

  async function readRow(id: string): Promise<OrderRow | undefined> {
    return db.selectFrom("orders").selectAll().where("id", "=", id).executeTakeFirst();
  }

  async function findIdempotent(customerId: string, key: string) {
    // One round trip: the key and its order together (a named prepared statement on Postgres).
    const q = db
      .selectFrom("idempotency_keys as k")
      .innerJoin("orders as o", "o.id", "k.order_id")
      .select([...ORDER_COLUMNS_O, "k.request_hash"])
      .where("k.customer_id", "=", customerId)
      .where("k.key", "=", key)
      .where("k.expires_at", ">", new Date())
      .compile();
    const [rec] = await opts.db.prepared<OrderRow & { request_hash: string }>("order_find_idempotent", q);
    if (!rec) return undefined;
    const { request_hash: requestHash, ...row } = rec;
    return { requestHash, order: toOrder(row) };
  }

  /**
   * The idempotency row, the order, its PLACED history row and its outbox row in ONE statement
   * (data-modifying CTEs; a statement is atomic, and the history foreign key is checked at its
   * end): one round trip and one commit per placement. The order, history and outbox inserts
   * read from the claim, so a key already taken writes nothing. The snapshot in the event is
   * built from the same values the row gets, so nothing is read back.
   */
  async function insertPlaced(
    id: string,
    o: NewOrder,
    idem: IdempotencyInput,
    now: Date,
    onPending?: (trx: Kysely<any>, orderId: string) => Promise<void>,
  ): Promise<Order | undefined> {
    const pending = o.payment.pending;
    const status: Status = pending ? "PAYMENT_PENDING" : "PLACED";
    const actor: ActorRef = { role: "customer", id: o.customerId };
    const row: OrderRow = {
      id,
      customer_id: o.customerId,
      restaurant_id: o.restaurantId,
      restaurant_name: o.restaurantName,
      status,
      version: 1,
      driver_id: null,
      last_fencing_token: 0,
      lines: o.lines,
      delivery_lat: o.delivery.lat,
      delivery_lng: o.delivery.lng,
      delivery_address: o.delivery.address,
      delivery_instructions: o.delivery.instructions,
      pickup_lat: o.pickup.lat,
      pickup_lng: o.pickup.lng,
      currency: o.currency,
      subtotal_minor: o.subtotalMinor,
      delivery_fee_minor: o.deliveryFeeMinor,
      tax_minor: o.taxMinor,
      tip_minor: o.tipMinor,
      total_minor: o.totalMinor,
      eta_min_minutes: o.eta.minMinutes,
      eta_max_minutes: o.eta.maxMinutes,
      distance_km: o.distanceKm,
      cancelled_by_role: null,
      cancelled_by_id: null,
      cancellation_reason: null,
      cancellation_fee_minor: 0,
      next_event_seq: 2,
      dispatch_flagged_at: null,
      payment_status: pending ? "pending" : "authorized",
      payment_token: o.payment.token,
      due_minor: 0,
      charged_minor: 0,
      refunded_minor: 0,
      delivered_at: null,
      answer_by: o.answerBy,
      // The quote's range as absolute bounds from the placement (services/order/eta-updater moves them later).
      eta_low_at: new Date(now.getTime() + o.eta.minMinutes * 60_000),
      eta_high_at: new Date(now.getTime() + o.eta.maxMinutes * 60_000),
      created_at: now,
      updated_at: now,
    };
    const snapshot = toOrder(row);
    const event = buildEvent(snapshot, 1, actor, now, { case: "placed", value: { total: snapshot.total } });
    const q = sql<{ claimed: number }>`
      with claim as (
        insert into idempotency_keys (customer_id, key, request_hash, order_id, created_at, expires_at)
        values (${idem.customerId}, ${idem.key}, ${idem.requestHash}, ${id}, ${now}, ${new Date(now.getTime() + idem.ttlHours * 3_600_000)})
        on conflict (customer_id, key) do nothing
        returning order_id
      ), ord as (
        insert into orders (
          id, customer_id, restaurant_id, restaurant_name, status, version, driver_id, lines,
          delivery_lat, delivery_lng, delivery_address, delivery_instructions, pickup_lat, pickup_lng,
          currency, subtotal_minor, delivery_fee_minor, tax_minor, tip_minor, total_minor,
          eta_min_minutes, eta_max_minutes, distance_km, answer_by, next_event_seq, created_at, updated_at, payment_status, payment_token,
          eta_low_at, eta_high_at)
        select order_id, ${row.customer_id}::text, ${row.restaurant_id}::text, ${row.restaurant_name}::text, ${status}::text, 1, null,
          ${JSON.stringify(row.lines)}::jsonb, ${row.delivery_lat}::float8, ${row.delivery_lng}::float8,
          ${row.delivery_address}::text, ${row.delivery_instructions}::text, ${row.pickup_lat}::float8, ${row.pickup_lng}::float8,
          ${row.currency}::text, ${row.subtotal_minor}::int8, ${row.delivery_fee_minor}::int8, ${row.tax_minor}::int8,
          ${row.tip_minor}::int8, ${row.total_minor}::int8, ${row.eta_min_minutes}::int4, ${row.eta_max_minutes}::int4,
          ${row.distance_km}::float8, ${row.answer_by}::timestamptz, 2, ${now}::timestamptz, ${now}::timestamptz,
          ${row.payment_status}::text, ${row.payment_token}::text, ${row.eta_low_at}::timestamptz, ${row.eta_high_at}::timestamptz
        from claim
        returning id
      ), hist as (
        insert into order_status_history (order_id, seq, kind, status, actor_role, actor_id, reason, driver_id, at)
        select id, 1, 'status', ${status}::text, ${actor.role}::text, ${actor.id}::text, '', null, ${now}::timestamptz from ord
      ), box as (
        insert into outbox (stream, event_type, event_key, event_id, payload, published_at)
        select ${ORDER_EVENTS_STREAM}::text, ${eventType(event)}::text, id, ${event.eventId}::text, ${outboxPayload(event)}::bytea, null from ord
        where not ${pending}::bool
      ), led as (
        insert into payment_ledger (order_id, operation, amount_minor, currency, outcome, idempotency_key, gateway_ref, reason)
        select id, 'authorize', ${o.payment.ledger.amountMinor}::int8, ${row.currency}::text, ${o.payment.ledger.outcome}::text,
          ${o.payment.ledger.key}::text, ${o.payment.ledger.reference}::text, ${o.payment.ledger.reason}::text from ord
        on conflict (idempotency_key) where outcome = 'approved' do nothing
      )
      select count(*)::int as claimed from claim`.compile(db);
    if (pending) {
      // PAYMENT_PENDING (rare): the reconciler's job commits with the order.
      const placed = await db.transaction().execute(async (trx) => {
        const { rows } = await trx.executeQuery(q);
        if (rows[0]?.claimed !== 1) return false;
        await onPending?.(trx, id);
        return true;
      });
      return placed ? snapshot : undefined;
    }
    // Prepared: this statement's ~30 parameters and five CTEs cost more to parse and plan than to run.
    const [r] = await opts.db.prepared<{ claimed: number }>("order_insert_placed", q);
    return r?.claimed === 1 ? snapshot : undefined;
  }

  async function place(
    o: NewOrder,
    idem: IdempotencyInput,
    onPending?: (trx: Kysely<any>, orderId: string) => Promise<void>,
  ): Promise<{ order: Order; replayed: boolean }> {
    // Two tries: the second runs only after an expired key was removed (an expired key is ignored and replaced).
    for (let attempt = 0; attempt < 2; attempt++) {
      const now = new Date();
      const order = await insertPlaced(newId(), o, idem, now, onPending);
      if (order) {
        committed();
        return { order, replayed: false };
      }
      const existing = await findIdempotent(idem.customerId, idem.key);
      if (existing) {
        if (existing.requestHash !== idem.requestHash) {
          throw new AlreadyExistsError("idempotency-key was already used with a different request");
        }
        return { order: existing.order, replayed: true };
      }
      const expired = await db
        .deleteFrom("idempotency_keys")
        .where("customer_id", "=", idem.customerId)
        .where("key", "=", idem.key)
        .where("expires_at", "<=", now)
        .executeTakeFirst();
      if (Number(expired.numDeletedRows) === 0) break;
    }
    throw new AbortedError("idempotency key is being replaced concurrently; retry");
  }

  async function get(id: string, o: { timeline?: boolean } = {}): Promise<Order | undefined> {
    const row = await readRow(id);
    if (!row) return undefined;
    if (!o.timeline) return toOrder(row);
    const history = await db.selectFrom("order_status_history").selectAll().where("order_id", "=", id).orderBy("seq").execute();
    return toOrder(row, history);
  }

  async function list(scope: ListScope, page: { limit: number; after?: ListCursor }) {
    let q = db.selectFrom("orders").selectAll();
    if ("customerId" in scope) q = q.where("customer_id", "=", scope.customerId);
    else {
      q = q.where("restaurant_id", "=", scope.restaurantId);
      if (!scope.includeClosed) q = q.where("status", "not in", ["DELIVERED", "CANCELLED"]);
    }
    if (page.after) {
      const t = new Date(page.after.createdAtMs);
      const id = page.after.id;
      q = q.where((eb) => eb.or([eb("created_at", "<", t), eb.and([eb("created_at", "=", t), eb("id", "<", id)])]));
    }
    const rows = await q.orderBy("created_at", "desc").orderBy("id", "desc").limit(page.limit + 1).execute();
    const more = rows.length > page.limit;
    const pageRows = rows.slice(0, page.limit);
    const last = pageRows[pageRows.length - 1];
    return {
      orders: pageRows.map((r) => toOrder(r)),
      next: more && last ? { createdAtMs: new Date(last.created_at).getTime(), id: last.id } : undefined,
    };
  }

  async function listOpenForRestaurant(restaurantId: string): Promise<Order[]> {
    const rows = await db
      .selectFrom("orders")
      .selectAll()
      .where("restaurant_id", "=", restaurantId)
      .where("status", "in", [...RESTAURANT_OPEN_STATUSES])
      .orderBy("created_at")
      .orderBy("id")
      .execute();
    return rows.map((r) => toOrder(r));
  }

  async function execute(orderId: string, req: CommandRequest, caller: Caller, extras: CommandExtras = {}): Promise<Order> {
    let firstStatus: Status | undefined;
    for (let attempt = 0; attempt < MAX_CAS_ATTEMPTS; attempt++) {
      const row = await readRow(orderId);
      if (!row) throw new NotFoundError("order not found");
      const d = decide(req, caller, factsOf(row), policy);
      if (d.kind === "deny") throw denial(d);
      if (d.kind === "noop") return toOrder(row);
      firstStatus ??= row.status;
      if (row.status !== firstStatus) {
        // Someone else moved the order first; the caller's command was aimed at the old state.
        throw new PreconditionError(
          `order is now ${row.status} (changed concurrently from ${firstStatus}); ${req.command} was not applied`,
        );
      }
      const updated = await applyTransition(row, d, req, caller, extras);
      if (updated) {
        committed();
        return updated;
      }
    }
    throw new AbortedError("order is changing too fast; retry");
  }

  /** One transaction: CAS update + history + outbox. Undefined when the CAS lost. */
  async function applyTransition(
    row: OrderRow,
    d: Extract<Decision, { kind: "transition" }>,
    req: CommandRequest,
    caller: Caller,
    extras: CommandExtras,
  ): Promise<Order | undefined> {
    const now = new Date();
    const actor = actorRef(caller);
    const reason = extras.reason ?? "";
    // Assignment changes and the dispatch flag are one event each, with no status entered.
    const single = d.assignDriverId !== undefined || d.unassignDriverId !== undefined || d.flagDispatch === true;
    const eventCount = single ? 1 : d.statuses.length;
    const firstSeq = Number(row.next_event_seq);
    const cancels = d.statuses.includes("CANCELLED");
    const finalStatus = d.statuses.length ? d.statuses[d.statuses.length - 1] : row.status;

    const set: Record<string, unknown> = {
      status: finalStatus,
      version: sql`version + ${eventCount}`,
      next_event_seq: sql`next_event_seq + ${eventCount}`,
      updated_at: now,
    };
    if (cancels) {
      Object.assign(set, {
        driver_id: null,
        cancelled_by_role: actor.role,
        cancelled_by_id: actor.id,
        cancellation_reason: reason,
        cancellation_fee_minor: d.feeMinor,
      });
    }
    if (d.assignDriverId !== undefined) {
      set.driver_id = d.assignDriverId;
      if (d.fencingToken !== undefined) set.last_fencing_token = d.fencingToken;
    }
    if (d.unassignDriverId !== undefined) set.driver_id = null;
    if (d.flagDispatch) set.dispatch_flagged_at = now;
    if (d.statuses.includes("DELIVERED")) set.delivered_at = now;
    // What the customer owes now (services/order/payments settles the gateway to it): the total
    // once accepted; on a cancellation the fee kept (0 unless late), never more than was still due.
    if (req.command === "accept") set.due_minor = sql`total_minor`;
    if (cancels) set.due_minor = sql`least(${d.feeMinor}::int8, due_minor)`;
    if (req.command === "payment_settled") set.payment_status = "authorized";
    if (req.command === "payment_failed") set.payment_status = "failed";
    // An order whose payment settled late reaches PLACED now: the restaurant gets its full answer time from now.
    if (d.statuses.includes("PLACED")) set.answer_by = sql`answer_by + (${now}::timestamptz - created_at)`;

    try {
      return await db.transaction().execute(async (trx) => {
        if (d.assignDriverId !== undefined) await checkDriverCapacity(trx, d.assignDriverId, row.id);
        let upd = trx
          .updateTable("orders")
          .set(set)
          .where("id", "=", row.id)
          .where("status", "=", row.status)
          .where("version", "=", Number(row.version))
          // A payment event (services/order/payments) takes a sequence without a new version.
          .where("next_event_seq", "=", firstSeq);
        if (d.assignDriverId !== undefined) {
          upd = upd.where("driver_id", "is", null).where("status", "in", ["CONFIRMED", "PREPARING", "READY_FOR_PICKUP"]);
          if (d.fencingToken !== undefined) upd = upd.where("last_fencing_token", "<=", d.fencingToken);
        }
        if (d.unassignDriverId !== undefined) upd = upd.where("driver_id", "=", d.unassignDriverId);
        if (d.flagDispatch) upd = upd.where("driver_id", "is", null).where("dispatch_flagged_at", "is", null);
        const after = await upd.returningAll().executeTakeFirst();
        if (!after) throw new CasLost();

        const history: NewHistoryRow[] = [];
        const events: Event[] = [];
        const finalOrder = toOrder(after);
        const base = { order_id: row.id, actor_role: actor.role, actor_id: actor.id, at: now };
        if (d.assignDriverId !== undefined) {
          history.push({ ...base, seq: firstSeq, kind: "driver_assigned", status: row.status, reason, driver_id: d.assignDriverId });
          events.push(buildEvent(finalOrder, firstSeq, actor, now, {
            case: "driverAssigned",
            value: { driverId: d.assignDriverId, fencingToken: BigInt(req.fencingToken ?? 0) },
          }));
        } else if (d.unassignDriverId !== undefined) {
          history.push({ ...base, seq: firstSeq, kind: "driver_unassigned", status: row.status, reason, driver_id: d.unassignDriverId });
          events.push(buildEvent(finalOrder, firstSeq, actor, now, {
            case: "driverUnassigned",
            value: { driverId: d.unassignDriverId, reason },
          }));
        } else if (d.flagDispatch) {
          history.push({ ...base, seq: firstSeq, kind: "dispatch_flagged", status: row.status, reason, driver_id: null });
          events.push(buildEvent(finalOrder, firstSeq, actor, now, { case: "dispatchFlagged", value: { attempts: extras.attempts ?? 0 } }));
        } else {
          const baseVersion = Number(row.version);
          d.statuses.forEach((status, i) => {
            const seq = firstSeq + i;
            const isLast = i === d.statuses.length - 1;
            // Intermediate events (READY on the way to PICKED_UP) carry the order as it was then.
            const snapshot = isLast ? finalOrder : create(OrderSchema, { ...finalOrder, status: OrderStatus[status], version: BigInt(baseVersion + i + 1) });
            const stored = status === "CANCELLED" || req.command === "reject";
            history.push({
              ...base,
              seq,
              kind: "status",
              status,
              reason: stored ? reason : "",
              driver_id: status === "CANCELLED" ? d.releaseDriverId : null,
            });
            events.push(buildEvent(snapshot, seq, actor, now, payloadFor(status, req, d, row, reason, extras)));
          });
        }
        await trx.insertInto("order_status_history").values(history).execute();
        await writeOutbox(trx, events);
        return finalOrder;
      });
    } catch (err) {
      if (err instanceof CasLost) return undefined;
      throw err;
    }
  }

  /**
   * Refuses an assignment that would put the driver over the stack limit. Assignments of one
   * driver serialize on a transaction-scoped advisory lock, so each counts after the previous
   * one committed: the lock and the count are two statements because under READ COMMITTED a
   * statement's snapshot is taken when it starts, and a count in the locking statement would
   * miss an assignment committed while it waited. Releases (delivery, cancel, unassign) only
   * lower the count and need no lock.
   */
  async function checkDriverCapacity(trx: Transaction<OrderDatabase>, driverId: string, orderId: string): Promise<void> {
    await sql`select pg_advisory_xact_lock(hashtextextended(${DRIVER_LOCK_NS + driverId}, 0))`.execute(trx);
    const { n } = await trx
      .selectFrom("orders")
      .select((eb) => eb.fn.countAll<string | number>().as("n"))
      .where("driver_id", "=", driverId)
      .where("status", "not in", [...CLOSED_STATUSES])
      .where("id", "<>", orderId)
      .executeTakeFirstOrThrow();
    const carried = Number(n);
    if (carried >= stackSize) {
      throw new PreconditionError(`driver already carries ${carried} active orders (limit ${stackSize})`);
    }
  }

  async function updateEta(orderId: string, expectedVersion: bigint, eta: { lowAt: Date; highAt: Date }, minMoveMs: number): Promise<Order | undefined> {
    const now = new Date();
    const thresholdS = Math.max(0, minMoveMs) / 1000;
    const order = await db.transaction().execute(async (trx) => {
      const after = await trx
        .updateTable("orders")
        .set({ eta_low_at: eta.lowAt, eta_high_at: eta.highAt, next_event_seq: sql`next_event_seq + 1` })
        .where("id", "=", orderId)
        .where("version", "=", Number(expectedVersion))
        .where("status", "in", ["PLACED", "CONFIRMED", "PREPARING", "READY_FOR_PICKUP", "PICKED_UP", "EN_ROUTE"])
        .where(sql<boolean>`(eta_low_at is null or eta_high_at is null
          or abs(extract(epoch from (eta_low_at - ${eta.lowAt}::timestamptz))) >= ${thresholdS}
          or abs(extract(epoch from (eta_high_at - ${eta.highAt}::timestamptz))) >= ${thresholdS})`)
        .returningAll()
        .executeTakeFirst();
      if (!after) return undefined;
      const stored = toOrder(after);
      const lowMin = Math.max(0, Math.floor((eta.lowAt.getTime() - now.getTime()) / 60_000));
      const range = {
        minMinutes: lowMin,
        maxMinutes: Math.max(lowMin, Math.ceil((eta.highAt.getTime() - now.getTime()) / 60_000)),
        earliestAt: timestampFromDate(eta.lowAt),
        latestAt: timestampFromDate(eta.highAt),
      };
      const ev = buildEvent(stored, Number(after.next_event_seq) - 1, { role: "service", id: "eta" }, now, { case: "etaChanged", value: { eta: range } });
      await writeOutbox(trx, [ev]);
      return stored;
    });
    if (order) committed();
    return order;
  }

  async function listWithDriver(limit: number): Promise<Order[]> {
    const rows = await db
      .selectFrom("orders")
      .selectAll()
      .where("driver_id", "is not", null)
      .where("status", "in", ["CONFIRMED", "PREPARING", "READY_FOR_PICKUP", "PICKED_UP", "EN_ROUTE"])
      .orderBy("created_at")
      .limit(limit)
      .execute();
    return rows.map((r) => toOrder(r));
  }

  return { findIdempotent, place, get, list, listOpenForRestaurant, execute, updateEta, listWithDriver };
}

// ---------------------------------------------------------------------------------------------
// Mappers (rows never leave the store).

const ROLE_TO_PROTO: Record<Role, ActorRole> = {
  customer: ActorRole.CUSTOMER,
  restaurant: ActorRole.RESTAURANT,
  driver: ActorRole.DRIVER,
  ops: ActorRole.OPS,
  service: ActorRole.SERVICE,
};

const KIND_TO_PROTO: Record<string, TimelineKind> = {
  status: TimelineKind.STATUS,
  driver_assigned: TimelineKind.DRIVER_ASSIGNED,
  driver_unassigned: TimelineKind.DRIVER_UNASSIGNED,
  dispatch_flagged: TimelineKind.DISPATCH_FLAGGED,
};

const PAYMENT_STATUS_TO_PROTO: Record<PaymentState, PaymentStatus> = {
  pending: PaymentStatus.PENDING,
  authorized: PaymentStatus.AUTHORIZED,
  captured: PaymentStatus.CAPTURED,
  voided: PaymentStatus.VOIDED,
  partially_refunded: PaymentStatus.PARTIALLY_REFUNDED,
  refunded: PaymentStatus.REFUNDED,
  failed: PaymentStatus.FAILED,
};

function actorProto(a: { role: string; id: string }): Actor {
  return create(ActorSchema, { role: ROLE_TO_PROTO[a.role as Role] ?? ActorRole.UNSPECIFIED, id: a.id });
}

function factsOf(row: OrderRow): OrderFacts {
  return {
    status: row.status,
    customerId: row.customer_id,
    restaurantId: row.restaurant_id,
    driverId: row.driver_id,
    lastFencingToken: Number(row.last_fencing_token),
    subtotalMinor: Number(row.subtotal_minor),
    cancelledBy: row.cancelled_by_role ? { role: row.cancelled_by_role as Role, id: row.cancelled_by_id ?? "" } : null,
    dispatchFlagged: row.dispatch_flagged_at !== null,
  };
}

/** Maps a stored row (and optionally its history) to the Order message. */
export function toOrder(row: OrderRow, history?: HistoryRow[]): Order {
  const money = (m: number | bigint) => create(MoneySchema, { amountMinor: BigInt(m), currency: row.currency });
  const lines = (typeof row.lines === "string" ? JSON.parse(row.lines) : row.lines) as StoredLine[];
  return create(OrderSchema, {
    id: row.id,
    customerId: row.customer_id,
    restaurantId: row.restaurant_id,
    restaurantName: row.restaurant_name,
    status: OrderStatus[row.status],
    version: BigInt(row.version),
    lines: lines.map((l) => ({
      itemId: l.itemId,
      name: l.name,
      quantity: l.quantity,
      unitPrice: money(l.unitPriceMinor),
      lineTotal: money(l.lineTotalMinor),
      note: l.note,
      options: l.options.map((op) => ({ optionId: op.optionId, name: op.name, priceDelta: money(op.priceDeltaMinor) })),
    })),
    delivery: {
      location: { lat: row.delivery_lat, lng: row.delivery_lng },
      addressLine: row.delivery_address,
      instructions: row.delivery_instructions,
    },
    pickupLocation: { lat: row.pickup_lat, lng: row.pickup_lng },
    subtotal: money(row.subtotal_minor),
    deliveryFee: money(row.delivery_fee_minor),
    tax: money(row.tax_minor),
    tip: money(row.tip_minor),
    total: money(row.total_minor),
    eta: {
      minMinutes: row.eta_min_minutes,
      maxMinutes: row.eta_max_minutes,
      earliestAt: row.eta_low_at ? timestampFromDate(new Date(row.eta_low_at)) : undefined,
      latestAt: row.eta_high_at ? timestampFromDate(new Date(row.eta_high_at)) : undefined,
    },
    driverId: row.driver_id ?? "",
    cancelledBy: row.cancelled_by_role ? actorProto({ role: row.cancelled_by_role, id: row.cancelled_by_id ?? "" }) : undefined,
    cancellationReason: row.cancellation_reason ?? "",
    cancellationFee: money(row.cancellation_fee_minor),
    timeline: (history ?? []).map((h) => ({
      kind: KIND_TO_PROTO[h.kind] ?? TimelineKind.UNSPECIFIED,
      status: OrderStatus[h.status],
      actor: actorProto({ role: h.actor_role, id: h.actor_id }),
      reason: h.reason,
      driverId: h.driver_id ?? "",
      at: timestampFromDate(new Date(h.at)),
      sequence: BigInt(h.seq),
    })),
    createdAt: timestampFromDate(new Date(row.created_at)),
    updatedAt: timestampFromDate(new Date(row.updated_at)),
    distanceKm: row.distance_km,
    dispatchFlaggedAt: row.dispatch_flagged_at ? timestampFromDate(new Date(row.dispatch_flagged_at)) : undefined,
    paymentStatus: PAYMENT_STATUS_TO_PROTO[row.payment_status] ?? PaymentStatus.UNSPECIFIED,
    charged: money(row.charged_minor),
    refunded: money(row.refunded_minor),
    deliveredAt: row.delivered_at ? timestampFromDate(new Date(row.delivered_at)) : undefined,
    restaurantAnswerBy: row.answer_by && row.status === "PLACED" ? timestampFromDate(new Date(row.answer_by)) : undefined,
  });
}

type Payload = MessageInitShape<typeof EventSchema>["payload"];

function payloadFor(
  status: Status,
  req: CommandRequest,
  d: Extract<Decision, { kind: "transition" }>,
  row: OrderRow,
  reason: string,
  extras: CommandExtras,
): Payload {
  const driverId = row.driver_id ?? "";
  switch (status) {
    case "PLACED":
      return { case: "placed", value: { total: { amountMinor: BigInt(row.total_minor), currency: row.currency } } };
    case "CONFIRMED":
      return { case: "confirmed", value: { prepMinutes: extras.prepMinutes ?? 0 } };
    case "PREPARING":
      return { case: "preparing", value: {} };
    case "READY_FOR_PICKUP":
      return { case: "ready", value: {} };
    case "PICKED_UP":
      return { case: "pickedUp", value: { driverId } };
    case "EN_ROUTE":
      return { case: "enRoute", value: { driverId } };
    case "DELIVERED":
      return { case: "delivered", value: { driverId } };
    case "CANCELLED":
      if (req.command === "reject") return { case: "rejected", value: { reason } };
      return {
        case: "cancelled",
        value: {
          reason,
          previousStatus: OrderStatus[d.from],
          fee: { amountMinor: BigInt(d.feeMinor), currency: row.currency },
          releasedDriverId: d.releaseDriverId ?? "",
        },
      };
    default:
      throw new Error(`no event for entering ${status}`);
  }
}

function buildEvent(order: Order, seq: number, actor: ActorRef, at: Date, payload: Payload): Event {
  return create(EventSchema, {
    eventId: `${order.id}-${seq}`,
    orderId: order.id,
    sequence: BigInt(seq),
    occurredAt: timestampFromDate(at),
    actor: actorProto(actor),
    order: create(OrderSchema, { ...order, timeline: [] }),
    payload,
  });
}

const PAYLOAD_FIELD_NAMES = new Map(EventSchema.fields.map((f) => [f.localName, f.name]));

/** The outbox event_type of an event: its payload case as named in the proto (e.g. "placed", "driver_assigned"). */
export function eventType(e: Event): string {
  return (e.payload.case && PAYLOAD_FIELD_NAMES.get(e.payload.case)) ?? "unknown";
}

/** The outbox payload of an event. pg sends a Buffer as bytea; a bare Uint8Array would be serialized as JSON. */
function outboxPayload(e: Event): Buffer {
  const bin = toBinary(EventSchema, e);
  return Buffer.from(bin.buffer, bin.byteOffset, bin.byteLength);
}

async function writeOutbox(trx: Transaction<OrderDatabase>, events: Event[]): Promise<void> {
  if (events.length === 0) return;
  await trx
    .insertInto("outbox")
    .values(
      events.map((e) => ({
        stream: ORDER_EVENTS_STREAM,
        event_type: eventType(e),
        event_key: e.orderId,
        event_id: e.eventId,
        payload: outboxPayload(e),
        published_at: null,
      })),
    )
    .execute();
}

function denial(d: Extract<Decision, { kind: "deny" }>): Error {
  switch (d.code) {
    case "NOT_FOUND":
      return new NotFoundError(d.message);
    case "PERMISSION_DENIED":
      return new PermissionError(d.message);
    case "FAILED_PRECONDITION":
      return new PreconditionError(d.message);
  }
}
