import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, type Client } from "@connectrpc/connect";
import { AnswerPolicy } from "../../gen/dabba/catalog/v1/catalog_pb.js";
import type { CatalogService } from "../../gen/dabba/catalog/v1/catalog_service_pb.js";
import { OrderStatus } from "../../gen/dabba/order/v1/order_pb.js";
import type { OrderConfig } from "../platform/config.js";
import { PreconditionError } from "../platform/errors.js";
import type { JobQueue } from "../platform/jobs.js";
import type { Logger } from "../platform/logger.js";
import type { Caller } from "./domain.js";
import type { OrderJob } from "./jobs.js";
import type { OrderStore } from "./store.js";

/** Who answers for a restaurant that did not: recorded as the actor of the confirmation or rejection. */
export const ANSWER_TIMER_ACTOR: Caller = Object.freeze({ role: "service", sub: "answer-timer" });

/**
 * The restaurant answer deadline (an `answer` job due at the order's answer_by): a PLACED order
 * still unanswered is confirmed or rejected as the restaurant's answer policy says (the
 * platform default when it chose none). An order answered in the meantime is left alone; a
 * restaurant answering at the same moment wins or loses the compare-and-set like any writer.
 */
export function createAnswerTimer(deps: {
  store: OrderStore;
  orders: OrderConfig;
  catalog: () => Client<typeof CatalogService>;
  queue: () => JobQueue<OrderJob>;
  logger: Logger;
}) {
  const logger = deps.logger.child({ component: "answer-timer" });
  return async function answer(job: Extract<OrderJob, { kind: "answer" }>): Promise<void> {
    const order = await deps.store.get(job.orderId);
    if (!order || order.status !== OrderStatus.PLACED || !order.restaurantAnswerBy) return;
    const by = timestampDate(order.restaurantAnswerBy).getTime();
    if (by > Date.now()) {
      // Fetched early (clock skew between workers) or the deadline moved (a payment settled late).
      await deps.queue().send([{ job, dueAtMs: by }]);
      return;
    }
    let policy = deps.orders.answerPolicy;
    let prepMinutes = 0;
    try {
      const { restaurant } = await deps.catalog().getRestaurant({ restaurantId: order.restaurantId });
      if (restaurant?.answerPolicy === AnswerPolicy.AUTO_CONFIRM) policy = "auto_confirm";
      else if (restaurant?.answerPolicy === AnswerPolicy.AUTO_REJECT) policy = "auto_reject";
      prepMinutes = restaurant?.avgPrepMinutes ?? 0;
    } catch (err) {
      // A restaurant removed from the catalog cannot cook the order: the default applies. Anything else is retried.
      if (ConnectError.from(err).code !== Code.NotFound) throw err;
    }
    const waitedS = Math.round((by - (order.createdAt ? timestampDate(order.createdAt).getTime() : by)) / 1000);
    try {
      if (policy === "auto_confirm") {
        await deps.store.execute(order.id, { command: "accept" }, ANSWER_TIMER_ACTOR, { prepMinutes });
      } else {
        await deps.store.execute(order.id, { command: "reject" }, ANSWER_TIMER_ACTOR, {
          reason: `restaurant did not answer within ${waitedS} s`,
        });
      }
      logger.info({ orderId: order.id, policy, waitedS }, "unanswered order settled by the restaurant's answer policy");
    } catch (err) {
      // The restaurant (or the customer) moved the order at the same moment: their action stands.
      if (err instanceof PreconditionError) return;
      throw err;
    }
  };
}
