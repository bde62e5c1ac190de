import { fromBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import { OrderSchema, type Order } from "../../../gen/dabba/order/v1/order_pb.js";
import type { WatchRestaurantOrdersRequest, WatchRestaurantOrdersResponseSchema } from "../../../gen/dabba/order/v1/order_service_pb.js";
import { principalOf } from "../../platform/auth.js";
import { PermissionError, invalid } from "../../platform/errors.js";
import { requireId, restaurantChannel, type OrderHandlerDeps } from "./common.js";

type Msg = MessageInitShape<typeof WatchRestaurantOrdersResponseSchema>;

/** Most updates a slow watcher may have queued before the stream is ended (it can reconnect for a fresh snapshot). */
const MAX_QUEUED = 1000;

/**
 * WatchRestaurantOrders: subscribes to the restaurant's channel first, then sends the snapshot
 * of open orders, then every changed order newer than what this stream already sent. Ends when
 * the client cancels or the host drains (ctx.signal).
 */
export function watchRestaurantOrders(deps: OrderHandlerDeps) {
  return async function* (req: WatchRestaurantOrdersRequest, ctx: HandlerContext): AsyncGenerator<Msg> {
    const p = principalOf(ctx);
    let restaurantId: string;
    if (p.role === "restaurant") {
      if (req.restaurantId !== "" && req.restaurantId !== p.restaurantId) {
        throw new PermissionError("restaurant_id does not match the token's restaurant");
      }
      restaurantId = p.restaurantId!;
    } else if (p.role === "ops") {
      if (req.restaurantId === "") throw invalid("restaurant_id", "is required for ops");
      restaurantId = requireId("restaurant_id", req.restaurantId);
    } else {
      throw new PermissionError(`role ${p.role} may not watch restaurant orders`);
    }

    const queue: Order[] = [];
    let overflow = false;
    let notify: (() => void) | undefined;
    const wake = () => {
      const n = notify;
      notify = undefined;
      n?.();
    };
    const unsubscribe = await deps.redis.channels.subscribe(restaurantChannel(restaurantId), (data) => {
      try {
        if (queue.length >= MAX_QUEUED) overflow = true;
        else queue.push(fromBinary(OrderSchema, data));
      } catch (err) {
        deps.logger.warn({ err }, "dropping undecodable restaurant feed message");
      }
      wake();
    });
    const signal = ctx.signal;
    signal.addEventListener("abort", wake, { once: true });
    try {
      const sent = new Map<string, bigint>();
      const snapshot = await deps.store.listOpenForRestaurant(restaurantId);
      for (const o of snapshot) sent.set(o.id, o.version);
      yield { orders: snapshot, snapshot: true };

      while (!signal.aborted) {
        if (queue.length === 0) {
          await new Promise<void>((resolve) => {
            notify = resolve;
            if (signal.aborted || queue.length > 0) wake();
          });
          continue;
        }
        if (overflow) {
          deps.logger.warn({ restaurantId }, "restaurant feed watcher too slow; ending stream");
          throw new ConnectError("feed fell behind; reconnect for a fresh snapshot", Code.Unavailable);
        }
        const o = queue.shift()!;
        const seen = sent.get(o.id);
        if (seen !== undefined && o.version <= seen) continue;
        sent.set(o.id, o.version);
        yield { orders: [o], snapshot: false };
      }
    } finally {
      signal.removeEventListener("abort", wake);
      await unsubscribe();
    }
  };
}
