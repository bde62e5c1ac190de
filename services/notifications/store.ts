import { sql, type Kysely, type Transaction } from "kysely";
import type { Db } from "../platform/db.js";
import type { Message, OrderParties, Recipient } from "./domain.js";
import type { AttemptRow, DeliveryRow, NotificationsDatabase, WebhookRow } from "./db/tables.js";

export type NTrx = Transaction<NotificationsDatabase>;

/** An inbox message as the RPCs show it. */
export interface InboxMessage {
  id: string;
  orderId: string;
  kind: string;
  title: string;
  body: string;
  createdAt: Date;
  read: boolean;
}

/** A newly inserted inbox message (one push each). */
export interface InsertedMessage {
  id: string;
  message: Message;
}

export interface Webhook {
  id: string;
  url: string;
  eventTypes: string[];
  restaurantId: string | null;
  secret: string;
  createdAt: Date;
  deletedAt: Date | null;
}

/** A delivery with what an attempt needs of its webhook. */
export interface DeliveryWork {
  id: string;
  webhookId: string;
  eventId: string;
  url: string;
  secret: string;
  body: string;
  status: DeliveryRow["status"];
  attempts: number;
  roundStart: number;
}

export interface Delivery {
  id: string;
  webhookId: string;
  eventId: string;
  eventType: string;
  orderId: string;
  status: DeliveryRow["status"];
  attempts: number;
  lastStatusCode: number | null;
  lastError: string | null;
  createdAt: Date;
  updatedAt: Date;
}

export interface Attempt {
  deliveryId: string;
  attempt: number;
  statusCode: number | null;
  error: string | null;
  durationMs: number;
  at: Date;
}

/** The outcome of claiming a delivery for an attempt. */
export type Claim =
  | { claimed: true; work: DeliveryWork }
  /** Already delivered, dead, or past this attempt (a duplicate or stale job): nothing to do. */
  | { claimed: false; reason: "done" }
  /** Another worker holds it for an attempt right now: try later. */
  | { claimed: false; reason: "busy" };

const toWebhook = (r: WebhookRow): Webhook => ({
  id: r.id,
  url: r.url,
  eventTypes: r.event_types,
  restaurantId: r.restaurant_id,
  secret: r.secret,
  createdAt: r.created_at,
  deletedAt: r.deleted_at,
});

