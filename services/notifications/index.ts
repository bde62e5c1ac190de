import { randomUUID } from "node:crypto";
import { hostname } from "node:os";
import { fromBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { EventSchema, type Event } from "../../gen/dabba/events/v1/events_pb.js";
import type { OrderService } from "../../gen/dabba/order/v1/order_service_pb.js";
import { LOCATION_EVENTS_STREAM } from "../location/keys.js";
import { ORDER_EVENTS_STREAM } from "../order/store.js";
import type { NotificationsConfig } from "../platform/config.js";
import type { Db } from "../platform/db.js";
import { createJobQueue, type JobQueue } from "../platform/jobs.js";
import type { Logger } from "../platform/logger.js";
import { createConsumer, type Consumer } from "../platform/outbox.js";
import type { RedisPorts, StreamEntry } from "../platform/redis.js";
import { eventType, messagesFor, partiesOf, pushData, webhookBody, webhookWants, type OrderParties } from "./domain.js";
import { createRecordingPush, type PushProvider } from "./push.js";
import { resealSecret } from "./secrets.js";
import { createNotificationsStore, type InsertedMessage, type NotificationsStore } from "./store.js";
import { WEBHOOK_QUEUE, createWebhookWorker, type WebhookJob } from "./webhooks.js";

export { migrations } from "./db/migrations.js";

/** Consumer group of the notifications consumer (on events:orders and on events:location). */
export const NOTIFICATIONS_GROUP = "notifications";

export interface NotificationsOptions {
  db: Db;
  redis: RedisPorts;
  config: NotificationsConfig;
  /** How long stop() waits for deliveries in flight. */
  shutdownGraceMs: number;
  logger: Logger;
  /** OrderService (service token): the parties of an order seen only through a geofence event. */
  orders: () => Client<typeof OrderService>;
  /** The push adapter; the default records what would be sent. */
  push?: PushProvider;
  /** Consumer name; defaults to notifications-<host>-<pid> (with a counter for a second instance in one process). */
  consumer?: string;
  /** How long one stream read blocks (bounds stop() latency on the in-process twin). */
  blockMs?: number;
  /** Pending entries older than this are claimed by another consumer (default 30 s). */
  claimIdleMs?: number;
  /** Random source of the webhook backoff jitter. */
  rand?: () => number;
}

export interface Notifications {
  store: NotificationsStore;
  push: PushProvider;
  queue: JobQueue<WebhookJob>;
  /** Deletes inbox messages older than the retention (hourly while started); returns how many. */
  pruneInbox(): Promise<number>;
  /** Deletes finished webhook deliveries and their attempts older than the log retention (hourly while started); returns how many deliveries. */
  pruneWebhookLog(): Promise<number>;
  /**
   * Seals with WEBHOOK_SECRET_KEY every webhook secret stored in the clear or sealed with a
   * previous key (at start and hourly); returns how many were resealed and how many open with
   * no configured key.
   */
  resealSecrets(): Promise<{ resealed: number; unopenable: number }>;
  /** Handles one event as the consumers do (tests deliver events directly with it). */
  handle(ev: Event): Promise<InsertedMessage[]>;
  /** The consumers of events:orders and events:location (tests poll them). */
  consumers: Consumer[];
  start(): Promise<void>;
  stop(): Promise<void>;
}

/**
 * Seals every webhook secret stored in the clear or with a previous key with keys.secretKey
 * (nothing without one); returns how many were resealed and how many open with no given key.
 */
export async function resealWebhookSecrets(
  store: Pick<NotificationsStore, "webhookSecrets" | "replaceWebhookSecret">,
  keys: Pick<NotificationsConfig, "secretKey" | "previousSecretKeys">,
  logger: Logger,
): Promise<{ resealed: number; unopenable: number }> {
  let resealed = 0;
  let unopenable = 0;
  if (!keys.secretKey) return { resealed, unopenable };
  for (const w of await store.webhookSecrets()) {
    let next: string | undefined;
    try {
      next = resealSecret(w.secret, keys.secretKey, keys.previousSecretKeys);
    } catch (err) {
      unopenable++;
      logger.error({ webhookId: w.id, err: (err as Error).message }, "webhook secret opens with no configured key; its deliveries fail until that key is back in WEBHOOK_SECRET_KEYS_PREVIOUS");
      continue;
    }
    if (next !== undefined && (await store.replaceWebhookSecret(w.id, w.secret, next))) resealed++;
  }
  if (resealed > 0) logger.info({ resealed }, "webhook secrets resealed with the current WEBHOOK_SECRET_KEY");
  return { resealed, unopenable };
}

let instances = 0;
/** Inbox and webhook log retention run this often, deleting at most this many rows per statement. */
const PRUNE_EVERY_MS = 3_600_000;
const PRUNE_BATCH = 10_000;

/**
 * Notifications, hosted by the tracking service: a consumer of the order and location event
 * logs that writes each concerned person's inbox message (once per recipient and event: a
 * unique key and insert ... on conflict do nothing), pushes only newly inserted messages, and
 * queues one signed webhook delivery per matching webhook and event (unique too) on the
 * "webhooks" job queue, with its job in one transaction. Inbox messages older than
 * NOTIFICATIONS_INBOX_RETENTION_DAYS, and delivered or dead webhook deliveries (with their
 * attempt log) older than WEBHOOK_LOG_RETENTION_DAYS, are deleted hourly.
 */
export function createNotifications(opts: NotificationsOptions): Notifications {
  const logger = opts.logger.child({ component: "notifications" });
  const store = createNotificationsStore(opts.db);
  const push = opts.push ?? createRecordingPush({ logger });
  const c = opts.config;
  const queue = createJobQueue<WebhookJob>({
    db: opts.db,
    logger,
    queue: WEBHOOK_QUEUE,
    concurrency: c.webhookConcurrency,
    leaseMs: c.webhookLeaseMs,
    leaseCheckMs: c.webhookLeaseCheckMs,
    // A job fails only when its delivery is busy elsewhere or the store failed: retry soon.
    retryDelayS: 1,
    retryBackoff: true,
  });
  const worker = createWebhookWorker({ store, queue, config: c, logger, rand: opts.rand });
  const n = ++instances;
  const consumerName = opts.consumer ?? `notifications-${hostname()}-${process.pid}${n > 1 ? `-${n}` : ""}`;

  /** The order's parties: from the event's snapshot, else as recorded from its earlier events, else from OrderService. */
  async function partiesFor(ev: Event): Promise<OrderParties | undefined> {
    const own = partiesOf(ev);
    if (own) return own;
    if (!ev.orderId) return undefined;
    const known = await store.parties(ev.orderId);
    if (known) return known;
    try {
      const { order } = await opts.orders().getOrder({ orderId: ev.orderId });
      return order ? { orderId: order.id, customerId: order.customerId, restaurantId: order.restaurantId, restaurantName: order.restaurantName, driverId: order.driverId } : undefined;
    } catch (err) {
      if (err instanceof ConnectError && err.code === Code.NotFound) return undefined;
      throw err;
    }
  }

  async function handle(ev: Event): Promise<InsertedMessage[]> {
    const parties = await partiesFor(ev);
    if (!parties) {
      logger.warn({ eventId: ev.eventId, orderId: ev.orderId }, "event of an unknown order: nobody to notify");
      return [];
    }
    const msgs = messagesFor(ev, parties);
    const type = eventType(ev);
    let wake = false;
    // The inbox rows first (one statement); then, if webhooks want the event, their deliveries and
    // jobs in one transaction. A crash in between redelivers the event: the inbox inserts nothing
    // again, and the deliveries (unique per webhook and event) are inserted and queued then.
    const { inserted, webhooks } = await store.recordEvent({
      eventId: ev.eventId,
      orderId: parties.orderId,
      restaurantId: parties.restaurantId,
      parties: ev.order ? { p: parties, sequence: Number(ev.sequence) } : undefined,
      msgs,
    });
    const hooks = webhooks.filter((w) => webhookWants(w, parties.restaurantId, type));
    if (hooks.length > 0) {
      const body = JSON.stringify(webhookBody(ev, parties));
      await store.transaction(async (trx) => {
        const ids = await store.insertDeliveries(
          trx,
          hooks.map((w) => ({ id: `wd-${randomUUID()}`, webhookId: w.id, eventId: ev.eventId, eventType: type, orderId: parties.orderId, body })),
        );
        await queue.send(ids.map((deliveryId) => ({ job: { deliveryId, attempt: 1 } })), trx);
        wake = queue.sentDueIn(trx);
      });
    }
    if (wake) queue.wake();
    // Best effort, after the commit: the inbox row is the durable record.
    for (const m of inserted) {
      try {
        await push.send({
          token: `${m.message.recipient.kind}:${m.message.recipient.id}`,
          notification: { title: m.message.title, body: m.message.body },
          data: { ...pushData(m.message, ev), notification_id: m.id },
        });
      } catch (err) {
        logger.warn({ err, notificationId: m.id, recipient: m.message.recipient }, "push failed (the inbox keeps the message)");
      }
    }
    return inserted;
  }

  let pruneTimer: NodeJS.Timeout | undefined;
  /** Deletes in batches until a batch comes back short; returns how many rows. */
  async function pruneAll(what: string, days: number, batch: (before: Date, limit: number) => Promise<number>): Promise<number> {
    const before = new Date(Date.now() - days * 86_400_000);
    let total = 0;
    for (;;) {
      const n = await batch(before, PRUNE_BATCH);
      total += n;
      if (n < PRUNE_BATCH) break;
    }
    if (total > 0) logger.info({ deleted: total, retentionDays: days }, `${what} past retention deleted`);
    return total;
  }
  const resealSecrets = () => resealWebhookSecrets(store, c, logger);
  const pruneInbox = () => pruneAll("inbox messages", c.inboxRetentionDays, (b, n) => store.pruneInbox(b, n));
  const pruneWebhookLog = () => pruneAll("webhook deliveries", c.webhookLogRetentionDays, (b, n) => store.pruneWebhookLog(b, n));

  async function handleEntry(e: StreamEntry): Promise<void> {
    await handle(fromBinary(EventSchema, e.data));
  }

  const consumers = [ORDER_EVENTS_STREAM, LOCATION_EVENTS_STREAM].map((stream) =>
    createConsumer({
      eventLog: opts.redis.eventLog,
      stream,
      group: NOTIFICATIONS_GROUP,
      consumer: consumerName,
      startId: "$",
      blockMs: opts.blockMs,
      claimIdleMs: opts.claimIdleMs,
      logger,
      handle: handleEntry,
    }),
  );

  return {
    store,
    push,
    queue,
    handle,
    consumers,
    pruneInbox,
    pruneWebhookLog,
    resealSecrets,
    async start() {
      await resealSecrets().catch((err) => logger.warn({ err }, "resealing webhook secrets failed; trying again in an hour"));
      await queue.startEach((job) => worker.run(job));
      for (const k of consumers) await k.start();
      pruneTimer = setInterval(() => {
        pruneInbox().catch((err) => logger.warn({ err }, "inbox retention failed; trying again in an hour"));
        pruneWebhookLog().catch((err) => logger.warn({ err }, "webhook log retention failed; trying again in an hour"));
        resealSecrets().catch((err) => logger.warn({ err }, "resealing webhook secrets failed; trying again in an hour"));
      }, PRUNE_EVERY_MS);
      pruneTimer.unref();
    },
    async stop() {
      if (pruneTimer) clearInterval(pruneTimer);
      for (const k of consumers) await k.stop();
      await queue.stop(opts.shutdownGraceMs);
      await worker.close();
    },
  };
}
