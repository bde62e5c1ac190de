import { hostname } from "node:os";
import { createClient, type Client } from "@connectrpc/connect";
import { DispatchService } from "../../gen/dabba/dispatch/v1/dispatch_service_pb.js";
import { LocationService } from "../../gen/dabba/location/v1/location_service_pb.js";
import { OrderService } from "../../gen/dabba/order/v1/order_service_pb.js";
import { ORDER_EVENTS_STREAM } from "../order/store.js";
import { withMappedErrors } from "../platform/errors.js";
import { createConsumer } from "../platform/outbox.js";
import type { ServiceDeps, ServiceModule } from "../platform/service.js";
import { migrations } from "./db/migrations.js";
import { createEngine, type DispatchJob, type Engine, type EngineOptions } from "./engine.js";
import { acceptOffer } from "./handlers/accept-offer.js";
import { claimDelivery } from "./handlers/claim-delivery.js";
import type { DispatchHandlerDeps } from "./handlers/common.js";
import { declineOffer } from "./handlers/decline-offer.js";
import { getDispatchState } from "./handlers/get-dispatch-state.js";
import { goOffline } from "./handlers/go-offline.js";
import { goOnline } from "./handlers/go-online.js";
import { listAvailableDeliveries } from "./handlers/list-available-deliveries.js";
import { releaseAssignment } from "./handlers/release-assignment.js";
import { streamOffers } from "./handlers/stream-offers.js";
import { DISPATCH_ORDERS_GROUP } from "./keys.js";
import { createJobQueue, type JobQueue } from "../platform/jobs.js";
import { createDispatchStore } from "./store.js";

export interface DispatchModule extends ServiceModule {
  readonly engine: Engine;
  readonly queue: JobQueue<DispatchJob>;
}

/** Test hooks: a seeded random source, a fault injection point. */
export type DispatchOverrides = Pick<EngineOptions, "rand" | "failpoint">;

/**
 * DispatchService: driver shifts, dispatch jobs from confirmed orders (durable on pg-boss, state
 * in dispatch_jobs), exclusive fenced offers over Redis locks, assignment through OrderService.
 */
export function createDispatchService(deps: ServiceDeps, overrides: DispatchOverrides = {}): DispatchModule {
  const logger = deps.logger;
  const store = createDispatchStore(deps.db);
  const c = deps.config.dispatch;
  const queue = createJobQueue<DispatchJob>({
    db: deps.db,
    logger,
    queue: "dispatch",
    concurrency: c.workerConcurrency,
    leaseMs: c.jobLeaseMs,
    leaseCheckMs: c.leaseCheckMs,
  });
  let order: Client<typeof OrderService> | undefined;
  let location: Client<typeof LocationService> | undefined;
  const orderClient = () => (order ??= createClient(OrderService, deps.peer("order")));
  const engine = createEngine({
    config: deps.config,
    store,
    queue,
    redis: deps.redis,
    logger,
    order: orderClient,
    location: () => (location ??= createClient(LocationService, deps.peer("location"))),
    failpoint: (name) => {
      if (deps.config.failpoint === `dispatch:${name}`) {
        logger.fatal({ failpoint: deps.config.failpoint }, "failpoint reached: killing the process");
        process.kill(process.pid, "SIGKILL");
      }
    },
    ...overrides,
  });
  const consumer = createConsumer({
    eventLog: deps.redis.eventLog,
    stream: ORDER_EVENTS_STREAM,
    group: DISPATCH_ORDERS_GROUP,
    consumer: `dispatch-${hostname()}-${process.pid}`,
    startId: "$",
    logger,
    handleBatch: (entries) => engine.onOrderEvents(entries),
  });
  const h: DispatchHandlerDeps = { config: deps.config, engine, store, redis: deps.redis, logger };
  const impl = withMappedErrors(
    DispatchService,
    {
      goOnline: goOnline(h),
      goOffline: goOffline(h),
      streamOffers: streamOffers(h),
      acceptOffer: acceptOffer(h),
      declineOffer: declineOffer(h),
      listAvailableDeliveries: listAvailableDeliveries(h),
      claimDelivery: claimDelivery(h),
      releaseAssignment: releaseAssignment(h),
      getDispatchState: getDispatchState(h),
    },
    logger,
  );

  return {
    name: "dispatch",
    desc: DispatchService,
    impl: impl as unknown as ServiceModule["impl"],
    migrations,
    engine,
    queue,
    async start() {
      await queue.start((jobs) => engine.runJobs(jobs));
      await consumer.start();
    },
    async stop() {
      await consumer.stop();
      await queue.stop(deps.config.shutdownGraceMs);
    },
  };
}
