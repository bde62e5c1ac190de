import { fromBinary } from "@bufbuild/protobuf";
import { Code, ConnectError, type HandlerContext } from "@connectrpc/connect";
import { StreamOffersResponseSchema, type StreamOffersResponse } from "../../../gen/dabba/dispatch/v1/dispatch_service_pb.js";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { requireRole } from "../../platform/auth.js";
import { offerChannel } from "../keys.js";
import type { DispatchHandlerDeps } from "./common.js";

/** Messages a driver's stream may have queued (a driver gets a handful of offers a minute). */
export const MAX_QUEUED_OFFERS = 64;

/**
 * StreamOffers: the calling driver's offers and withdrawals. Subscribes first, then sends the
 * offers still open (so one published meanwhile is not missed; duplicates are dropped by id),
 * then live messages. Driver role.
 */
export function streamOffers(deps: DispatchHandlerDeps) {
  return async function* (_req: unknown, ctx: HandlerContext): AsyncGenerator<MessageInitShape<typeof StreamOffersResponseSchema>> {
    const driverId = requireRole(ctx, "driver").sub;
    const signal = ctx.signal;
    const queue: StreamOffersResponse[] = [];
    let overflow = false;
    let wake: (() => void) | undefined;
    const unsubscribe = await deps.redis.channels.subscribe(offerChannel(driverId), (data) => {
      if (queue.length >= MAX_QUEUED_OFFERS) overflow = true;
      else queue.push(fromBinary(StreamOffersResponseSchema, data));
      wake?.();
    });
    const onAbort = () => wake?.();
    signal.addEventListener("abort", onAbort, { once: true });
    try {
      const sent = new Set<string>();
      for (const offer of await deps.engine.pendingOffers(driverId)) {
        sent.add(offer.offerId);
        yield { offer };
      }
      while (!signal.aborted) {
        if (overflow) throw new ConnectError("offer stream fell behind; reconnect (open offers are sent again)", Code.Unavailable);
        const m = queue.shift();
        if (!m) {
          await new Promise<void>((resolve) => (wake = resolve));
          wake = undefined;
          continue;
        }
        if (m.offer) {
          if (sent.has(m.offer.offerId)) continue;
          sent.add(m.offer.offerId);
          if (sent.size > 1024) sent.delete(sent.values().next().value!);
        }
        yield m;
      }
      throw new ConnectError("stream cancelled", Code.Canceled);
    } finally {
      signal.removeEventListener("abort", onAbort);
      await unsubscribe().catch((err) => deps.logger.warn({ err, driverId }, "offer channel unsubscribe failed"));
    }
  };
}
