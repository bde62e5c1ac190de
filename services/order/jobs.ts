import { hostname } from "node:os";
import { fromBinary } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { EventSchema, type Event } from "../../gen/dabba/events/v1/events_pb.js";
import type { Config } from "../platform/config.js";
import type { Db } from "../platform/db.js";
import { createJobQueue, type JobQueue, type NewJob, type RunningJob } from "../platform/jobs.js";
import type { Logger } from "../platform/logger.js";
import { createConsumer, type Consumer } from "../platform/outbox.js";
import type { EventLog } from "../platform/redis.js";
import { ORDER_EVENTS_STREAM } from "./store.js";

/**
 * The order service's durable jobs (pg-boss queue "order"):
 * - settle: bring the order's money at the gateway to what its state says is due (capture on
 *   acceptance, void on rejection or early cancel, fee capture on a late cancel, refunds);
 * - reconcile: settle a PAYMENT_PENDING order's authorization with the gateway's truth;
 * - answer: the restaurant's answer deadline of a PLACED order (auto-confirm or auto-reject).
 * Every handler is idempotent: a job may run more than once, and late (after the order moved on).
 */
export type OrderJob =
  | { kind: "settle"; orderId: string }
  | { kind: "reconcile"; orderId: string; attempt: number }
  | { kind: "answer"; orderId: string };

export type OrderJobHandlers = { [K in OrderJob["kind"]]: (job: Extract<OrderJob, { kind: K }>, run: RunningJob<OrderJob>) => Promise<void> };

/** Consumer group that turns order events into order jobs (once per event across processes). */
export const ORDER_JOBS_GROUP = "order-jobs";

/**
 * The jobs an order event calls for. Effects go through the event log rather than the state
 * change's own transaction so the placement and transition hot paths stay one statement / one
 * transaction; the outbox row commits with the change, so the job is never lost (at least once;
 * the handlers are idempotent).
 */
export function jobsForEvent(e: Event): NewJob<OrderJob>[] {
  const orderId = e.orderId;
  switch (e.payload.case) {
    case "placed": {
      const by = e.order?.restaurantAnswerBy;
      return by ? [{ job: { kind: "answer", orderId }, dueAtMs: timestampDate(by).getTime() }] : [];
    }
    case "confirmed":
    case "rejected":
    case "cancelled":
    case "delivered":
      return [{ job: { kind: "settle", orderId } }];
    default:
      return [];
  }
}

export interface OrderJobs {
  readonly queue: JobQueue<OrderJob>;
  start(handlers: OrderJobHandlers): Promise<void>;
  stop(): Promise<void>;
}

export function createOrderJobs(opts: { db: Db; config: Config; eventLog: EventLog; logger: Logger }): OrderJobs {
  const logger = opts.logger.child({ component: "order-jobs" });
  const queue = createJobQueue<OrderJob>({
    db: opts.db,
    logger,
    queue: "order",
    concurrency: opts.config.orders.jobConcurrency,
    leaseMs: opts.config.orders.jobLeaseMs,
    leaseCheckMs: 5_000,
    retryDelayS: 1,
    retryBackoff: true,
  });
  const consumer: Consumer = createConsumer({
    eventLog: opts.eventLog,
    stream: ORDER_EVENTS_STREAM,
    group: ORDER_JOBS_GROUP,
    consumer: `order-jobs-${hostname()}-${process.pid}`,
    startId: "$",
    logger,
    handleBatch: async (entries) => {
      const jobs = entries.flatMap((e) => jobsForEvent(fromBinary(EventSchema, e.data)));
      await queue.send(jobs);
    },
  });

  return {
    queue,
    async start(handlers) {
      // A job that throws is retried after its delay, backing off (pg-boss retryBackoff).
      await queue.startEach((run) => (handlers[run.job.kind] as (j: OrderJob, r: RunningJob<OrderJob>) => Promise<void>)(run.job, run));
      await consumer.start();
    },
    async stop() {
      await consumer.stop();
      await queue.stop();
    },
  };
}
