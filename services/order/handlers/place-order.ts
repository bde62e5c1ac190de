import { createHash } from "node:crypto";
import { toBinary } from "@bufbuild/protobuf";
import type { HandlerContext } from "@connectrpc/connect";
import { PlaceOrderRequestSchema, type PlaceOrderRequest } from "../../../gen/dabba/order/v1/order_service_pb.js";
import { requireRole } from "../../platform/auth.js";
import { AlreadyExistsError, ExhaustedError, PreconditionError, invalid } from "../../platform/errors.js";
import { LIMITS, boundedText, priceCart, validateCartRequest, type OrderHandlerDeps } from "./common.js";

export const IDEMPOTENCY_HEADER = "idempotency-key";

/**
 * PlaceOrder: validates, rate limits per customer, prices from the catalog and creates the
 * order in PLACED, idempotently per (customer, idempotency-key). Customer role.
 */
export function placeOrder(deps: OrderHandlerDeps) {
  return async (req: PlaceOrderRequest, ctx: HandlerContext) => {
    const principal = requireRole(ctx, "customer");
    const key = ctx.requestHeader.get(IDEMPOTENCY_HEADER) ?? "";
    if (key === "") throw invalid(IDEMPOTENCY_HEADER, "header is required");
    if (key.length > LIMITS.idempotencyKeyMax) throw invalid(IDEMPOTENCY_HEADER, `must be at most ${LIMITS.idempotencyKeyMax} characters`);
    const { delivery, tipMinor } = validateCartRequest(req);
    boundedText("payment_token", req.paymentToken, 256, true);

    const customerId = principal.sub;
    const requestHash = createHash("sha256").update(toBinary(PlaceOrderRequestSchema, req)).digest("hex");
    // A replay answers from the stored order, whatever the catalog says now.
    const existing = await deps.store.findIdempotent(customerId, key);
    if (existing) {
      if (existing.requestHash !== requestHash) throw new AlreadyExistsError("idempotency-key was already used with a different request");
      return { order: existing.order };
    }

    // Replays above are free; only new placements count against the customer's rate.
    const limit = await deps.redis.rateLimiter.hit(`place:${customerId}`, deps.config.orders.placeRatePerMinute, 60_000);
    if (!limit.allowed) {
      throw new ExhaustedError(`too many orders placed; retry in ${Math.ceil(limit.retryAfterMs / 1000)} s`);
    }

    const { priced, currency, lines, totals } = await priceCart(deps, req, delivery, tipMinor, ctx.signal);
    const r = priced.restaurant;
    // The total is authorized before the order is written: declined -> no order; unknown -> PAYMENT_PENDING.
    const auth = await deps.payments.authorizePlacement({
      customerId,
      idempotencyKey: key,
      requestHash,
      token: req.paymentToken,
      amountMinor: totals.totalMinor,
      currency,
    });
    if (auth.declined) throw new PreconditionError(`payment declined: ${auth.reason}`);
    const { order } = await deps.store.place(
      {
        customerId,
        restaurantId: req.restaurantId,
        restaurantName: r?.name ?? "",
        lines,
        delivery,
        pickup: { lat: r?.location?.lat ?? 0, lng: r?.location?.lng ?? 0 },
        currency,
        subtotalMinor: totals.subtotalMinor,
        deliveryFeeMinor: totals.deliveryFeeMinor,
        taxMinor: totals.taxMinor,
        tipMinor: totals.tipMinor,
        totalMinor: totals.totalMinor,
        eta: { minMinutes: priced.eta?.minMinutes ?? 0, maxMinutes: priced.eta?.maxMinutes ?? 0 },
        distanceKm: priced.distanceKm,
        answerBy: new Date(Date.now() + (r?.answerTimeoutSeconds || deps.config.orders.answerTimeoutS) * 1000),
        payment: auth.payment,
      },
      { customerId, key, requestHash, ttlHours: deps.config.orders.idempotencyTtlHours },
      (trx, orderId) => deps.payments.scheduleReconcile(trx, orderId),
    );
    return { order };
  };
}