/** Storage of the inbox, order parties, webhooks, deliveries and the delivery log (tracking's Postgres tables). */
export function createNotificationsStore(db: Db) {
  const k = db.kysely as unknown as Kysely<NotificationsDatabase>;

  return {
    transaction<T>(fn: (trx: NTrx) => Promise<T>): Promise<T> {
      return k.transaction().execute(fn);
    },

    /**
     * What one event does to the store, in one statement (one round trip): records the order's
     * parties as of the event's sequence when it carries them (an older event never overwrites a
     * newer one), inserts its messages into the inbox (a repeat of the event inserts none), and
     * reads the webhooks that may want it (the restaurant's own and partner ones, not deleted).
     * Returns the newly inserted messages and those webhooks.
     */
    async recordEvent(e: {
      eventId: string;
      orderId: string;
      restaurantId: string;
      parties?: { p: OrderParties; sequence: number };
      msgs: Message[];
    }): Promise<{ inserted: InsertedMessage[]; webhooks: Webhook[] }> {
      const ctes = [];
      if (e.parties) {
        const { p, sequence } = e.parties;
        ctes.push(sql`parties as (
          insert into notification_parties (order_id, customer_id, restaurant_id, restaurant_name, driver_id, sequence)
          values (${p.orderId}, ${p.customerId}, ${p.restaurantId}, ${p.restaurantName}, ${p.driverId}, ${sequence})
          on conflict (order_id) do update set
            customer_id = excluded.customer_id, restaurant_id = excluded.restaurant_id, restaurant_name = excluded.restaurant_name,
            driver_id = excluded.driver_id, sequence = excluded.sequence, updated_at = now()
          where notification_parties.sequence < excluded.sequence
          returning 1)`);
      }
      if (e.msgs.length > 0) {
        const rows = e.msgs.map(
          (m) => sql`(${m.recipient.kind}, ${m.recipient.id}, ${m.dedupeKey}, ${e.eventId}, ${e.orderId}, ${m.kind}, ${m.title}, ${m.body})`,
        );
        ctes.push(sql`ins as (
          insert into notification_inbox (recipient_kind, recipient_id, dedupe_key, event_id, order_id, kind, title, body)
          values ${sql.join(rows)}
          on conflict (recipient_kind, recipient_id, dedupe_key) do nothing
          returning id, recipient_kind, recipient_id, dedupe_key)`);
      }
      const inserted = e.msgs.length > 0
        ? sql`(select coalesce(json_agg(json_build_object('id', id::text, 'kind', recipient_kind, 'rid', recipient_id, 'key', dedupe_key)), '[]'::json) from ins)`
        : sql`'[]'::json`;
      const r = await sql<{ inserted: { id: string; kind: string; rid: string; key: string }[]; hooks: WebhookRow[] }>`
        ${ctes.length > 0 ? sql`with ${sql.join(ctes)}` : sql``}
        select ${inserted} as inserted,
          (select coalesce(json_agg(w), '[]'::json) from (
             select * from webhooks where (restaurant_id = ${e.restaurantId} or restaurant_id is null) and deleted_at is null) w) as hooks`.execute(k);
      const row = r.rows[0]!;
      const out: InsertedMessage[] = [];
      for (const x of row.inserted) {
        const m = e.msgs.find((m) => m.recipient.kind === x.kind && m.recipient.id === x.rid && m.dedupeKey === x.key);
        if (m) out.push({ id: x.id, message: m });
      }
      // json_agg gives timestamps as strings.
      const webhooks = row.hooks.map((h) => toWebhook({ ...h, created_at: new Date(h.created_at), deleted_at: h.deleted_at ? new Date(h.deleted_at) : null }));
      return { inserted: out, webhooks };
    },

    async parties(orderId: string): Promise<OrderParties | undefined> {
      const r = await k.selectFrom("notification_parties").selectAll().where("order_id", "=", orderId).executeTakeFirst();
      return r && { orderId: r.order_id, customerId: r.customer_id, restaurantId: r.restaurant_id, restaurantName: r.restaurant_name, driverId: r.driver_id };
    },

    /** Deletes up to `limit` inbox messages created before `before`; returns how many. */
    async pruneInbox(before: Date, limit: number): Promise<number> {
      const r = await sql`delete from notification_inbox where id in (
          select id from notification_inbox where created_at < ${before} limit ${limit})`.execute(k);
      return Number(r.numAffectedRows ?? 0);
    },

    /**
     * Deletes up to `limit` finished (delivered or dead) webhook deliveries created before
     * `before`, with their attempt log, in one statement; returns how many deliveries. A pending
     * delivery is never deleted (the outer condition is re-checked against a replay that made it
     * pending meanwhile).
     */
    async pruneWebhookLog(before: Date, limit: number): Promise<number> {
      const r = await sql`with doomed as (
            select id from webhook_deliveries where status <> 'pending' and created_at < ${before} limit ${limit}),
          attempts as (delete from webhook_attempts where delivery_id in (select id from doomed))
        delete from webhook_deliveries where id in (select id from doomed) and status <> 'pending'`.execute(k);
      return Number(r.numAffectedRows ?? 0);
    },

    /** A page of a recipient's inbox, newest first, after (older than) afterId; limit + 1 rows tell whether more follow. */
    async listInbox(owner: Recipient, opts: { unreadOnly: boolean; limit: number; afterId?: string }): Promise<InboxMessage[]> {
      let q = k
        .selectFrom("notification_inbox")
        .select(["id", "order_id", "kind", "title", "body", "created_at", "read_at"])
        .where("recipient_kind", "=", owner.kind)
        .where("recipient_id", "=", owner.id);
      if (opts.unreadOnly) q = q.where("read_at", "is", null);
      if (opts.afterId !== undefined) q = q.where("id", "<", Number(opts.afterId));
      const rows = await q.orderBy("id", "desc").limit(opts.limit).execute();
      return rows.map((r) => ({ id: String(r.id), orderId: r.order_id, kind: r.kind, title: r.title, body: r.body, createdAt: r.created_at, read: r.read_at !== null }));
    },

    /** Marks the owner's unread messages among ids read; others' ids and already-read ones change nothing. Returns how many changed. */
    async markRead(owner: Recipient, ids: string[]): Promise<number> {
      if (ids.length === 0) return 0;
      const res = await k
        .updateTable("notification_inbox")
        .set({ read_at: sql`now()` })
        .where("recipient_kind", "=", owner.kind)
        .where("recipient_id", "=", owner.id)
        .where("id", "in", ids.map(Number))
        .where("read_at", "is", null)
        .executeTakeFirst();
      return Number(res.numUpdatedRows);
    },

    /**
     * Stops a webhook: marks it deleted and dead-letters its pending deliveries (their queued
     * attempts then find nothing to do); returns the webhook and how many were cancelled. A
     * webhook already deleted is returned as it is, with 0.
     */
    async deleteWebhook(id: string): Promise<{ webhook: Webhook; cancelled: number } | undefined> {
      return k.transaction().execute(async (trx) => {
        const r = await trx.updateTable("webhooks").set({ deleted_at: sql`now()` }).where("id", "=", id).where("deleted_at", "is", null).returningAll().executeTakeFirst();
        if (!r) {
          const existing = await trx.selectFrom("webhooks").selectAll().where("id", "=", id).executeTakeFirst();
          return existing && { webhook: toWebhook(existing), cancelled: 0 };
        }
        const res = await trx
          .updateTable("webhook_deliveries")
          .set({ status: "dead", dead_at: sql`now()`, updated_at: sql`now()`, last_error: "webhook deleted" })
          .where("webhook_id", "=", id)
          .where("status", "=", "pending")
          .executeTakeFirst();
        return { webhook: toWebhook(r), cancelled: Number(res.numUpdatedRows) };
      });
    },

    async createWebhook(w: { id: string; url: string; eventTypes: string[]; restaurantId: string | null; secret: string; createdBy: string }): Promise<Webhook> {
      const r = await k
        .insertInto("webhooks")
        .values({ id: w.id, url: w.url, event_types: w.eventTypes, restaurant_id: w.restaurantId, secret: w.secret, created_by: w.createdBy })
        .returningAll()
        .executeTakeFirstOrThrow();
      return toWebhook(r);
    },

    /** Every webhook's id and stored secret (deleted ones too), for resealing. */
    async webhookSecrets(): Promise<{ id: string; secret: string }[]> {
      return k.selectFrom("webhooks").select(["id", "secret"]).orderBy("id").execute();
    },

    /** Replaces a stored secret if it is still `from` (a concurrent reseal wrote the same secret anyway). */
    async replaceWebhookSecret(id: string, from: string, to: string): Promise<boolean> {
      const r = await k.updateTable("webhooks").set({ secret: to }).where("id", "=", id).where("secret", "=", from).executeTakeFirst();
      return Number(r.numUpdatedRows) === 1;
    },

    async webhook(id: string): Promise<Webhook | undefined> {
      const r = await k.selectFrom("webhooks").selectAll().where("id", "=", id).executeTakeFirst();
      return r && toWebhook(r);
    },

    /** Inserts one delivery per (webhook, event) unless it exists; returns the ids newly inserted. */
    async insertDeliveries(
      trx: NTrx,
      rows: { id: string; webhookId: string; eventId: string; eventType: string; orderId: string; body: string }[],
    ): Promise<string[]> {
      if (rows.length === 0) return [];
      const out = await trx
        .insertInto("webhook_deliveries")
        .values(
          rows.map((r) => ({
            id: r.id,
            webhook_id: r.webhookId,
            event_id: r.eventId,
            event_type: r.eventType,
            order_id: r.orderId,
            body: r.body,
            status: "pending" as const,
            claimed_until: null,
            next_attempt_at: sql<Date>`now()`,
            last_status_code: null,
            last_error: null,
            delivered_at: null,
            dead_at: null,
          })),
        )
        .onConflict((oc) => oc.columns(["webhook_id", "event_id"]).doNothing())
        .returning("id")
        .execute();
      return out.map((r) => r.id);
    },

    /**
     * Claims a pending delivery for attempt number `attempt` (its attempts must be attempt - 1),
     * holding it for holdMs: a duplicate job for the same attempt finds it claimed or past.
     */
    async claim(deliveryId: string, attempt: number, holdMs: number): Promise<Claim> {
      const row = await k
        .updateTable("webhook_deliveries as d")
        .from("webhooks as w")
        .set({ claimed_until: sql`now() + ${holdMs} * interval '1 millisecond'`, updated_at: sql`now()` })
        .whereRef("w.id", "=", "d.webhook_id")
        .where("d.id", "=", deliveryId)
        .where("d.status", "=", "pending")
        .where("d.attempts", "=", attempt - 1)
        .where((eb) => eb.or([eb("d.claimed_until", "is", null), eb("d.claimed_until", "<", sql<Date>`now()`)]))
        .returning(["d.id", "d.webhook_id", "d.event_id", "d.body", "d.status", "d.attempts", "d.round_start", "w.url", "w.secret"])
        .executeTakeFirst();
      if (row) {
        return {
          claimed: true,
          work: { id: row.id, webhookId: row.webhook_id, eventId: row.event_id, url: row.url, secret: row.secret, body: row.body, status: row.status, attempts: row.attempts, roundStart: row.round_start },
        };
      }
      const cur = await k.selectFrom("webhook_deliveries").select(["status", "attempts", "claimed_until"]).where("id", "=", deliveryId).executeTakeFirst();
      if (cur && cur.status === "pending" && cur.attempts === attempt - 1) return { claimed: false, reason: "busy" };
      return { claimed: false, reason: "done" };
    },

    /**
     * Records attempt `attempt` of a claimed delivery (its log row) and its outcome: delivered,
     * retry at nextAt, or dead. Only the claim holder's attempt counts (attempts still attempt - 1).
     * Returns false when the delivery moved on meanwhile (nothing written).
     */
    async recordAttempt(
      trx: NTrx,
      w: DeliveryWork,
      attempt: number,
      result: { statusCode: number | null; error: string | null; durationMs: number },
      outcome: { status: "delivered" } | { status: "dead" } | { status: "pending"; nextAt: Date },
    ): Promise<boolean> {
      const res = await trx
        .updateTable("webhook_deliveries")
        .set({
          status: outcome.status,
          attempts: attempt,
          claimed_until: null,
          last_status_code: result.statusCode,
          last_error: result.error,
          next_attempt_at: outcome.status === "pending" ? outcome.nextAt : sql<Date>`next_attempt_at`,
          delivered_at: outcome.status === "delivered" ? sql<Date>`now()` : null,
          dead_at: outcome.status === "dead" ? sql<Date>`now()` : null,
          updated_at: sql`now()`,
        })
        .where("id", "=", w.id)
        .where("status", "=", "pending")
        .where("attempts", "=", attempt - 1)
        .executeTakeFirst();
      if (Number(res.numUpdatedRows) === 0) return false;
      await trx
        .insertInto("webhook_attempts")
        .values({ delivery_id: w.id, webhook_id: w.webhookId, event_id: w.eventId, attempt, status_code: result.statusCode, error: result.error, duration_ms: Math.round(result.durationMs) })
        .execute();
      return true;
    },

    /** Moves a webhook's dead deliveries back to pending with a fresh round of attempts; returns (id, next attempt) of each. */
    async requeueDead(trx: NTrx, webhookId: string): Promise<{ id: string; attempt: number }[]> {
      const rows = await trx
        .updateTable("webhook_deliveries")
        .set({ status: "pending", round_start: sql`attempts`, dead_at: null, claimed_until: null, next_attempt_at: sql`now()`, updated_at: sql`now()` })
        .where("webhook_id", "=", webhookId)
        .where("status", "=", "dead")
        .returning(["id", "attempts"])
        .execute();
      return rows.map((r) => ({ id: r.id, attempt: r.attempts + 1 }));
    },

    /** A webhook's deliveries, newest first (the delivery log's summary). */
    async deliveries(webhookId: string, opts: { limit: number; status?: DeliveryRow["status"] }): Promise<Delivery[]> {
      let q = k.selectFrom("webhook_deliveries").selectAll().where("webhook_id", "=", webhookId);
      if (opts.status) q = q.where("status", "=", opts.status);
      const rows = await q.orderBy("created_at", "desc").orderBy("id").limit(opts.limit).execute();
      return rows.map((r) => ({
        id: r.id,
        webhookId: r.webhook_id,
        eventId: r.event_id,
        eventType: r.event_type,
        orderId: r.order_id,
        status: r.status,
        attempts: r.attempts,
        lastStatusCode: r.last_status_code,
        lastError: r.last_error,
        createdAt: r.created_at,
        updatedAt: r.updated_at,
      }));
    },

    /** The attempts of a webhook's deliveries, oldest first (optionally only these deliveries'). */
    async attempts(webhookId: string, deliveryIds?: string[]): Promise<Attempt[]> {
      if (deliveryIds && deliveryIds.length === 0) return [];
      let q = k.selectFrom("webhook_attempts").selectAll().where("webhook_id", "=", webhookId);
      if (deliveryIds) q = q.where("delivery_id", "in", deliveryIds);
      const rows: AttemptRow[] = await q.orderBy("id").execute();
      return rows.map((r) => ({ deliveryId: r.delivery_id, attempt: r.attempt, statusCode: r.status_code, error: r.error, durationMs: r.duration_ms, at: r.at }));
    },
  };
}

export type NotificationsStore = ReturnType<typeof createNotificationsStore>;
